"""The harness: typed config, one flat training loop, checkpoints and run directories."""

from .checkpoint import CheckpointError
from .config import ConfigError, RunConfig, load_config, presets
from .loop import NonFiniteLossError, train
from .rundir import RunDir, RunDirError, RunLockedError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "NonFiniteLossError",
    "RunConfig",
    "RunDir",
    "RunDirError",
    "RunLockedError",
    "load_config",
    "presets",
    "train",
]
