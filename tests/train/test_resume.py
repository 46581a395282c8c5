"""Resuming a run: stopped, then resumed into fresh objects, it ends bit-identical to the
uninterrupted run (at a mask-update boundary, with dropout and augmentation); a finished run, a
copied run and a run started from elsewhere resume as they should; a changed config is named key
by key. (The sparsifier's own save/load round trip is tests/sparsity/test_resume.py.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from regrow.cli import main
from regrow.train import RunDir, load_config, train
from tests.train.runs import (
    config,
    copy_tree,
    digits_config,
    one_error_line,
    regrow_train,
    snapshot,
    tiny_cifar_overrides,
)


def stopped_then_resumed(config_overrides: list[str], tmp_path: Path, stop: int, make):
    full = make(tmp_path / "full", *config_overrides)
    assert train(full)["status"] == "finished"
    part = make(tmp_path / f"part{stop}", *config_overrides, f"train.stop_at_step={stop}")
    first = train(part)
    assert first == {
        "status": "stopped",
        "reason": "stop_at_step",
        "step": stop,
        "checkpoint": str(tmp_path / f"part{stop}" / "checkpoint.pt"),
    }
    second = train(part, resume=True)
    assert second["status"] == "finished"
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / f"part{stop}" / "checkpoint.pt", weights_only=False)
    return a, b


@pytest.mark.parametrize("stop", [20, 21, 45])
def test_resume_at_a_mask_update_boundary_is_bit_identical(tmp_path: Path, stop: int) -> None:
    """RigL with ΔT=10: stopping at step 20 checkpoints right before the update at step 20, 21 right
    after it; 45 stops mid-epoch (44 steps per epoch)."""
    a, b = stopped_then_resumed([], tmp_path, stop, digits_config)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["sparsifier"]["step_count"] == b["sparsifier"]["step_count"]
    assert a["flops"] == b["flops"]
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    part_rows = (tmp_path / f"part{stop}" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(full_rows) == strip(part_rows)


def test_resume_with_dropout_and_augmentation_is_bit_identical(
    cifar_root: Path, tmp_path: Path
) -> None:
    """WRN's dropout draws from the global RNG and the crops from (seed, epoch): both restored."""

    def make(out: Path, *extra: str):
        return load_config(
            "cifar10_wrn22_2",
            [
                *tiny_cifar_overrides(cifar_root),
                "train.epochs=2",
                "sparsity.args.delta_t=3",
                f"out_dir={out}",
                *extra,
            ],
        )

    a, b = stopped_then_resumed([], tmp_path, 6, make)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resuming_a_finished_run_changes_nothing_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(config(out))
    before = snapshot(tmp_path)
    result = regrow_train("--resume", str(out))
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(out) in line and "already finished" in line
    assert json.loads(result.stdout)["test_accuracy"] == summary["test_accuracy"]
    assert snapshot(tmp_path) == before, "every file byte-identical, none added or removed"


def test_a_copied_run_resumes_into_the_copy_only(tmp_path: Path) -> None:
    original, copy = tmp_path / "runA", tmp_path / "runB"
    assert train(config(original, "train.stop_at_step=50"))["status"] == "stopped"
    copy_tree(original, copy)
    before = snapshot(original)
    result = regrow_train("--resume", str(copy))
    assert result.returncode == 0, result.stderr
    assert snapshot(original) == before, "the original run directory is untouched"
    assert RunDir(original).state() == "partial" and RunDir(copy).state() == "done"
    start, resume = RunDir(copy).provenance()
    assert (start["run_dir"], resume["run_dir"]) == (str(original.resolve()), str(copy.resolve()))
    assert [row["epoch"] for row in RunDir(copy).metrics()] == [0, 1]


def test_resume_works_from_any_working_directory(tmp_path: Path, relative_partial_run) -> None:
    """The run was started as ``out_dir=run``; it resumes by its absolute path from elsewhere."""
    (tmp_path / "work").mkdir()
    run, elsewhere = tmp_path / "work" / "run", tmp_path / "elsewhere"
    copy_tree(relative_partial_run, run)
    elsewhere.mkdir()
    result = regrow_train("--resume", str(run), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert RunDir(run).state() == "done" and RunDir(run).summary()["steps"] == 88
    assert list(elsewhere.iterdir()) == [], "nothing written into the working directory"


def test_resume_with_a_changed_config_names_the_keys_that_differ(
    tmp_path: Path, relative_partial_run
) -> None:
    run = tmp_path / "run"
    copy_tree(relative_partial_run, run)
    path = run / RunDir.CONFIG
    edited = re.sub(r"^seed: 0$", "seed: 3", path.read_text(), flags=re.M)
    edited = re.sub(r"^  lr: 0.05$", "  lr: 0.1", edited, flags=re.M)
    assert edited.count("seed: 3") == edited.count("lr: 0.1") == 1
    path.write_text(edited)
    result = regrow_train("--resume", str(run))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert "different configuration" in line and str(run / RunDir.CHECKPOINT) in line
    assert "seed: 0 saved, 3 now" in line and "train.lr: 0.05 saved, 0.1 now" in line
    assert [row["event"] for row in RunDir(run).provenance()] == ["start"]
    assert RunDir(run).state() == "partial"


# ------------------------------------------------------------------------- issue 18: 2 and 7


def test_a_relative_data_root_is_recorded_absolute_and_may_move_on_resume(
    cifar_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """issue 18, item 2: ``data.root=data`` is resolved when the run starts and saved absolute,
    so the run resumes from any working directory; where the data moved, ``data.root`` may be
    given again on resume (it says where the data set lives, not which one it is)."""
    start = tmp_path / "start"
    shutil.copytree(cifar_root, start / "data")
    monkeypatch.chdir(start)
    argv = ["train", "--preset", "cifar10_wrn22_2", "train.epochs=2", "sparsity.args.delta_t=3"]
    argv += [*tiny_cifar_overrides(Path("data")), "out_dir=run", "train.progress=false"]
    assert main([*argv, "train.stop_at_step=4"]) == 0
    run = start / "run"
    assert load_config(str(run / RunDir.CONFIG)).data.root == str(start / "data")
    copy_tree(run, tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "copy")]) == 0
    moved = tmp_path / "moved"
    (start / "data").rename(moved)
    assert main(["train", "--resume", str(run), f"data.root={moved}"]) == 0
    assert RunDir(run).summary()["steps"] == RunDir(tmp_path / "copy").summary()["steps"] == 10
    assert list(elsewhere.iterdir()) == []


def test_a_deleted_metrics_file_is_named_on_resume(
    tmp_path: Path, relative_partial_run, capsys
) -> None:
    """issue 18, item 7: the rows a deleted metrics.jsonl held are lost; the resume says so in one
    warning naming the file and the passes, instead of going on silently."""
    run = tmp_path / "run"
    copy_tree(relative_partial_run, run)
    (run / RunDir.METRICS).unlink()
    assert main(["train", "--resume", str(run), "train.progress=false"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert str(run / RunDir.METRICS) in warnings[0] and "pass 0" in warnings[0], warnings
    assert [row["epoch"] for row in RunDir(run).metrics()] == [1]


def test_the_printed_resume_command_is_quoted_for_a_shell(tmp_path: Path, capsys) -> None:
    """issue 18, item 13: a run directory whose path holds a space printed an unquoted command."""
    out = tmp_path / "my run's dir"
    assert train(config(out, "train.stop_at_step=5"))["status"] == "stopped"
    said = capsys.readouterr().err.split("Resume: ", 1)[1].strip()
    assert shlex.split(said) == ["regrow", "train", "--resume", str(out)]
    resumed = regrow_train(*shlex.split(said)[2:])  # the command as printed
    assert resumed.returncode == 0, resumed.stderr
