"""Provenance (what ran where), the metrics log with its optional TensorBoard mirror, and progress
on stderr (a tqdm bar on a terminal, plain lines in a log file)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm import tqdm

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


#: Seconds between plain progress lines within a pass (there is always one per pass).
PLAIN_EVERY = 300.0


def clock(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS``."""
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


class Progress:
    """Progress of a run on ``stream`` (stderr). On a terminal, a tqdm bar with the loss; otherwise
    (output redirected: nohup, a cluster job's log) one plain line per pass over the data and at
    least one every :data:`PLAIN_EVERY` seconds, checked only at the loop's periodic loss check
    (no extra host synchronisation)::

        regrow: rigl_s0 epoch 3 step 176/1320 loss 0.4127 lr 0.05 elapsed 0:00:09 left 0:00:58

    ``elapsed`` is the run's training time over all its sessions; ``left`` extrapolates this
    session's speed over the steps to go."""

    def __init__(
        self, name: str, total: int, initial: int, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        terminal = self.stream.isatty()
        self.name, self.total, self.first_step = name, total, initial
        self.plain = enabled and not terminal
        self.bar = tqdm(
            total=total, initial=initial, desc=name, unit="step", file=self.stream,
            disable=not (enabled and terminal), dynamic_ncols=True,
        )  # fmt: skip
        self.started = self.last_line = time.perf_counter()

    def advance(self) -> None:
        """One optimizer step."""
        self.bar.update(1)

    def periodic(self, epoch: int, step: int, loss: float, lr: float, elapsed: float) -> None:
        """At the loop's loss check: the bar's loss; a plain line if the last is too old."""
        self.bar.set_postfix(loss=f"{loss:.3f}")
        if self.plain and time.perf_counter() - self.last_line >= PLAIN_EVERY:
            self.line(epoch, step, loss, lr, elapsed)

    def end_of_pass(self, epoch: int, step: int, loss: float, lr: float, elapsed: float) -> None:
        if self.plain:
            self.line(epoch, step, loss, lr, elapsed)

    def line(self, epoch: int, step: int, loss: float, lr: float, elapsed: float) -> None:
        now = time.perf_counter()
        done = step - self.first_step
        left = clock((self.total - step) * (now - self.started) / done) if done > 0 else "?"
        print(
            f"regrow: {self.name} epoch {epoch} step {step}/{self.total} loss {loss:.4f} "
            f"lr {lr:.4g} elapsed {clock(elapsed)} left {left}",
            file=self.stream,
            flush=True,
        )
        self.last_line = now

    def close(self) -> None:
        self.bar.close()
