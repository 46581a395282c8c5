"""Checkpoints and run-directory files, written atomically: a crash leaves the old file or the new
one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"

#: Keys a resumed run may change: how the same run is laid out on hardware, not what it computes
#: (with train.batch_size × processes kept equal, which the loop checks).
RESUME_OVERRIDABLE = ("train.batch_size", "train.device", "train.progress", "train.tensorboard")


def _comparable(config_yaml: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.create(config_yaml))
    assert isinstance(config, dict)
    for key in RESUME_OVERRIDABLE:
        section, name = key.split(".")
        config.get(section, {}).pop(name, None)
    return config


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or from a different run."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush to disk, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / CHECKPOINT
    atomic_write(path, lambda handle: torch.save(state, handle))
    return path


def load_checkpoint(run_dir: Path, config_yaml: str) -> dict[str, Any]:
    """The checkpoint of ``run_dir``; :class:`CheckpointError` if it is missing, unreadable or was
    written by a run with a different configuration."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: nothing to resume. Start the run without --resume."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}). "
            "Nothing was changed; restore it from a copy, or delete it to start the run over."
        ) from None
    expected = {"config", "model", "optimizer", "scheduler", "sparsifier", "position", "rng"}
    if not isinstance(state, dict) or not expected <= set(state):
        raise CheckpointError(
            f"checkpoint {path} is not a regrow training checkpoint (missing "
            f"{sorted(expected - set(state) if isinstance(state, dict) else expected)})."
        )
    if _comparable(state["config"]) != _comparable(config_yaml):
        raise CheckpointError(
            f"checkpoint {path} was written with a different configuration than "
            f"{run_dir / 'config.yaml'}: refusing to mix runs. Resume with the original "
            "config.yaml, or start a new run directory."
        )
    return state
