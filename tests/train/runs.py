"""Shared by the run-level tests in tests/train: short digits runs from the quickstart preset and
the tools for looking at what a run wrote (its files, its one stderr line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from regrow.train import load_config
from tests.helpers import own_args

QUICK = ["train.epochs=3", "train.eval_every=1"]


def digits_config(out_dir: Path, *overrides: str):
    """The quickstart preset, 3 epochs; mask updates every 10 steps for methods that have them."""
    method = next((o.split("=")[1] for o in overrides if o.startswith("sparsity.method=")), "rigl")
    update = [f"sparsity.args.{k}={v}" for k, v in own_args(method, delta_t=10).items()]
    return load_config("quickstart", [f"out_dir={out_dir}", *QUICK, *update, *overrides])


def tiny_cifar_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "model.width=0.25", "train.batch_size=16", "train.eval_every=1"]


#: 2 passes of 44 optimizer steps: static masks, so no pass is spilled into.
SHORT = ["sparsity.method=static", "train.epochs=2"]


def config(out_dir: Path | str, *overrides: str):
    return load_config("quickstart", [f"out_dir={out_dir}", *SHORT, *overrides])


def regrow_train(*args: str, cwd: Path | None = None, **options) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "regrow", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=cwd, **options)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file below ``directory``: its bytes, modification time and mode."""
    return {
        str(path.relative_to(directory)): (
            path.read_bytes(),
            path.stat().st_mtime_ns,
            path.stat().st_mode,
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def copy_tree(source: Path, target: Path) -> None:
    """``cp -a``, as a user copies a run directory."""
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("regrow train: error: ") and "Traceback" not in stderr, stderr
    return lines[0]
