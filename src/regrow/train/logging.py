"""Provenance (what ran where) and the metrics log with its optional TensorBoard mirror."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__

if TYPE_CHECKING:
    from .rundir import RunDir


def git_revision() -> str | None:
    """The commit of the regrow checkout in use (``+dirty`` if modified), or ``None``."""
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if revision.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return revision.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """Package, git, Python, torch and CUDA versions, the device and host, the process count."""
    return {
        "world_size": world_size,
        "regrow_version": __version__,
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": sys.version.split()[0],
        "device": str(device),
        "device_name": device_name(device),
        "hostname": platform.node(),
    }


class MetricsLog:
    """Rows of ``metrics.jsonl`` (through the :class:`~regrow.train.rundir.RunDir`), mirrored to
    TensorBoard when asked for and installed."""

    def __init__(self, run_dir: RunDir, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print(
                    "regrow: tensorboard is not installed; logging to metrics.jsonl only",
                    file=sys.stderr,
                )
            else:
                self.writer = SummaryWriter(str(run_dir.tensorboard_path))

    def write(self, row: dict[str, Any]) -> None:
        self.run_dir.append_metrics(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()
