"""The run directory: its states, provenance rows, metrics truncation, the summary's record of the
run, one meaning per metric name, and the check that a resume is the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import regrow
from regrow.cli import main
from regrow.sparsity.schedules import PruningSchedule
from regrow.train import CheckpointError, NonFiniteLossError, RunDir, load_config, train
from regrow.train.config import to_yaml
from regrow.train.rundir import RESUME_OVERRIDABLE, RunDirError, differing_keys
from tests.train.runs import SHORT, config, digits_config, one_error_line


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ---------------------------------------------------------------- states, provenance, identity
def test_new_partial_done_with_a_provenance_row_per_start_and_resume(tmp_path: Path) -> None:
    config = digits_config(tmp_path, "train.stop_at_step=50")
    run = RunDir(tmp_path)
    assert run.state() == "new" and not run.is_finished(config)

    assert train(config)["status"] == "stopped"
    assert run.state() == "partial" and not run.is_finished(config)
    (start,) = run.provenance()
    assert start["event"] == "start" and start["step"] == 0
    assert start["world_size"] == 1 and "torch_version" in start and "git_revision" in start
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(config)  # a fresh start would overwrite it

    assert train(config, resume=True)["status"] == "finished"
    assert run.state() == "done" and run.is_finished(config)
    first, second = run.provenance()
    assert first == start, "the start row is kept as it was"
    assert second["event"] == "resume" and second["step"] == 50
    assert not run.is_finished(digits_config(tmp_path, "train.stop_at_step=50", "seed=1"))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_failed_after_a_non_finite_loss_and_a_fresh_start_clears_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    bad = digits_config(tmp_path, "sparsity.method=dense", "train.lr=1e12", "train.epochs=1")
    with pytest.raises(NonFiniteLossError):
        train(bad)
    assert run.state() == "failed" and not run.has_checkpoint()
    failure = run.failure()
    assert failure["error"] == "NonFiniteLossError" and "training loss became" in failure["reason"]
    assert failure["epoch"] == 0 and "step" in failure

    good = digits_config(tmp_path, "sparsity.method=dense", "train.epochs=1")
    assert train(good)["status"] == "finished"  # nothing to resume: starting again is allowed
    assert run.state() == "done" and run.failure() is None
    assert [row["event"] for row in run.provenance()] == ["start", "start"]
    assert [row["epoch"] for row in run.metrics()] == [0], "the failed start's rows are gone"


def test_resume_after_a_failure_cuts_the_metrics_back_to_the_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    """Checkpoints every 2 passes; the loss turns NaN in pass 3, after pass 2's row was written
    but not checkpointed. The resume drops that row, repeats pass 2 and clears the failure."""
    import regrow.train.loop as loop

    overrides = ["sparsity.method=static", "train.epochs=4", "train.checkpoint_every=2"]
    full = digits_config(tmp_path / "full", *overrides)
    train(full)

    config = digits_config(tmp_path / "part", *overrides)
    original = loop.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if calls["n"] > 3 * 44 + 10 else loss  # 44 batches a pass

    monkeypatch.setattr(loop.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="is kept"):
        train(config)
    run = RunDir(tmp_path / "part")
    assert run.state() == "failed" and run.has_checkpoint()
    assert [row["epoch"] for row in run.metrics()] == [0, 1, 2]  # 2 is past the checkpoint

    monkeypatch.setattr(loop.nn.CrossEntropyLoss, "forward", original)
    assert train(config, resume=True)["status"] == "finished"
    assert run.state() == "done" and run.failure() is None
    rows = run.metrics()
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert without_seconds(rows) == without_seconds(RunDir(tmp_path / "full").metrics())


def test_truncate_metrics_keeps_exactly_the_earlier_passes(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for epoch in range(4):
        run.append_metrics({"epoch": epoch, "step": 10 * epoch})
    run.truncate_metrics(2)
    assert run.metrics() == [{"epoch": 0, "step": 0}, {"epoch": 1, "step": 10}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunDir.METRICS]
    run.truncate_metrics(0)
    assert run.metrics() == [] and run.metrics_path.read_text() == ""


def test_a_torn_last_row_is_dropped_and_a_garbled_earlier_row_named(tmp_path: Path, capsys) -> None:
    run = RunDir(tmp_path)
    for epoch in range(3):
        run.append_metrics({"epoch": epoch, "step": 10 * epoch})
    with run.metrics_path.open("a") as handle:
        handle.write('{"epoch": 3, "st')  # what a kill or a full disk leaves of an append
    assert [row["epoch"] for row in run.metrics()] == [0, 1, 2]
    assert f"{run.metrics_path}: dropping its torn last line 4" in capsys.readouterr().err
    run.truncate_metrics(2)  # a resume rewrites the file without it
    assert run.metrics_path.read_text().splitlines() == [
        '{"epoch": 0, "step": 0}',
        '{"epoch": 1, "step": 10}',
    ]
    run.metrics_path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(RunDirError, match=f"{run.metrics_path} line 2 is not JSON"):
        run.metrics()


def test_out_dir_is_not_part_of_the_run_identity(tmp_path: Path) -> None:
    """A run directory copied elsewhere (or named by another path) is the same run."""
    here, there = digits_config(tmp_path / "a"), digits_config(tmp_path / "b")
    assert differing_keys(here, there) == {}
    assert "out_dir" not in differing_keys(here, digits_config(tmp_path / "b", "seed=1"))
    run = RunDir(tmp_path / "a")
    run.path.mkdir()
    run.config_path.write_text(to_yaml(here))
    run.write_summary({"status": "finished"})
    assert run.is_finished(there) and not run.is_finished(digits_config(tmp_path, "seed=1"))


def test_config_mismatch_names_the_keys_that_differ(tmp_path: Path) -> None:
    saved = digits_config(tmp_path, "sparsity.method=set")
    given = digits_config(
        tmp_path, "sparsity.method=set", "seed=3", "sparsity.args.delta_t=20", "train.batch_size=8"
    )
    assert "train.batch_size" in RESUME_OVERRIDABLE
    assert differing_keys(to_yaml(saved), given) == {
        "seed": (0, 3),
        "sparsity.args.delta_t": (10, 20),
    }
    with pytest.raises(CheckpointError) as error:
        RunDir(tmp_path).check_same_run(saved, given, tmp_path / RunDir.CHECKPOINT)
    message = str(error.value)
    assert "different configuration" in message
    assert (
        "seed: 0 saved, 3 now" in message and "sparsity.args.delta_t: 10 saved, 20 now" in message
    )
    assert "train.batch_size" not in message.split("(only")[0]


# --------------------------------------------------------------------- summary and metrics
def test_summary_records_the_run_and_one_meaning_per_metric_name(tmp_path: Path) -> None:
    config = digits_config(tmp_path, "sparsity.method=rigl")  # delta_t=10, the rest defaults
    summary = train(config)
    assert json.loads(RunDir(tmp_path).summary_path.read_text()) == summary
    defaults = regrow.get_method("rigl").Args().as_dict()
    assert summary["method_args"] == {**defaults, "delta_t": 10}
    assert {"alpha", "drop_schedule", "redistribution", "t_end_fraction"} <= set(defaults)
    expected = {
        "method": "rigl",
        "target_sparsity": config.sparsity.sparsity,
        "distribution": config.sparsity.distribution,
        "power": config.sparsity.power,
        "dense_layers": config.sparsity.dense_layers,
        "custom_densities": None,
        "structure": "unstructured",
        "init": "dense",
        "model": config.model.name,
        "model_width": config.model.width,
        "dataset": "digits",
        "seed": 0,
        "multiplier": 1.0,
        "epochs": 3,
        "batch_size": config.train.batch_size,
        "lr": config.train.lr,
        "lr_milestones": list(config.train.lr_milestones),
        "lr_gamma": config.train.lr_gamma,
        "warmup_epochs": config.train.warmup_epochs,
        "total_steps": 3 * 44,
        "steps": 3 * 44,
    }
    assert {key: summary[key] for key in expected} == expected

    rows = RunDir(tmp_path).metrics()
    updates = RunDir(tmp_path).mask_updates()
    assert summary["itop_rate"] == updates[-1]["itop_rate"] > 1 - config.sparsity.sparsity
    ratios = [row["train_flops_ratio"] for row in rows]
    assert ratios == sorted(ratios) and ratios[-1] == summary["train_flops_ratio"]
    assert rows[-1]["train_flops"] == summary["train_flops"]
    assert 0 < summary["train_flops_ratio"] < 1
    assert not any("per_sample" in key for key in (*rows[-1], *summary)), "one ratio, one name"


def test_train_flops_ratio_of_dense_ends_at_one(tmp_path: Path) -> None:
    """Dense, 1×: its training FLOPs are exactly the denominator, 3 f_D × the 1× run's samples."""
    summary = train(digits_config(tmp_path, "sparsity.method=dense", "train.epochs=1"))
    (row,) = RunDir(tmp_path).metrics()
    assert row["train_flops_ratio"] == summary["train_flops_ratio"] == pytest.approx(1.0)


# ------------------------------------------------------------------- issue 18: 7, 9 and 13


def test_pruning_records_the_steps_it_pruned_between(tmp_path: Path) -> None:
    """prune_begin/prune_end left null are scaled to the run: summary.json records the steps used
    (issue 18, item 7), not null."""
    summary = train(digits_config(tmp_path, "sparsity.method=pruning"))
    schedule = PruningSchedule.for_run(summary["total_steps"], None, None, 10)
    args = summary["method_args"]
    assert (args["prune_begin"], args["prune_end"]) == (schedule.begin, schedule.end)
    assert isinstance(args["prune_begin"], int) and args["prune_begin"] < args["prune_end"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("[1, 2]\n", "is not a JSON object"), ('{"status": "fini', "is not valid JSON")],
)
def test_a_damaged_summary_is_one_line_naming_the_file(
    tmp_path: Path, capsys, text: str, expected: str
) -> None:
    """issue 18, item 9: a summary.json that holds a list, or is cut short, was an AttributeError
    or a JSON error naming no file; it is a RunDirError naming the file (report and sweep rely
    on it), and a resume says so in one line."""
    run = tmp_path / "run"
    assert train(digits_config(run, "train.stop_at_step=10"))["status"] == "stopped"
    (run / RunDir.SUMMARY).write_text(text)
    capsys.readouterr()
    for read in (RunDir(run).summary, RunDir(run).state):
        with pytest.raises(RunDirError) as info:
            read()
        assert str(run / RunDir.SUMMARY) in str(info.value) and expected in str(info.value)
    assert main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(run / RunDir.SUMMARY) in line and expected in line, line


def test_starting_over_a_finished_run_does_not_suggest_resuming_it(tmp_path: Path, capsys):
    """issue 18, item 13: a finished run was told to "continue it with --resume"."""
    run = tmp_path / "run"
    train(config(run))
    capsys.readouterr()
    argv = ["train", "--preset", "quickstart", f"out_dir={run}", *SHORT]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume" not in line and "continue" not in line, line
    assert f"{run} already holds a run, and it is finished" in line, line
    assert "choose another out_dir" in line
    partial = tmp_path / "partial"
    train(config(partial, "train.stop_at_step=10"))
    capsys.readouterr()
    assert main(["train", "--preset", "quickstart", f"out_dir={partial}", *SHORT]) == 2
    assert f"regrow train --resume {partial}" in one_error_line(capsys.readouterr().err)


def test_a_config_saved_before_a_key_existed_is_the_same_run(tmp_path: Path) -> None:
    """A run written by an older regrow lacks keys added since (train.optimizer, data.path, ...):
    they read as their defaults, so it still resumes; a real difference is still named."""
    import yaml

    config = load_config("quickstart", [f"out_dir={tmp_path}"])
    saved = yaml.safe_load(to_yaml(config))
    for section, key in (("train", "optimizer"), ("train", "grad_clip"), ("data", "path")):
        del saved[section][key]
    older = yaml.safe_dump(saved)
    assert differing_keys(older, config) == {}
    saved["train"]["lr"] = 0.5
    assert set(differing_keys(yaml.safe_dump(saved), config)) == {"train.lr"}
