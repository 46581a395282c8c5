"""``regrow report``: cells, missing seeds, tables and figures from hand-written run directories
(``config.yaml`` from the quickstart preset, ``summary.json`` and ``metrics.jsonl`` with chosen
numbers; nothing is trained)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from regrow.cli import main
from regrow.study.cells import Cell, Missing, aggregate
from regrow.study.figures import NoData, draw
from regrow.study.figures.training import MAX_LEGEND_LAYERS
from regrow.study.names import FIGURE_KINDS, STUDY_FILE
from regrow.study.records import ABSENT, UNREADABLE, collect, select_runs, varying_keys
from regrow.study.report import build_report
from regrow.train import load_config
from regrow.train.config import to_yaml
from regrow.train.rundir import MASK_UPDATE_EVENT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@cache
def _config_text(overrides: tuple[str, ...]) -> str:
    return to_yaml(load_config("quickstart", [*overrides, "out_dir=<test>"]))


def write_run(
    root: Path,
    name: str,
    overrides: list[str],
    accuracy: float | None = None,
    state: str = "done",
    rows: list[dict[str, Any]] | None = None,
    **summary: Any,
) -> Path:
    """A run directory as the trainer leaves it: ``config.yaml`` always; ``summary.json`` when
    ``state`` is ``done``; only a checkpoint when ``partial``; ``failed.json`` when ``failed``."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(_config_text(tuple(overrides)))
    config = load_config("quickstart", [*overrides, "out_dir=<test>"])
    if state == "done":
        sparsity = config.sparsity.sparsity if config.sparsity.method != "dense" else 0.0
        values = {
            "status": "finished",
            "method": config.sparsity.method,
            "method_args": dict(config.sparsity.args),
            "target_sparsity": config.sparsity.sparsity,
            "distribution": config.sparsity.distribution,
            "model": config.model.name,
            "model_width": config.model.width,
            "dataset": config.data.name,
            "seed": config.seed,
            "multiplier": config.train.multiplier,
            "epochs": config.train.epochs,
            "test_accuracy": accuracy,
            "sparsity": sparsity,
            "inference_flops_ratio": 1.0 - sparsity,
            "train_flops_ratio": (1.0 - sparsity) * config.train.multiplier,
            "wall_seconds": 5.0,
        }
        (path / "summary.json").write_text(json.dumps({**values, **summary}))
    elif state == "partial":
        (path / "checkpoint.pt").write_bytes(b"not read by the report")
    elif state == "failed":
        (path / "failed.json").write_text(json.dumps({"error": "NonFiniteLossError"}))
    if rows:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def accuracy_of(method: str, distribution: str, sparsity: float, seed: int) -> float:
    """Chosen numbers: RigL above Static, ERK above uniform, falling with sparsity, ±1 by seed."""
    base = {"dense": 98.0, "small_dense": 93.0, "static": 88.0, "rigl": 92.0}[method]
    if method in ("static", "rigl"):
        base -= 20 * (sparsity - 0.8) + (0 if distribution == "erk" else 1.5)
    return base + (1.0 if seed == 1 else -1.0)


def pass_rows(epochs: int = 4, steps: int = 40, scale: float = 1.0) -> list[dict[str, Any]]:
    """Pass rows of a run whose loss falls as ``scale × 2 / (epoch + 1)``; an evaluation (test
    accuracy rising towards 100 %) every second pass."""
    rows = []
    for epoch in range(epochs):
        row = {
            "epoch": epoch,
            "step": (epoch + 1) * steps,
            "train_loss": scale * 2.0 / (epoch + 1),
            "train_accuracy": 50 + 10 * epoch,
            "lr": 0.05,
            "density": 0.1,
            "train_flops_ratio": 0.01 * epoch,
            "seconds": 0.1 * epoch,
        }
        if epoch % 2 == 1:
            row.update(test_accuracy=100 - 40 * scale / (epoch + 1), test_loss=1.0 / (epoch + 1))
        rows.append(row)
    return rows


def mask_rows(layers: int, updates: int = 5) -> list[dict[str, Any]]:
    """Mask-update rows: layer ``i`` at density ``0.02 × 1.2^i``, drifting (as with
    redistribution) down for the first layers and up for the last ones."""
    return [
        {
            "event": MASK_UPDATE_EVENT,
            "epoch": u,
            "step": 50 * (u + 1),
            "itop_rate": 0.1 * u,
            "changed_fraction": 0.05,
            "layer_density": {
                f"block{i}.conv.weight": min(
                    1.0, 0.02 * 1.2**i * (1 + 0.04 * u * (i / layers - 0.5))
                )
                for i in range(layers)
            },
        }
        for u in range(updates)
    ]


def overrides_of(method: str, distribution: str, sparsity: float, seed: int) -> list[str]:
    extra = ["sparsity.args.delta_t=50"] if method == "rigl" else []
    return [
        f"sparsity.method={method}",
        f"sparsity.distribution={distribution}",
        f"sparsity.sparsity={sparsity}",
        f"seed={seed}",
        *extra,
    ]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """static, rigl × erk, uniform × 0.8, 0.9 over seeds 0, 1, plus Dense and Small-Dense; the
    run rigl/uniform/0.9/seed 1 is partial (a checkpoint, no summary)."""
    root = tmp_path_factory.mktemp("grid")
    for seed in (0, 1):
        for method in ("static", "rigl"):
            for distribution in ("erk", "uniform"):
                for sparsity in (0.8, 0.9):
                    name = f"{method}_{distribution}_{sparsity}_s{seed}"
                    partial = (method, distribution, sparsity, seed) == ("rigl", "uniform", 0.9, 1)
                    write_run(
                        root,
                        name,
                        overrides_of(method, distribution, sparsity, seed),
                        None if partial else accuracy_of(method, distribution, sparsity, seed),
                        state="partial" if partial else "done",
                        rows=[*pass_rows(), *(mask_rows(3) if method == "rigl" else [])],
                    )
        for method in ("dense", "small_dense"):
            write_run(
                root,
                f"{method}_s{seed}",
                overrides_of(method, "erk", 0.9, seed),
                accuracy_of(method, "erk", 0.9, seed),
                rows=pass_rows(),
            )
    return root


def cell_of(cells: list[Cell], **values: Any) -> Cell:
    found = [c for c in cells if all(c.values[f"sparsity.{k}"] == v for k, v in values.items())]
    assert len(found) == 1, (values, [c.values for c in cells])
    return found[0]


def test_cells_mean_std_n_and_missing_seeds_without_study_file(grid: Path) -> None:
    records = collect(grid)
    assert len(records) == 20
    keys = varying_keys(records)
    assert keys[:3] == ["sparsity.method", "sparsity.distribution", "sparsity.sparsity"]
    assert "seed" not in keys and "out_dir" not in keys
    cells = aggregate(records, keys, ["test_accuracy"])
    rigl = cell_of(cells, method="rigl", distribution="erk", sparsity=0.8)
    assert rigl.n == 2 and rigl.stats["test_accuracy"].values == (91.0, 93.0)
    assert rigl.stats["test_accuracy"].mean == pytest.approx(92.0)
    assert rigl.stats["test_accuracy"].std == pytest.approx(math.sqrt(2))
    assert rigl.missing == ()
    partial = cell_of(cells, method="rigl", distribution="uniform", sparsity=0.9)
    assert partial.n == 1 and partial.expected_seeds == (0, 1)
    assert partial.missing == (Missing(1, "partial", "rigl_uniform_0.9_s1"),)
    # Small-Dense is its own cell, not averaged with Dense.
    dense, small = cell_of(cells, method="dense"), cell_of(cells, method="small_dense")
    assert dense.stats["test_accuracy"].mean == pytest.approx(98.0)
    assert small.stats["test_accuracy"].mean == pytest.approx(93.0)
    # Natural order: dense baselines, static, rigl; uniform before erk; sparsity ascending.
    order = [
        (
            c.values["sparsity.method"],
            c.values["sparsity.distribution"],
            c.values["sparsity.sparsity"],
        )
        for c in cells
    ]
    assert order[:2] == [("dense", "erk", 0.9), ("small_dense", "erk", 0.9)]
    assert order[2:4] == [("static", "uniform", 0.8), ("static", "uniform", 0.9)]
    assert order[-1] == ("rigl", "erk", 0.9)


def test_expected_seeds_without_study_file_are_every_seed_seen(tmp_path: Path) -> None:
    write_run(tmp_path, "static_s0", overrides_of("static", "erk", 0.9, 0), 80.0)
    write_run(tmp_path, "static_s2", overrides_of("static", "erk", 0.9, 2), 82.0)
    write_run(tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    records = collect(tmp_path)
    cells = aggregate(records, ["sparsity.method"], ["test_accuracy"])
    static, rigl = cells
    assert static.missing == () and static.n == 2
    assert rigl.missing == (Missing(2, ABSENT),)


def test_study_file_gives_each_cell_its_planned_seeds_and_the_defaults(tmp_path: Path) -> None:
    plan_runs = []
    for method, seeds in (("static", (0, 1, 2)), ("rigl", (0, 1, 2)), ("dense", (0,))):
        for seed in seeds:
            overrides = [f"sparsity.method={method}", f"seed={seed}"]
            plan_runs.append(
                {
                    "name": f"{method}_s{seed}",
                    "overrides": overrides,
                    "params": {"sparsity.method": method, "seed": seed},
                }
            )
    study = {
        "study": "planned",
        "preset": "quickstart",
        "overrides": [],
        "seeds": 3,
        "runs": plan_runs,
        "report": {
            "group_by": ["sparsity.method"],
            "metrics": ["test_accuracy", "val_accuracy"],
            "figures": [],
        },
    }
    (tmp_path / STUDY_FILE).write_text(json.dumps(study))
    write_run(tmp_path, "static_s0", ["sparsity.method=static", "seed=0"], 80.0)
    write_run(tmp_path, "static_s1", ["sparsity.method=static", "seed=1"], state="failed")
    write_run(tmp_path, "rigl_s0", ["sparsity.method=rigl", "seed=0"], 85.0)
    write_run(tmp_path, "rigl_s1", ["sparsity.method=rigl", "seed=1"], 87.0)
    write_run(tmp_path, "rigl_s2", ["sparsity.method=rigl", "seed=2"], 89.0)
    write_run(tmp_path, "dense_s0", ["sparsity.method=dense", "seed=0"], 98.0)
    result = build_report(tmp_path)
    assert result.study.name == "planned"
    assert result.group_by == ["sparsity.method"]
    assert result.metrics == ["test_accuracy", "val_accuracy"]  # none held out: shown as —
    assert result.figures == {}  # study.json asks for none
    by_method = {c.values["sparsity.method"]: c for c in result.cells}
    assert [m for m in by_method] == ["dense", "static", "rigl"]
    assert by_method["static"].missing == (
        Missing(1, "failed", "static_s1"),
        Missing(2, "absent", "static_s2"),
    )
    assert by_method["rigl"].missing == () and by_method["rigl"].n == 3
    assert by_method["dense"].expected_seeds == (0,) and by_method["dense"].missing == ()
    assert "| static | 1/3 | 80.00 | — | 1 (failed), 2 (absent) |" in result.text
    assert "- static_s2: absent (seed 2; method=static)" in result.text


def test_a_planned_run_has_its_own_configuration_when_a_method_argument_is_not_its_methods(
    tmp_path: Path,
) -> None:
    """`regrow sweep S sparsity.args.delta_t=25` gives delta_t to the methods that have it; a run
    not started yet (absent) of a method without it reads its configuration from its own complete
    overrides, so its cell does not report every key as differing from the finished runs."""
    runs = []
    for method, seed in (("static", 0), ("static", 1), ("rigl", 0)):
        args = ["sparsity.args.delta_t=25"] if method == "rigl" else []
        name = f"{method}_s{seed}"
        overrides = [
            *args,
            f"sparsity.method={method}",
            f"seed={seed}",
            f"out_dir={tmp_path / name}",
        ]
        runs.append({"name": name, "overrides": overrides, "params": {"sparsity.method": method}})
    study = {
        "study": "s", "preset": "quickstart", "overrides": ["sparsity.args.delta_t=25"], "seeds": 2,
        "runs": runs, "report": {"group_by": ["sparsity.method"], "figures": []},
    }  # fmt: skip
    (tmp_path / STUDY_FILE).write_text(json.dumps(study))
    write_run(tmp_path, "static_s0", ["sparsity.method=static", "seed=0"], 80.0)
    write_run(tmp_path, "rigl_s0", ["sparsity.method=rigl", "sparsity.args.delta_t=25"], 85.0)
    records = {r.name: r for r in collect(tmp_path)}
    assert records["static_s1"].state == "absent"
    assert records["static_s1"].value("data.name") == "digits"  # its configuration, loaded
    result = build_report(tmp_path)
    assert "differ in keys" not in result.text, result.text


def test_markdown_csv_and_json_files(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = grid.parent / "grid_report"
    status = main(
        [
            "report",
            str(grid),
            "--figures",
            "none",
            "--out",
            str(out),
            "--group-by",
            "sparsity.method,sparsity.distribution,sparsity.sparsity",
            "--metrics",
            "test_accuracy,train_flops_ratio",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    assert markdown in printed
    assert "| rigl | uniform | 0.9 | 1/2 | 87.50 |" in markdown
    assert "| rigl | erk | 0.8 | 2/2 | 92.00 ± 1.41 | 0.2000 ± 0.0000 | — |" in markdown
    assert "1 (partial)" in markdown and "rigl_uniform_0.9_s1: partial" in markdown
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    assert len(rows) == 2 + 8
    row = next(
        r
        for r in rows
        if r["sparsity.method"] == "rigl"
        and r["sparsity.distribution"] == "erk"
        and r["sparsity.sparsity"] == "0.8"
    )
    assert float(row["test_accuracy_mean"]) == pytest.approx(92.0)
    assert float(row["test_accuracy_std"]) == pytest.approx(math.sqrt(2))
    assert row["test_accuracy_n"] == "2" and row["expected_seeds"] == "0;1"
    assert next(r for r in rows if r["missing"])["missing"] == "1:partial"
    data = json.loads((out / "report.json").read_text())
    assert data["group_by"] == ["sparsity.method", "sparsity.distribution", "sparsity.sparsity"]
    cell = next(c for c in data["cells"] if c["missing"])
    assert cell["missing"] == [{"seed": 1, "state": "partial", "run": "rigl_uniform_0.9_s1"}]
    assert cell["metrics"]["test_accuracy"]["n"] == 1
    assert {r["state"] for r in data["runs"]} == {"done", "partial"}


def test_partial_run_is_missing_with_its_state(tmp_path: Path) -> None:
    write_run(tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    write_run(tmp_path, "rigl_s1", overrides_of("rigl", "erk", 0.9, 1), state="partial")
    write_run(tmp_path, "rigl_s2", overrides_of("rigl", "erk", 0.9, 2), state="new")
    (tmp_path / "rigl_s3").mkdir()  # no config.yaml: not a run, ignored
    (tmp_path / "rigl_s3" / "notes.txt").write_text("x")
    records = collect(tmp_path)
    assert [(r.name, r.state) for r in records] == [
        ("rigl_s0", "done"),
        ("rigl_s1", "partial"),
        ("rigl_s2", "new"),
    ]
    (cell,) = aggregate(records, ["sparsity.method"], ["test_accuracy"])
    assert [str(m) for m in cell.missing] == ["1 (partial)", "2 (new)"]


def test_unreadable_summary_does_not_crash(tmp_path: Path) -> None:
    write_run(tmp_path, "a", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    (
        write_run(tmp_path, "b", overrides_of("rigl", "erk", 0.9, 1), 85.0) / "summary.json"
    ).write_text("{")
    records = {r.name: r for r in collect(tmp_path)}
    assert records["b"].state == UNREADABLE and "summary" in records["b"].detail


# ------------------------------------------------------------------------ command-line errors
def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regrow report: error:"), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _one_line_error(capsys, ["report", str(tmp_path / "nope")])
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _one_line_error(capsys, ["report", str(tmp_path / "file")])
    (tmp_path / "empty").mkdir()
    assert "no run directories" in _one_line_error(capsys, ["report", str(tmp_path / "empty")])


def test_unknown_key_figure_metric_and_run(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, ["report", str(grid), "--group-by", "sparsity.methd"])
    assert "'sparsity.methd'" in line and "did you mean sparsity.method" in line
    assert "available:" in line and "train.multiplier" in line
    line = _one_line_error(capsys, ["report", str(grid), "--figures", "accuracy,learning_curves"])
    assert "'accuracy'" in line and all(kind in line for kind in FIGURE_KINDS)
    line = _one_line_error(capsys, ["report", str(grid), "--metrics", "test_acc"])
    assert "'test_acc'" in line and "test_accuracy" in line
    line = _one_line_error(capsys, ["report", str(grid), "--runs", "nothing_*"])
    assert "'nothing_*'" in line and "dense_s0" in line


def test_figures_without_data_are_skipped_or_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipped alpha_delta_t: α (sparsity.args.alpha) takes one value (0.3)" in err
    assert "Traceback" not in err
    assert main(["report", str(tmp_path), "--figures", "alpha_delta_t"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("regrow report: warning: not drawn: alpha_delta_t")
    assert not (tmp_path / "report" / "alpha_delta_t.png").exists()


# ---------------------------------------------------------------------------------- figures
def _png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_accuracy_vs_sparsity(grid: Path, tmp_path: Path) -> None:
    records = collect(grid)
    figure = draw("accuracy_vs_sparsity", records, tmp_path / "a.png")
    width, height = _png(tmp_path / "a.png")
    assert width > 600 and height > 400
    (axes,) = figure.axes
    labels = [line.get_label() for line in axes.get_lines()]
    # static/rigl × erk/uniform lines, Dense as the reference line; small_dense at its sparsity.
    assert {"rigl, erk", "rigl, uniform", "static, erk", "static, uniform"} <= set(labels)
    assert any(label.startswith("dense (98.00 %)") for label in labels)
    rigl_erk = next(line for line in axes.get_lines() if line.get_label() == "rigl, erk")
    assert list(rigl_erk.get_xdata()) == [0.8, 0.9]
    assert list(rigl_erk.get_ydata()) == pytest.approx([92.0, 90.0])
    assert len(axes.collections) >= 5  # a std band per line
    assert axes.get_legend() is not None


def test_erk_vs_uniform_and_learning_curves(grid: Path, tmp_path: Path) -> None:
    records = collect(grid)
    figure = draw("erk_vs_uniform", records, tmp_path / "e.png")
    (axes,) = figure.axes
    assert _png(tmp_path / "e.png")[0] > 600
    labels = {container.get_label() for container in axes.containers}  # errorbar lines
    assert {"rigl, erk", "rigl, uniform", "static, erk", "static, uniform"} <= labels
    assert {t.get_text() for t in axes.texts} == {"s=0.8", "s=0.9"}
    figure = draw("learning_curves", records, tmp_path / "l.png")
    loss, accuracy = figure.axes
    keys = varying_keys(records)
    assert len(loss.get_lines()) == len(aggregate(records, keys, []))  # first run per cell
    assert list(accuracy.get_lines()[0].get_xdata()) == [1, 3]
    figure = draw(
        "learning_curves",
        select_runs(records, ["rigl_erk_*"]),
        tmp_path / "l2.png",
        runs=["rigl_erk_*"],
    )
    assert len(figure.axes[0].get_lines()) == 4


def test_alpha_delta_t_grid_is_an_annotated_heat_map(tmp_path: Path) -> None:
    root = tmp_path / "grid"
    for alpha in (0.1, 0.3, 0.5):
        for delta_t in (50, 100, 200):
            for seed in (0, 1):
                write_run(
                    root,
                    f"a{alpha}_d{delta_t}_s{seed}",
                    [
                        "sparsity.method=rigl",
                        f"sparsity.args.alpha={alpha}",
                        f"sparsity.args.delta_t={delta_t}",
                        f"seed={seed}",
                    ],
                    80 + 10 * alpha + delta_t / 100 + seed,
                )
    records = collect(root)
    figure = draw("alpha_delta_t", records, tmp_path / "h.png")
    panel = figure.axes[0]
    assert len(panel.images) == 1 and panel.images[0].get_array().shape == (3, 3)
    texts = sorted(t.get_text() for t in panel.texts)
    assert len(texts) == 9 and "82.0\n±0.7" in texts  # α 0.1, ΔT 50: 81.5 and 82.5
    assert [t.get_text() for t in panel.get_xticklabels()] == ["50", "100", "200"]
    # The best cell (α 0.5, ΔT 200) framed solid, the paper's (0.3, 100) dashed.
    frames = {(p.get_xy(), p.get_linestyle()) for p in panel.patches}
    assert frames == {((1.5, 1.5), "-"), ((0.5, 0.5), "--")}


def test_alpha_delta_t_optuna_trials_are_a_scatter_over_a_contour(tmp_path: Path) -> None:
    root = tmp_path / "optuna"
    generator = random.Random(0)
    for trial in range(20):
        alpha = round(generator.uniform(0.05, 0.6), 3)
        delta_t = generator.randint(10, 1000)
        write_run(
            root,
            f"trial_{trial}",
            [
                "sparsity.method=rigl",
                f"sparsity.args.alpha={alpha}",
                f"sparsity.args.delta_t={delta_t}",
            ],
            90 - 5 * abs(alpha - 0.3),
        )
    figure = draw("alpha_delta_t", collect(root), tmp_path / "o.png")
    panel = figure.axes[0]
    assert not panel.images
    kinds = {type(c).__name__ for c in panel.collections}
    assert "PathCollection" in kinds and len(panel.collections) >= 2  # scatter + contour
    scatters = [c for c in panel.collections if type(c).__name__ == "PathCollection"]
    assert 20 in [len(c.get_offsets()) for c in scatters]  # every trial a point
    (best,) = [c for c in scatters if len(c.get_offsets()) == 1]  # ringed in red
    records = [r for r in collect(root) if r.done]
    top = max(records, key=lambda r: r.metric("test_accuracy"))
    x, y = best.get_offsets()[0]
    assert (x, y) == (top.value("sparsity.args.delta_t"), top.value("sparsity.args.alpha"))
    assert panel.get_xscale() == "log"


def test_accuracy_vs_train_flops(tmp_path: Path) -> None:
    for method in ("static", "rigl", "dense"):
        for multiplier in (1, 2, 5):
            for seed in (0, 1):
                write_run(
                    tmp_path,
                    f"{method}_x{multiplier}_s{seed}",
                    [f"sparsity.method={method}", f"train.multiplier={multiplier}", f"seed={seed}"],
                    85.0 + multiplier + seed,
                )
    figure = draw("accuracy_vs_train_flops", collect(tmp_path), tmp_path / "f.png")
    (axes,) = figure.axes
    lines = {c.get_label(): c.lines[0] for c in axes.containers}  # errorbar: the data line
    assert set(lines) == {"dense", "static, erk", "rigl, erk"}
    assert list(lines["rigl, erk"].get_xdata()) == pytest.approx([0.03, 0.06, 0.15])
    assert list(lines["rigl, erk"].get_ydata()) == [86.5, 87.5, 90.5]
    assert sorted({t.get_text() for t in axes.texts}) == ["×1", "×2", "×5"]
    assert axes.get_xscale() == "log"
    assert _png(tmp_path / "f.png")[0] > 600


def test_accuracy_vs_train_flops_of_one_multiplier_is_a_line_per_method_through_sparsities(
    tmp_path: Path,
) -> None:
    for method in ("static", "rigl"):
        for sparsity in (0.9, 0.95):
            for seed in (0, 1):
                overrides = overrides_of(method, "erk", sparsity, seed)
                write_run(tmp_path, f"{method}_{sparsity}_s{seed}", overrides, 80.0 + 10 * sparsity)
    write_run(tmp_path, "dense_s0", ["sparsity.method=dense", "sparsity.sparsity=0.0"], 95.0)
    figure = draw("accuracy_vs_train_flops", collect(tmp_path), tmp_path / "f.png")
    (axes,) = figure.axes
    lines = {c.get_label(): c.lines[0] for c in axes.containers}
    assert set(lines) == {"dense", "static, erk", "rigl, erk"}
    xs = list(lines["static, erk"].get_xdata())
    assert xs == sorted(xs) and len(xs) == 2  # the sparser run trains with fewer FLOPs
    assert list(lines["static, erk"].get_ydata()) == pytest.approx([89.5, 89.0])
    assert {"0.9", "0.95"} <= {t.get_text() for t in axes.texts}
    one = [r for r in collect(tmp_path) if r.value("sparsity.sparsity") == 0.9]
    with pytest.raises(NoData, match="one value each"):
        draw("accuracy_vs_train_flops", one, tmp_path / "g.png")


@pytest.mark.parametrize("layers", [3, 20])
def test_layer_density(tmp_path: Path, layers: int) -> None:
    for seed in (0, 1):
        write_run(
            tmp_path,
            f"rigl_s{seed}",
            overrides_of("rigl", "erk", 0.9, seed),
            85.0,
            rows=[*pass_rows(), *mask_rows(layers)],
        )
    write_run(tmp_path, "static_s0", overrides_of("static", "erk", 0.9, 0), 80.0, rows=pass_rows())
    figure = draw("layer_density", collect(tmp_path), tmp_path / "d.png")
    panel = figure.axes[0]
    assert len(panel.get_lines()) == layers  # the first rigl run; static has no mask updates
    assert list(panel.get_lines()[0].get_xdata()) == [50, 100, 150, 200, 250]
    if layers > MAX_LEGEND_LAYERS:
        assert len(figure.axes) == 2  # the panel and a colour bar along depth
        assert not figure.legends
    else:
        assert len(figure.legends) == 1
        assert figure.legends[0].get_texts()[0].get_text() == "block0.conv.weight"
    assert _png(tmp_path / "d.png")[1] > 300


def test_every_kind_from_the_cli(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = grid.parent / "all_figures"
    assert main(["report", str(grid), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    drawn = {p.stem for p in out.glob("*.png")}
    assert drawn == {
        "accuracy_by_cell", "accuracy_vs_sparsity", "accuracy_vs_train_flops", "erk_vs_uniform",
        "layer_density", "learning_curves",
    }  # fmt: skip
    assert "skipped alpha_delta_t" in captured.err
    assert "accuracy_vs_train_flops" not in captured.err  # drawn along the grid's sparsities
    assert all(p.stat().st_size > 1000 for p in out.glob("*.png"))
    assert not list(out.glob(".*.tmp"))  # written atomically, no temporaries left


def test_locked_run_is_missing_with_state_locked(tmp_path: Path) -> None:
    from regrow.train import RunDir

    write_run(tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    busy = write_run(tmp_path, "rigl_s1", overrides_of("rigl", "erk", 0.9, 1), state="partial")
    with RunDir(busy).lock():  # another trainer holds it
        (cell,) = aggregate(collect(tmp_path), ["sparsity.method"], ["test_accuracy"])
    assert cell.missing == (Missing(1, "locked", "rigl_s1"),)


def test_runs_restricts_the_report(grid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = grid.parent / "only_rigl"
    argv = ["report", str(grid), "--runs", "rigl_erk_*", "--figures", "learning_curves"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 of 4 runs finished" in printed and "static" not in printed
    assert (out / "learning_curves.png").stat().st_size > 1000


def test_accuracy_by_cell_is_a_bar_per_cell_in_the_study_order_with_each_seed(
    tmp_path: Path,
) -> None:
    """Cells labelled by a study's tag keep the study's order (study.json), one bar each at the
    mean, one dot per finished seed, the training FLOPs under each label."""
    runs = []
    for tag, method, accuracies in (("static", "static", (70.0, 80.0)), ("rigl", "rigl", (95.0,))):
        for seed, accuracy in enumerate(accuracies):
            name = f"{tag}_s{seed}"
            overrides = [f"sparsity.method={method}", f"seed={seed}"]
            write_run(tmp_path, name, overrides, accuracy)
            runs.append({"name": name, "overrides": overrides, "params": {"tag": tag}})
    runs.append({"name": "rigl_s1", "overrides": ["sparsity.method=rigl", "seed=1"],
                 "params": {"tag": "rigl"}})  # fmt: skip
    plan = {"study": "t", "preset": "quickstart", "runs": runs, "report": {"group_by": ["tag"]}}
    (tmp_path / STUDY_FILE).write_text(json.dumps(plan))
    records = collect(tmp_path)
    figure = draw("accuracy_by_cell", records, tmp_path / "f.png", group_by=["tag"])
    (axes,) = figure.axes
    assert [bar.get_height() for bar in axes.patches] == [75.0, 95.0]
    from matplotlib.collections import PathCollection

    dots = [c for c in axes.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [2, 1]
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert labels == ["static\n0.03× train FLOPs", "rigl\n0.03× train FLOPs"]
    cells = aggregate(records, ["tag"], ["test_accuracy"])
    assert [str(m) for m in cells[1].missing] == ["1 (absent)"]
    assert _png(tmp_path / "f.png")[0] > 300


def test_alpha_delta_t_selects_and_colours_by_validation_accuracy_when_held_out(
    tmp_path: Path,
) -> None:
    """A search selects on the validation split: the figure's colours and its best mark follow
    val_accuracy (here the opposite of test_accuracy), never the test set."""
    for alpha in (0.1, 0.3, 0.5):
        for delta_t in (50, 100):
            overrides = [f"sparsity.args.alpha={alpha}", f"sparsity.args.delta_t={delta_t}"]
            write_run(tmp_path, f"a{alpha}_d{delta_t}", ["sparsity.method=rigl", *overrides],
                      90 - 10 * alpha, val_accuracy=80 + 10 * alpha + delta_t / 100)  # fmt: skip
    figure = draw("alpha_delta_t", collect(tmp_path), tmp_path / "v.png")
    panel, bar = figure.axes
    assert bar.get_ylabel() == "validation accuracy (%)"
    frames = [p.get_xy() for p in panel.patches if p.get_linestyle() == "-"]
    assert frames == [(0.5, 1.5)]  # ΔT 100 (column 1), α 0.5 (row 2): the best validation
    assert figure.get_suptitle().startswith("Validation accuracy over α × ΔT")


@pytest.mark.parametrize("content", ["[1, 2]", "{torn", '"finished"'])
def test_damaged_summary_is_an_unreadable_run_named_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    # issue 18, item 9: a summary.json holding a JSON list crashed the report (AttributeError).
    write_run(tmp_path, "a", overrides_of("rigl", "erk", 0.9, 0), 85.0)
    damaged = write_run(tmp_path, "b", overrides_of("rigl", "erk", 0.9, 1), 86.0)
    (damaged / "summary.json").write_text(content)
    records = {r.name: r for r in collect(tmp_path)}
    assert records["b"].state == UNREADABLE and "summary.json" in records["b"].detail
    assert main(["report", str(tmp_path), "--figures", "none"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "- b: unreadable, summary.json" in captured.out, captured.out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    (run,) = [r for r in report["runs"] if r["name"] == "b"]
    assert run["state"] == UNREADABLE and "summary.json" in run["detail"]
    (cell,) = report["cells"]
    assert cell["n"] == 1 and cell["metrics"]["test_accuracy"]["values"] == [85.0]


def test_group_by_that_merges_different_configurations_names_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18, item 4: --group-by sparsity.method merged runs of different sparsities sharing a
    # seed into one cell (n/expected 2/1) and said nothing.
    write_run(tmp_path, "rigl_08", overrides_of("rigl", "erk", 0.8, 0), 90.0)
    write_run(tmp_path, "rigl_09", overrides_of("rigl", "erk", 0.9, 0), 88.0)
    write_run(tmp_path, "static_09", overrides_of("static", "erk", 0.9, 0), 85.0)
    argv = ["report", str(tmp_path), "--figures", "none", "--group-by", "sparsity.method"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Cells whose runs differ in keys not grouped by" in markdown, markdown
    assert "- method=rigl: sparsity.sparsity (0.8, 0.9)" in markdown, markdown
    assert "method=static" not in markdown.split("not grouped by")[1]
    assert "regrow report: warning: 1 cell mixes runs that differ in keys not grouped by" in (
        captured.err
    ), captured.err
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    cells = {c["group"]["sparsity.method"]: c for c in data["cells"]}
    assert cells["rigl"]["differing_keys"] == {"sparsity.sparsity": [0.8, 0.9]}
    assert cells["static"]["differing_keys"] == {}
    # Grouped by every key that differs, nothing is noted.
    argv[-1] = "sparsity.method,sparsity.sparsity"
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "differ in keys" not in captured.out and "warning" not in captured.err


def test_std_is_shown_only_where_a_cell_has_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18, item 14: a cell with one run showed "± 0.00".
    write_run(tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 90.0)
    write_run(tmp_path, "rigl_s1", overrides_of("rigl", "erk", 0.9, 1), 92.0)
    write_run(tmp_path, "static_s0", overrides_of("static", "erk", 0.9, 0), 85.0)
    argv = ["report", str(tmp_path), "--metrics", "test_accuracy", "--group-by", "sparsity.method"]
    assert main([*argv, "--figures", "accuracy_by_cell"]) == 0
    printed = capsys.readouterr().out
    assert "| rigl | 2/2 | 91.00 ± 1.41 | — |" in printed, printed
    assert "| static | 1/2 | 85.00 | 1 (absent) |" in printed, printed
    assert "± 0.00" not in printed
    text = (tmp_path / "report" / "report.csv").read_text()
    rows = {r["sparsity.method"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["static"]["test_accuracy_std"] == "" and rows["static"]["test_accuracy_n"] == "1"
    assert float(rows["rigl"]["test_accuracy_std"]) == pytest.approx(math.sqrt(2))
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    stats = {c["group"]["sparsity.method"]: c["metrics"]["test_accuracy"] for c in data["cells"]}
    assert stats["static"] == {"mean": 85.0, "std": None, "n": 1, "values": [85.0]}
    assert (tmp_path / "report" / "accuracy_by_cell.png").read_bytes().startswith(PNG_MAGIC)


def test_report_of_a_single_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 18, item 13: `regrow report RUN_DIR` said the directory held no run directories.
    run = write_run(
        tmp_path, "rigl_s0", overrides_of("rigl", "erk", 0.9, 0), 85.0, rows=pass_rows()
    )
    assert main(["report", str(run), "--figures", "learning_curves"]) == 0
    captured = capsys.readouterr()
    assert "| rigl | 1 | 85.00 |" in captured.out or "| rigl | 1/1 | 85.00 |" in captured.out, (
        captured.out
    )
    data = json.loads((run / "report" / "report.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["rigl_s0"]
    assert (run / "report" / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
    assert [r.name for r in collect(run)] == ["rigl_s0"]
