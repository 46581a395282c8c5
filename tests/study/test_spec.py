"""Study files: validation (one line, exit status 2, naming the file and the key), planning
(grid, zip, also, exclude, seeds, names, method-argument overrides), the derived equal-FLOP
sparsity against ``regrow flops --match-flops``, and the shipped studies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regrow.cli import main
from regrow.study.names import FIGURE_KINDS
from regrow.study.planning import plan_runs
from regrow.study.schema import StudyError, load_study, shipped_studies

BASE = """\
name: t
preset: quickstart
overrides: [train.epochs=1]
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(BASE + text)
    return path


def sweep_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """Run ``regrow sweep FILE --dry-run``; assert exit 2 and one line on stderr; return it."""
    path = write(tmp_path, text)
    status = main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("regrow sweep: error: "), err
    assert str(path) in err or "run " in err, err
    assert not (tmp_path / "out").exists()  # nothing launched, nothing written
    return err


def test_unknown_top_level_key(tmp_path, capsys):
    err = sweep_error(tmp_path, capsys, "grd:\n  sparsity.method: [static]\n")
    assert "'grd' is unknown" in err and "did you mean grid?" in err and "allowed keys" in err


def test_bad_grid_value_type(tmp_path, capsys):
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.sparsity: 0.9\n")
    assert "grid.sparsity.sparsity" in err and "non-empty list" in err
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.sparsity: [{a: 1}]\n")
    assert "grid.sparsity.sparsity" in err and "value {'a': 1} is a dict" in err


def test_zip_of_unequal_lengths(tmp_path, capsys):
    text = "zip:\n  train.multiplier: [1, 2, 5]\n  tag: [x1, x2]\n"
    err = sweep_error(tmp_path, capsys, text)
    assert "zip" in err and "train.multiplier has 3, tag has 2" in err


def test_unknown_figure_name(tmp_path, capsys):
    err = sweep_error(tmp_path, capsys, "report:\n  figures: [accuracy_vs_sparsty]\n")
    assert "report.figures" in err and "'accuracy_vs_sparsty'" in err
    assert all(kind in err for kind in FIGURE_KINDS)


def test_bad_config_key_in_grid(tmp_path, capsys):
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.sparsty: [0.8, 0.9]\n")
    assert "sparsity.sparsty" in err and "did you mean sparsity.sparsity" in err
    # A method argument the method lacks is caught by load_config, naming the run.
    err = sweep_error(
        tmp_path, capsys, "grid:\n  sparsity.method: [static]\n  sparsity.args.alpha: [0.1]\n"
    )
    assert "run sparsity.method=static, sparsity.args.alpha=0.1" in err and "alpha" in err
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.sparsity: [0.5, 1.5]\n")
    assert "run sparsity.sparsity=1.5" in err and "out of range" in err


def test_duplicate_run_names(tmp_path, capsys):
    text = "grid:\n  sparsity.method: [static, rigl]\nrun_name: 'run_seed{seed}'\n"
    err = sweep_error(tmp_path, capsys, text)
    assert "sparsity.method=static, seed=0" in err and "sparsity.method=rigl, seed=0" in err
    assert "'run_seed0'" in err


def test_other_study_errors(tmp_path, capsys):
    assert "exclude[0]" in sweep_error(
        tmp_path, capsys, "grid:\n  sparsity.method: [static]\nexclude:\n  - {train.lr: 0.1}\n"
    )
    assert "seed is set by the sweep" in sweep_error(tmp_path, capsys, "grid:\n  seed: [1, 2]\n")
    assert "equal_flops_of" in sweep_error(
        tmp_path, capsys, "derived:\n  sparsity.sparsity: {equal_flops_of: erx}\n"
    )
    assert "search.space" in sweep_error(tmp_path, capsys, "search:\n  trials: 2\n")
    status = main(["sweep", "no_such_study", "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2 and "is unknown" in err and "main" in err


def test_override_of_a_varied_key_and_an_unused_method_argument(tmp_path, capsys):
    path = write(tmp_path, "grid:\n  sparsity.method: [static, dense]\n")
    out = str(tmp_path / "out")
    assert main(["sweep", str(path), "--out", out, "--dry-run", "sparsity.method=rigl"]) == 2
    assert "varies sparsity.method itself" in capsys.readouterr().err
    assert main(["sweep", str(path), "--out", out, "--dry-run", "sparsity.args.delta_t=5"]) == 2
    err = capsys.readouterr().err
    assert "no run of study t has a method with that argument" in err and "dense, static" in err


def test_plan_grid_zip_also_exclude_and_method_arguments(tmp_path):
    path = write(
        tmp_path,
        """\
grid:
  sparsity.method: [static, rigl]
zip:
  train.multiplier: [1, 2]
  tag: [x1, x2]
also:
  - {sparsity.method: dense, sparsity.sparsity: 0.0, run_name: "dense_seed{seed}"}
exclude:
  - {sparsity.method: static, train.multiplier: [2]}
seeds: 2
run_name: "{sparsity.method}_{tag}_s{sparsity.sparsity}_seed{seed}"
""",
    )
    plan = plan_runs(load_study(str(path)), overrides=["sparsity.args.delta_t=5"], out_dir="o")
    names = [run.name for run in plan.runs]
    assert names == [
        "static_x1_s0.97_seed0",
        "static_x1_s0.97_seed1",
        "rigl_x1_s0.97_seed0",
        "rigl_x1_s0.97_seed1",
        "rigl_x2_s0.97_seed0",
        "rigl_x2_s0.97_seed1",
        "dense_seed0",
        "dense_seed1",
    ]
    by_name = {run.name: run for run in plan.runs}
    assert by_name["rigl_x2_s0.97_seed1"].overrides == (
        "train.epochs=1",
        "sparsity.args.delta_t=5",
        "sparsity.method=rigl",
        "train.multiplier=2",
        "seed=1",
        "out_dir=o/rigl_x2_s0.97_seed1",
    )
    assert "sparsity.args.delta_t=5" not in by_name["static_x1_s0.97_seed0"].overrides
    assert by_name["rigl_x2_s0.97_seed1"].params == {
        "sparsity.method": "rigl",
        "train.multiplier": 2,
        "tag": "x2",
        "seed": 1,
    }
    assert plan.configs["dense_seed0"].sparsity.sparsity == 0.0
    doc = plan.study_json()
    assert doc["study"] == "t" and doc["preset"] == "quickstart" and doc["seeds"] == [0, 1]
    assert [r["name"] for r in doc["runs"]] == names


def test_derived_equal_flops_sparsity_matches_regrow_flops(tmp_path, capsys):
    for preset, sparsity in (("quickstart", 0.9), ("cifar10_wrn22_2", 0.8)):
        path = write(
            tmp_path,
            f"""\
grid:
  sparsity.distribution: [erk, uniform]
  sparsity.sparsity: [{sparsity}]
derived:
  sparsity.sparsity: {{equal_flops_of: erk, when: {{sparsity.distribution: uniform}}}}
seeds: 1
""",
        )
        plan = plan_runs(load_study(str(path)), preset=preset, out_dir="o")
        erk, uniform = plan.runs
        assert plan.configs[erk.name].sparsity.sparsity == sparsity
        derived = plan.configs[uniform.name].sparsity.sparsity
        assert uniform.extra["derived"]["sparsity.sparsity"]["from"] == sparsity
        args = ["flops", "--preset", preset, "sparsity.distribution=uniform"]
        assert main([*args, f"sparsity.sparsity={sparsity}", "--match-flops", "erk", "--json"]) == 0
        expected = json.loads(capsys.readouterr().out)["matched_sparsity"]
        assert derived == expected
        assert derived < sparsity  # ERK spends more FLOPs than uniform at one sparsity


@pytest.mark.parametrize("name", shipped_studies())
def test_shipped_studies_plan_over_any_preset(name):
    assert set(shipped_studies()) >= {
        "main",
        "alpha_delta_t",
        "alpha_delta_t_optuna",
        "longer",
        "erk_vs_uniform_flops",
        "redistribution",
    }
    study = load_study(name)
    presets = (
        ["quickstart"]
        + (["cifar10_wrn22_2"] if name in ("main", "erk_vs_uniform_flops") else [])
        + (["charlm"] if name == "charlm_main" else [])
    )
    for preset in presets:
        overrides = ["data.validation_size=100"] if study.search else []
        plan = plan_runs(study, preset=preset, overrides=overrides, out_dir="o")
        assert plan.runs and len({r.name for r in plan.runs}) == len(plan.runs)
    if name == "main":
        # Small-Dense once per sparsity (the distribution does not apply to it), Dense once.
        assert len(plan.runs) == (5 * 2 * 4 + 4 + 1) * 3
        assert not [r for r in plan.runs if r.name.startswith("small_dense_erk")]
        widths = {r.extra["model_width"] for r in plan.runs if "small_dense" in r.name}
        assert all(0 < w < 1 for w in widths)
    if name == "dst_methods":  # 9 methods x 2 sparsities + Dense, 3 seeds; every method's defaults
        assert len(plan.runs) == (9 * 2 + 1) * 3
        methods = {plan.configs[r.name].sparsity.method for r in plan.runs}
        assert {"granet", "mest", "chase", "srigl", "pruning", "dense"} <= methods
    if name == "structures":  # 2 methods x 4 structures x 2 sparsities, 3 seeds
        assert len(plan.runs) == 2 * 4 * 2 * 3
        structures = {plan.configs[r.name].sparsity.structure for r in plan.runs}
        assert structures == {"unstructured", "2:4", "kernel", "block:4"}  # strings, not 124
    if name == "sparse_init":  # 4 methods x 2 sparsities x both inits, 3 seeds
        assert len(plan.runs) == 4 * 2 * 2 * 3
        inits = {plan.configs[r.name].sparsity.init for r in plan.runs}
        assert inits == {"dense", "sparse_fan_in"}
    if name == "charlm_main":  # over charlm: 6 methods x 3 sparsities + Dense, 3 seeds
        assert len(plan.runs) == (6 * 3 + 1) * 3
        widths = {r.extra["model_width"] for r in plan.runs if "small_dense" in r.name}
        assert len(widths) == 3 and all(0 < w < 1 for w in widths)


def test_study_error_is_a_one_line_value_error():
    with pytest.raises(StudyError, match="is unknown"):
        load_study("nope")


def test_duplicate_grid_and_also_values_are_named_as_duplicates(tmp_path, capsys):
    # issue 18, item 13: a value given twice was reported as a run-name clash.
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.method: [static, rigl, static]\n")
    assert "grid.sparsity.method" in err and "duplicate value 'static'" in err, err
    assert "both named" not in err
    err = sweep_error(tmp_path, capsys, "grid:\n  sparsity.sparsity: [0.8, 0.9, 0.8]\n")
    assert "grid.sparsity.sparsity" in err and "duplicate value 0.8" in err, err
    err = sweep_error(tmp_path, capsys, "also:\n  - {sparsity.method: [dense, dense]}\n")
    assert "also[0].sparsity.method" in err and "duplicate value 'dense'" in err, err
    # true and 1 are different values (as the run names and the configs tell them apart)
    text = "zip:\n  sparsity.method: [rigl, rigl]\n  sparsity.args.alpha: [0.1, 0.3]\n"
    assert len(plan_runs(load_study(str(write(tmp_path, text))), seeds=1).runs) == 2


@pytest.mark.parametrize("name", ["../../evil", "a/b", "..", ".hidden", "-x", "a b", "/abs"])
def test_study_name_that_is_not_a_plain_name_is_refused(tmp_path, capsys, monkeypatch, name):
    # issue 18, item 7: a study name containing ../ wrote outside runs/.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(f"name: {json.dumps(name)}\npreset: quickstart\n")
    status = main(["sweep", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("regrow sweep: error: "), err
    assert f"name {name!r} is not a plain name" in err and "letters, digits" in err, err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(StudyError, match="not a plain name"):
        load_study(str(path))
