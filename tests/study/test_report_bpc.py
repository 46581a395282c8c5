"""``regrow report`` and the search on language-model runs, whose score is bits per character
(``test_bpc``, ``val_bpc``: lower is better): the default metrics, the direction every ranking
follows, the ``bpc_vs_sparsity`` figure and learning curves of validation bits per character, from
hand-written run directories (as in ``test_report.py``; nothing is trained)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from regrow.cli import main
from regrow.study.cells import aggregate, best_first
from regrow.study.direction import HIGHER, LOWER, direction, optuna_direction, ranked
from regrow.study.figures import NoData, draw
from regrow.study.figures.common import MAX_SERIES, line_series
from regrow.study.figures.training import curve_metric, curve_series
from regrow.study.records import collect, default_metrics
from regrow.study.report import build_report
from regrow.study.schema import StudyError, load_study
from tests.study.test_report import PNG_MAGIC, overrides_of, pass_rows, write_run

METHOD, SPARSITY = "sparsity.method", "sparsity.sparsity"


def bpc_of(method: str, sparsity: float, seed: int) -> float:
    """Chosen numbers: Dense lowest, RigL below Static, rising with sparsity, ±0.01 by seed."""
    base = {"dense": 1.40, "static": 1.70, "rigl": 1.55}[method]
    if method != "dense":
        base += sparsity - 0.8
    return round(base + (0.01 if seed == 1 else -0.01), 6)


def lm_rows(final_bpc: float, epochs: int = 4, validation: bool = True) -> list[dict[str, Any]]:
    """Pass rows of a language model: the train loss falling, and at every pass an evaluation
    (bits per character falling to ``final_bpc``; ``val_*`` only with a validation split)."""
    rows = []
    for epoch in range(epochs):
        bpc = round(final_bpc + 0.5 * (epochs - 1 - epoch), 6)
        row: dict[str, Any] = {"epoch": epoch, "step": 100 * (epoch + 1), "train_loss": 2.0 - epoch}
        row.update(test_bpc=bpc + 0.02, test_loss=(bpc + 0.02) * 0.6931, test_accuracy=40 + epoch)
        if validation:
            row.update(val_bpc=bpc, val_loss=bpc * 0.6931, val_accuracy=41 + epoch)
        rows.append(row)
    return rows


def write_lm_run(
    root: Path,
    name: str,
    overrides: list[str],
    test_bpc: float,
    val_bpc: float | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> Path:
    """A finished language-model run: ``summary.json`` with ``test_bpc`` (and ``val_bpc``) next to
    the accuracies and losses, ``dataset: text``, ``model: char_gpt``."""
    summary: dict[str, Any] = {
        "dataset": "text",
        "model": "char_gpt",
        "test_bpc": test_bpc,
        "test_loss": test_bpc * 0.6931,
    }
    if val_bpc is not None:
        summary.update(val_bpc=val_bpc, val_loss=val_bpc * 0.6931, val_accuracy=55.0)
    return write_run(root, name, overrides, 54.0, rows=rows, **summary)


@pytest.fixture(scope="module")
def lm_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """static, rigl × 0.8, 0.9 over seeds 0, 1 (ERK), plus Dense; every run with val_bpc."""
    root = tmp_path_factory.mktemp("lm_grid")
    for seed in (0, 1):
        for method in ("static", "rigl"):
            for sparsity in (0.8, 0.9):
                bpc = bpc_of(method, sparsity, seed)
                write_lm_run(
                    root,
                    f"{method}_erk_s{sparsity}_seed{seed}",
                    overrides_of(method, "erk", sparsity, seed),
                    bpc + 0.02,
                    bpc,
                    lm_rows(bpc),
                )
        bpc = bpc_of("dense", 0.0, seed)
        write_lm_run(
            root,
            f"dense_seed{seed}",
            overrides_of("dense", "erk", 0.0, seed),
            bpc + 0.02,
            bpc,
            lm_rows(bpc),
        )
    return root


# ------------------------------------------------------------------------------- direction
def test_direction_table() -> None:
    assert [direction(m) for m in ("test_bpc", "val_bpc", "bpc")] == [LOWER] * 3
    assert [direction(m) for m in ("test_loss", "train_loss", "wall_seconds")] == [LOWER] * 3
    assert [direction(m) for m in ("test_accuracy", "val_accuracy")] == [HIGHER] * 2
    for neither in ("sparsity", "inference_flops_ratio", "train_flops_ratio", "model_width"):
        assert direction(neither) is None, neither
    assert optuna_direction("val_bpc") == "minimize"
    assert optuna_direction("val_accuracy") == "maximize"
    assert optuna_direction("train_flops_ratio") is None
    values = {"a": 1.5, "b": None, "c": 1.2, "d": 1.9}
    assert ranked(values, "test_bpc", values.get) == ["c", "a", "d", "b"]
    assert ranked(values, "test_accuracy", values.get) == ["d", "a", "c", "b"]


# ------------------------------------------------------------------------------ the table
def test_default_metrics_are_bits_per_character(lm_grid: Path) -> None:
    out = lm_grid.parent / "lm_report"
    result = build_report(
        lm_grid, group_by="sparsity.method,sparsity.sparsity", figures="none", out=out
    )
    assert result.metrics == [
        "test_bpc", "val_bpc", "sparsity", "inference_flops_ratio", "train_flops_ratio",
    ]  # fmt: skip
    assert "test_accuracy" not in result.text and "val_accuracy" not in result.text
    assert "| test_bpc (mean ± std; lower is better) |" in result.text, result.text
    # rigl at 0.8: val_bpc 1.54 and 1.56, test_bpc 0.02 above: three decimals.
    assert "| rigl | 0.8 | 2/2 | 1.570 ± 0.014 | 1.550 ± 0.014 |" in result.text, result.text
    # Without a validation split: test_bpc alone.
    records = list(collect(lm_grid))
    for record in records:
        record.summary = {k: v for k, v in (record.summary or {}).items() if k != "val_bpc"}
    assert default_metrics(records)[:2] == ["test_bpc", "sparsity"]


def test_image_runs_keep_the_accuracy_defaults(tmp_path: Path) -> None:
    write_run(tmp_path, "a", overrides_of("rigl", "erk", 0.9, 0), 85.0, val_accuracy=84.0)
    write_run(tmp_path, "b", overrides_of("static", "erk", 0.9, 0), 80.0)
    records = collect(tmp_path)
    assert default_metrics(records) == [
        "test_accuracy", "val_accuracy", "sparsity", "inference_flops_ratio", "train_flops_ratio",
    ]  # fmt: skip
    result = build_report(tmp_path, figures="none")
    assert "| test_accuracy (mean ± std) |" in result.text
    assert "lower is better" not in result.text


def test_best_first_puts_the_lowest_bits_per_character_first(lm_grid: Path) -> None:
    cells = aggregate(collect(lm_grid), [METHOD, SPARSITY], ["test_bpc", "sparsity"])
    order = [(c.values[METHOD], c.values[SPARSITY]) for c in best_first(cells, "test_bpc")]
    assert order == [
        ("dense", 0.0), ("rigl", 0.8), ("rigl", 0.9), ("static", 0.8), ("static", 0.9),
    ]  # fmt: skip


def test_a_figure_cut_to_its_best_series_keeps_the_lowest_bits_per_character(
    tmp_path: Path,
) -> None:
    alphas = [round(0.05 + 0.03 * i, 2) for i in range(MAX_SERIES + 2)]
    for alpha in alphas:
        overrides = [*overrides_of("rigl", "erk", 0.9, 0), f"sparsity.args.alpha={alpha}"]
        write_lm_run(tmp_path, f"rigl_a{alpha}", overrides, 1.0 + alpha)  # the higher α, the worse
    records = collect(tmp_path)
    keys = [METHOD, "sparsity.distribution", "sparsity.args.alpha"]
    series, labels, _, note = line_series(records, keys, "test_bpc")
    kept = [cell.values["sparsity.args.alpha"] for cell in series]
    assert kept == alphas[:MAX_SERIES]  # the two highest bits per character dropped
    assert "lowest mean test bits per character" in note and len(labels) == MAX_SERIES


# ---------------------------------------------------------------------------------- figures
def test_bpc_vs_sparsity_and_learning_curves_are_written(lm_grid: Path) -> None:
    out = lm_grid.parent / "lm_figures"
    result = build_report(lm_grid, figures="bpc_vs_sparsity,learning_curves", out=out)
    assert result.warnings == [] and result.notes == []
    for kind in ("bpc_vs_sparsity", "learning_curves"):
        data = (out / f"{kind}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, kind
        assert result.figures[kind] == str(out / f"{kind}.png")


def test_bpc_vs_sparsity_draws_the_mean_test_bpc_per_method(lm_grid: Path, tmp_path: Path) -> None:
    figure = draw("bpc_vs_sparsity", collect(lm_grid), tmp_path / "b.png")
    (axes,) = figure.axes
    assert axes.get_ylabel() == "test bits per character (lower is better)"
    assert axes.get_title().startswith("Test bits per character vs sparsity")
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines["rigl, erk"].get_xdata()) == [0.8, 0.9]
    assert list(lines["rigl, erk"].get_ydata()) == pytest.approx([1.57, 1.67])
    assert list(lines["static, erk"].get_ydata()) == pytest.approx([1.72, 1.82])
    assert "dense (1.420 bpc)" in lines


def test_bpc_vs_sparsity_refuses_image_runs_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for sparsity in (0.8, 0.9):
        write_run(tmp_path, f"rigl_{sparsity}", overrides_of("rigl", "erk", sparsity, 0), 85.0)
    with pytest.raises(NoData, match="no finished run has test_bpc"):
        draw("bpc_vs_sparsity", collect(tmp_path), tmp_path / "x.png")
    assert main(["report", str(tmp_path), "--figures", "bpc_vs_sparsity"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("regrow report: warning: not drawn: bpc_vs_sparsity")
    assert "language-model" in err[0]
    assert not (tmp_path / "report" / "bpc_vs_sparsity.png").exists()


def test_learning_curves_show_validation_bits_per_character(lm_grid: Path, tmp_path: Path) -> None:
    records = collect(lm_grid)
    assert curve_metric(records) == "val_bpc"
    rigl = next(r for r in records if r.name == "rigl_erk_s0.8_seed0")
    assert curve_series(rigl, "val_bpc") == [(0, 3.04), (1, 2.54), (2, 2.04), (3, 1.54)]
    runs = ["rigl_erk_s0.8_seed0"]
    figure = draw("learning_curves", [rigl], tmp_path / "l.png", runs=runs)
    loss, score = figure.axes
    assert score.get_ylabel() == "validation bits per character (lower is better)"
    (line,) = score.get_lines()
    assert list(line.get_ydata()) == [3.04, 2.54, 2.04, 1.54]  # val_bpc, not test_bpc
    assert list(loss.get_lines()[0].get_ydata()) == [2.0, 1.0, 0.0, -1.0]


def test_learning_curves_fall_back_to_test_bpc_then_accuracy(tmp_path: Path) -> None:
    write_lm_run(tmp_path, "lm", overrides_of("rigl", "erk", 0.9, 0), 1.6,
                 rows=lm_rows(1.58, validation=False))  # fmt: skip
    write_run(tmp_path, "image", overrides_of("rigl", "erk", 0.9, 1), 85.0, rows=pass_rows())
    runs = {r.name: r for r in collect(tmp_path)}
    lm, image = runs["lm"], runs["image"]
    assert curve_metric([lm]) == "test_bpc"
    figure = draw("learning_curves", [lm], tmp_path / "t.png", runs=["lm"])
    assert figure.axes[1].get_ylabel() == "test bits per character (lower is better)"
    assert list(figure.axes[1].get_lines()[0].get_ydata()) == pytest.approx([3.1, 2.6, 2.1, 1.6])
    assert curve_metric([image]) == "test_accuracy"
    figure = draw("learning_curves", [image], tmp_path / "i.png", runs=["image"])
    assert figure.axes[1].get_ylabel() == "test accuracy (%)"


def test_alpha_delta_t_marks_the_lowest_validation_bits_per_character(tmp_path: Path) -> None:
    for alpha in (0.1, 0.3, 0.5):
        for delta_t in (50, 100):
            overrides = [f"sparsity.args.alpha={alpha}", f"sparsity.args.delta_t={delta_t}"]
            # the best (lowest) val_bpc at α 0.1, ΔT 100; the test set says otherwise
            val = 1.5 + alpha - delta_t / 1000
            write_lm_run(tmp_path, f"a{alpha}_d{delta_t}", ["sparsity.method=rigl", *overrides],
                         2.0 - alpha, val)  # fmt: skip
    figure = draw("alpha_delta_t", collect(tmp_path), tmp_path / "h.png")
    panel, bar = figure.axes
    assert bar.get_ylabel() == "validation bits per character (lower is better)"
    frames = [p.get_xy() for p in panel.patches if p.get_linestyle() == "-"]
    assert frames == [(0.5, -0.5)]  # ΔT 100 (column 1), α 0.1 (row 0)
    assert "1.500" in {t.get_text() for t in panel.texts}  # α 0.1, ΔT 100: three decimals


# ----------------------------------------------------------------------------------- search
SEARCH = """\
name: lm_search
preset: quickstart
overrides: [sparsity.method=rigl, data.validation_size=100]
run_name: rigl
search:
  trials: {trials}
  metric: {metric}
{direction}  space:
    sparsity.args.alpha: {{low: 0.1, high: 0.6}}
"""


def search_study(
    tmp_path: Path, metric: str = "val_bpc", direction: str | None = None, trials: int = 5
) -> Path:
    path = tmp_path / "search.yaml"
    line = f"  direction: {direction}\n" if direction else ""
    path.write_text(SEARCH.format(trials=trials, metric=metric, direction=line))
    return path


def test_search_direction_follows_the_metric(tmp_path: Path) -> None:
    def spec(**kwargs: Any) -> Any:
        return load_study(str(search_study(tmp_path, **kwargs))).search

    assert spec().direction == "minimize"
    assert spec(metric="val_accuracy").direction == "maximize"
    assert spec(metric="my_score").direction == "maximize"  # unknown: the old default
    assert spec(metric="my_score", direction="minimize").direction == "minimize"
    assert spec(direction="minimize").direction == "minimize"
    with pytest.raises(StudyError, match=r"search\.direction.*lower val_bpc is better") as error:
        spec(direction="maximize")
    assert "\n" not in str(error.value)


class BpcExecutor:
    """Trains nothing: each run's summary gets ``val_bpc = 1 + (α − 0.2)²`` (lowest at α 0.2)."""

    def task(self, plan: Any, run: Any) -> Any:
        from regrow.study.executors import RunTask

        return RunTask.of(plan, run)

    def run(self, tasks: Sequence[Any], progress: Any) -> list[Any]:
        from regrow.study.executors import Outcome, RunOutcome

        outcomes = []
        for task in tasks:
            alpha = next(
                float(o.split("=", 1)[1])
                for o in task.overrides
                if o.startswith("sparsity.args.alpha=")
            )
            Path(task.path).mkdir(parents=True, exist_ok=True)
            summary = {"status": "finished", "val_bpc": 1.0 + (alpha - 0.2) ** 2}
            (Path(task.path) / "summary.json").write_text(json.dumps(summary))
            outcomes.append(Outcome(task.name, RunOutcome.DONE))
        return outcomes

    def capacity(self) -> int:
        return 1

    def running(self) -> int:
        return 0

    def interrupted(self) -> int:
        return 0

    def request_stop(self, signum: int) -> None:
        pass


def test_optuna_search_on_val_bpc_minimizes(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    from regrow.study.planning import plan_runs
    from regrow.study.search import _storage, run_search

    out = tmp_path / "out"
    plan = plan_runs(load_study(str(search_study(tmp_path))), out_dir=str(out), seeds=1)
    assert run_search(plan, BpcExecutor(), "regrow sweep search.yaml") == 0
    study = optuna.load_study(study_name="rigl", storage=_storage(optuna, str(out)))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.get_trials() if t.value is not None]
    assert len(values) == 5 and len(set(values)) == 5
    assert study.best_value == min(values)
    record = json.loads((out / "study.json").read_text())["search"]
    assert record["direction"] == "minimize"
    assert record["points"]["rigl"]["best"]["value"] == min(values)


# ---------------------------------------------------------------------------- the study
def test_charlm_main_is_shipped_with_the_bpc_report() -> None:
    from regrow.study.planning import plan_runs

    study = load_study("charlm_main")
    assert study.report["metrics"] == ["test_bpc", "val_bpc", "inference_flops_ratio",
                                       "train_flops_ratio"]  # fmt: skip
    assert study.report["figures"] == ["bpc_vs_sparsity", "learning_curves"]
    assert study.report["group_by"] == [METHOD, SPARSITY]
    plan = plan_runs(study, preset="quickstart", out_dir="o")  # the charlm preset: its own task
    methods = {r.params[METHOD] for r in plan.runs}
    assert methods == {"dense", "small_dense", "static", "set", "rigl", "srigl", "pruning"}
    assert len(plan.runs) == (6 * 3 + 1) * 3
    assert all(plan.configs[r.name].sparsity.distribution == "erk" for r in plan.runs)
    assert {r.name for r in plan.runs if r.params[METHOD] == "dense"} == {
        "dense_seed0", "dense_seed1", "dense_seed2",
    }  # fmt: skip
    assert "rigl_erk_s0.95_seed2" in {r.name for r in plan.runs}
    assert all(0 < r.extra["model_width"] < 1 for r in plan.runs if "small_dense" in r.name)
