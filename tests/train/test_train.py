"""The harness: the training loop end to end, checkpoints, failures, quickstart (the config is
test_config.py, resuming test_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regrow.cli import main
from regrow.train import (
    CheckpointError,
    NonFiniteLossError,
    RunDir,
    train,
)
from regrow.train.optim import lr_factor
from tests.train.runs import digits_config, tiny_cifar_overrides

# ------------------------------------------------------------------------- learning rate


def test_lr_schedule_warmup_and_milestones() -> None:
    assert lr_factor(0, 1000, 10, [0.5], 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 1000, 10, [0.5], 0.1) == pytest.approx(1.0)
    assert lr_factor(499, 1000, 0, [0.5, 0.75], 0.2) == 1.0
    assert lr_factor(500, 1000, 0, [0.5, 0.75], 0.2) == pytest.approx(0.2)
    assert lr_factor(750, 1000, 0, [0.5, 0.75], 0.2) == pytest.approx(0.04)


# ------------------------------------------------------------------------------- end to end
def test_two_epoch_cifar_run_through_the_cli_in_a_subprocess(
    cifar_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "regrow",
        "train",
        "--preset",
        "cifar10_wrn22_2",
        "train.epochs=2",
        "sparsity.args.delta_t=3",  # 10 steps: updates at 0, 3, 6 (T_end 7)
        *tiny_cifar_overrides(cifar_root),
        f"out_dir={out}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "test_accuracy",
        "inference_flops_ratio",
        "train_flops_ratio",
        "sparsity",
        "wall_seconds",
        "seed",
        "method",
        "distribution",
        "torch_version",
        "device_name",
    ):
        assert key in summary
    assert summary["method"] == "rigl" and summary["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert 0.0 < summary["inference_flops_ratio"] < 1.0
    rows = RunDir(out).metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # RigL's update batches spill into a 3rd pass
    assert rows[-1]["step"] == 10 and "test_accuracy" in rows[-1]
    assert (out / "config.yaml").is_file()
    assert [row["event"] for row in RunDir(out).provenance()] == ["start"]
    assert json.loads(result.stdout)["method"] == "rigl"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = digits_config(
        tmp_path, "train.lr=1e12", "train.checkpoint_every=1", "sparsity.method=dense"
    )
    with pytest.raises(NonFiniteLossError, match="training loss became") as error:
        train(config)
    assert "no checkpoint was written yet" in str(error.value) or "is kept" in str(error.value)
    assert not (tmp_path / "summary.json").exists()


def test_non_finite_after_a_good_epoch_keeps_that_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import regrow.train.loop as loop

    config = digits_config(tmp_path, "sparsity.method=static", "train.checkpoint_every=1")
    original = loop.nn.CrossEntropyLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if calls["n"] > 60 else loss  # epoch 0 is 44 batches

    monkeypatch.setattr(loop.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="is kept"):
        train(config)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["position"] == {**state["position"], "epoch": 1, "batch": 0}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    config = digits_config(tmp_path, "train.epochs=1")
    train(config)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(config)
    other = digits_config(tmp_path, "train.epochs=1", "seed=9")
    with pytest.raises(CheckpointError, match="different configuration") as error:
        train(other, resume=True)  # a finished run: checked against its config.yaml
    assert "seed: 0 saved, 9 now" in str(error.value)
    # A partial run's checkpoint: the same check against the checkpoint's config, then corrupt.
    partial = digits_config(tmp_path / "partial", "train.epochs=1", "train.stop_at_step=20")
    train(partial)
    other = digits_config(tmp_path / "partial", "train.epochs=1", "train.stop_at_step=20", "seed=9")
    with pytest.raises(CheckpointError, match="different configuration") as error:
        train(other, resume=True)
    assert "seed: 0 saved, 9 now" in str(error.value) and "checkpoint.pt" in str(error.value)
    (tmp_path / "partial" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        train(partial, resume=True)
    assert main(["train", "--resume", str(tmp_path / "partial")]) == 2


def test_quickstart_runs_its_study_and_prints_its_table_and_plot(tmp_path: Path, capsys) -> None:
    """The shipped quickstart study through the sweep (one seed, 4 epochs: RigL's first update
    at step 50 needs a window), its table in the study's order, the figure; run again, it trains
    nothing."""
    argv = ["quickstart", "--out-dir", str(tmp_path), "--seeds", "1", "train.epochs=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["dense", "static", "set", "rigl", "rigl_step0_only"]
    assert "1/1" in out and "± " in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (tmp_path / "report" / "accuracy_by_cell.png").read_bytes()[:4] == b"\x89PNG"
    assert f"plot: {tmp_path / 'report' / 'accuracy_by_cell.png'}" in out
    cells = {cell["group"]["tag"]: cell for cell in report["cells"]}
    assert cells["dense"]["metrics"]["train_flops_ratio"]["mean"] == pytest.approx(1.0)
    assert cells["rigl"]["metrics"]["inference_flops_ratio"]["mean"] < 0.1
    assert [row["step"] for row in RunDir(tmp_path / "rigl_step0_only_s0").mask_updates()] == [0]
    assert RunDir(tmp_path / "rigl_s0").mask_updates()[0]["step"] == 50
    stamp = os.path.getmtime(tmp_path / "rigl_s0" / "summary.json")
    assert main(argv) == 0
    assert "(5 done, 0 to run)" in capsys.readouterr().err
    assert os.path.getmtime(tmp_path / "rigl_s0" / "summary.json") == stamp
