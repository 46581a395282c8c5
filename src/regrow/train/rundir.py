"""The run directory: the one place that knows its file names, its state and what "the same run"
means.

A run directory holds:

=====================  ==========================================================================
``config.yaml``        the run's configuration, written once when the run starts
``provenance.jsonl``   one JSON row per start and per resume (``"event": "start" | "resume"``,
                       the time, the step, package/git/torch/device versions); only appended
``metrics.jsonl``      one JSON row per pass over the training data (below); a resume cuts it
                       back, atomically, to the rows its checkpoint had seen
``checkpoint.pt``      everything a resume needs (atomic; see :mod:`regrow.train.checkpoint`)
``summary.json``       the finished run: every value that defines it and its results (below)
``failed.json``        why the run stopped with an error (a non-finite loss or another exception);
                       cleared by a later start or resume
``tensorboard/``       a mirror of the metrics when ``train.tensorboard`` is set
=====================  ==========================================================================

:meth:`RunDir.state` is ``new`` (nothing to continue), ``partial`` (a checkpoint, no finished
summary), ``done`` (``summary.json`` with ``"status": "finished"``) or ``failed``
(``failed.json``, with or without a checkpoint to resume from).

Metric names (one meaning each, in ``metrics.jsonl`` and ``summary.json`` alike)
-------------------------------------------------------------------------------

``epoch``
    the index of the pass over the training data (0-based). RigL's and SNIP's update batches make
    no optimizer step, so a run of E epochs of optimizer steps may spill into pass E.
``step``
    optimizer steps taken so far (``steps`` in the summary: at the end).
``train_loss``, ``train_accuracy``
    mean loss and accuracy (%) over the samples of this pass, over every process.
``val_loss``, ``val_accuracy``, ``test_loss``, ``test_accuracy``
    one pass over that split, in rows where the run evaluated (every ``train.eval_every`` passes
    and at the end); the summary holds the last evaluation.
``lr``
    the learning rate after the pass's last step.
``density``
    the fraction of active weights over the sparse layers (``sparsity`` in the summary is
    ``1 - density`` at the end; ``target_sparsity`` is the configured one).
``train_flops``
    training FLOPs spent so far, over every sample of every process (SPEC §7: ``3 f_S`` per sample,
    ``2 f_S + f_D`` when the backward pass computes the dense weight gradient).
``train_flops_ratio``
    ``train_flops`` ÷ the dense training FLOPs of the whole 1× run: ``3 f_D`` per sample × the
    samples of ``train.epochs`` epochs, ``f_D`` the forward FLOPs of the full-width dense model.
    It grows during the run; at the end it is 1 for Dense and ≈M for a run ×M, as in
    ``regrow flops``. (:attr:`TrainingFlopsCounter.ratio`, over dense training of the samples
    seen so far, is a different quantity and is not logged.)
``inference_flops``, ``inference_flops_ratio`` (summary only)
    forward FLOPs of one sample with the final masks, and that ÷ ``f_D``.
``seconds`` (``wall_seconds`` in the summary)
    wall-clock seconds of training so far, summed over the run's sessions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    write_json,
    write_text,
)
from .config import RunConfig, to_yaml

NEW, PARTIAL, DONE, FAILED = "new", "partial", "done", "failed"

#: Keys a resumed run may change: how the same run is laid out on hardware, not what it computes
#: (with train.batch_size × processes kept equal, which the loop checks).
RESUME_OVERRIDABLE = ("train.batch_size", "train.device", "train.progress", "train.tensorboard")


def _as_dict(config: RunConfig | str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    text = config if isinstance(config, str) else to_yaml(config)
    parsed = OmegaConf.to_container(OmegaConf.create(text))
    assert isinstance(parsed, dict)
    return parsed


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def differing_keys(saved: RunConfig | str, given: RunConfig | str) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (saved value, given value) for every key that differs between two configs,
    the keys of :data:`RESUME_OVERRIDABLE` left out (``None`` for a key one of them lacks)."""
    a, b = _flatten(_as_dict(saved)), _flatten(_as_dict(given))
    keys = sorted((a.keys() | b.keys()) - set(RESUME_OVERRIDABLE))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k, ...) != b.get(k, ...)}


class RunDir:
    """One run directory (see the module docstring). Nothing here trains; the loop calls it."""

    CONFIG = "config.yaml"
    PROVENANCE = "provenance.jsonl"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SUMMARY = "summary.json"
    FAILURE = "failed.json"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / self.CONFIG)
    provenance_path = property(lambda self: self.path / self.PROVENANCE)
    metrics_path = property(lambda self: self.path / self.METRICS)
    checkpoint_path = property(lambda self: self.path / self.CHECKPOINT)
    summary_path = property(lambda self: self.path / self.SUMMARY)
    failure_path = property(lambda self: self.path / self.FAILURE)
    tensorboard_path = property(lambda self: self.path / self.TENSORBOARD)

    # ----------------------------------------------------------------------------- reading
    def state(self) -> str:
        """``new``, ``partial``, ``done`` or ``failed`` (see the module docstring)."""
        summary = self.summary()
        if summary is not None and summary.get("status") == "finished":
            return DONE
        if self.failure_path.is_file():
            return FAILED
        return PARTIAL if self.has_checkpoint() else NEW

    def has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from (``partial``, ``done``, some ``failed``)."""
        return self.checkpoint_path.is_file()

    def is_finished(self, config: RunConfig | str) -> bool:
        """``done``, and by exactly ``config`` (as saved in ``config.yaml``)."""
        if self.state() != DONE or not self.config_path.is_file():
            return False
        return _as_dict(self.config_path.read_text()) == _as_dict(config)

    def config_file(self) -> Path:
        """The path of ``config.yaml``; :class:`FileNotFoundError` if this is no run directory."""
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.config_path} is missing: {self.path} is not a run directory."
            )
        return self.config_path

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``, or ``None`` if the run has none."""
        if not self.summary_path.is_file():
            return None
        return json.loads(self.summary_path.read_text())

    def failure(self) -> dict[str, Any] | None:
        """``failed.json``, or ``None`` if the run has not failed."""
        if not self.failure_path.is_file():
            return None
        return json.loads(self.failure_path.read_text())

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``, in order."""
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def provenance(self) -> list[dict[str, Any]]:
        """The rows of ``provenance.jsonl``: one per start and resume, oldest first."""
        if not self.provenance_path.is_file():
            return []
        lines = self.provenance_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # ------------------------------------------------------------------- starting, resuming
    def check_can_start(self) -> None:
        """Raise :class:`CheckpointError` if starting afresh here would overwrite a run."""
        if self.has_checkpoint() or self.state() == DONE:
            raise CheckpointError(
                f"{self.path} already holds a run ({self.state()}): continue it with "
                f"`regrow train --resume {self.path}`, or choose another out_dir."
            )

    def check_same_run(self, saved: RunConfig | str, given: RunConfig | str, source: Path) -> None:
        """Raise :class:`CheckpointError` naming the keys in which ``given`` differs from the
        ``saved`` config of ``source`` (the keys of :data:`RESUME_OVERRIDABLE` may differ)."""
        differ = differing_keys(saved, given)
        if differ:
            listed = "; ".join(f"{k}: {a!r} saved, {b!r} now" for k, (a, b) in differ.items())
            raise CheckpointError(
                f"{source} was written with a different configuration than {self.config_path} "
                f"({listed}): refusing to mix runs. Resume with the original config.yaml "
                f"(only {', '.join(RESUME_OVERRIDABLE)} may change), or start a new run directory."
            )

    def load_checkpoint(self, config: RunConfig | str) -> dict[str, Any]:
        """The checkpoint, after checking it was written by this run's configuration."""
        state = load_checkpoint(self.checkpoint_path)
        self.check_same_run(state["config"], config, self.checkpoint_path)
        return state

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``checkpoint.pt`` atomically; returns its path."""
        save_checkpoint(self.checkpoint_path, state)
        return self.checkpoint_path

    def begin(
        self, config: RunConfig | str, info: dict[str, Any], resume: bool, epoch: int, step: int
    ) -> None:
        """Record a start (write ``config.yaml``, empty the metrics) or a resume (cut the metrics
        back to the passes before ``epoch``); clear an earlier failure; append a provenance row."""
        if resume:
            self.truncate_metrics(epoch)
        else:
            write_text(self.config_path, config if isinstance(config, str) else to_yaml(config))
            self.truncate_metrics(0)
            self.summary_path.unlink(missing_ok=True)
        self.failure_path.unlink(missing_ok=True)
        event = {"event": "resume" if resume else "start", "time": _now(), "step": step}
        self._append(self.provenance_path, {**event, **info})

    # ------------------------------------------------------------------------ while running
    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl``."""
        self._append(self.metrics_path, row)

    def truncate_metrics(self, epoch: int) -> None:
        """Keep only the rows of passes before ``epoch`` (atomically: temporary file, fsync,
        rename), so a resume that repeats later passes does not log them twice."""
        rows = [row for row in self.metrics() if row["epoch"] < epoch]
        if rows or self.metrics_path.exists():
            text = "".join(json.dumps(row) + "\n" for row in rows)
            atomic_write(self.metrics_path, lambda handle: handle.write(text.encode()))

    def record_failure(self, error: BaseException, **where: Any) -> None:
        """Write ``failed.json``: the error's type and message, and ``where`` (step, epoch)."""
        reason = {"error": type(error).__name__, "reason": str(error), "time": _now()}
        write_json(self.failure_path, {**reason, **where})

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    @staticmethod
    def _append(path: Path, row: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
