"""The run configuration: typed dataclasses, YAML presets, dotted command-line overrides.

``load_config("cifar10_wrn22_2", ["sparsity.method=set", "seed=2"])`` starts from the dataclass
defaults, merges the preset (``src/regrow/configs/<name>.yaml``, shipped inside the package so an
installed ``regrow`` finds it) and then the overrides. OmegaConf checks keys and types against the
dataclasses; :func:`validate` checks values (ranges, names) and says what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..sparsity.distributions import DISTRIBUTIONS


class ConfigError(ValueError):
    """A bad preset, key or value: the message names it and the allowed values."""


def described(default: Any, help: str) -> Any:
    """A config field and its one-line description (``regrow train --print-config`` shows it
    beside the value; :func:`descriptions` collects them). A list or dict field uses
    ``field(default_factory=..., metadata={"help": ...})`` directly."""
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = described("cifar10", "cifar10 | cifar100 | digits")
    root: str = described("data", "folder holding cifar-10-batches-py/ or cifar-100-python/")
    download: bool = described(False, "fetch the official archive (checksum verified) if missing")
    validation_size: int = described(0, "training images held out for validation (report: 5,000)")
    limit_train: int | None = described(None, "use only the first N training images")
    augment: bool = described(True, "random crop (4-pixel reflect pad) + horizontal flip")


@dataclass
class ModelConfig:
    name: str = described("wrn22_2", "a registered model (see regrow.models.MODELS)")
    width: float = described(1.0, "channel multiplier (Small-Dense variants)")


@dataclass
class TrainConfig:
    epochs: int = described(250, "epochs of the 1x run")
    multiplier: float = described(
        1.0, "×M: longer runs scale epochs (and so every step-based schedule)"
    )
    batch_size: int = described(128, "samples per optimizer step, over all processes")
    lr: float = described(0.1, "peak SGD learning rate")
    momentum: float = described(0.9, "SGD momentum")
    nesterov: bool = described(True, "Nesterov momentum")
    weight_decay: float = described(5e-4, "on weights only (not biases, not normalisation)")
    lr_milestones: list[float] = field(
        default_factory=lambda: [0.3072, 0.6144, 0.9216],
        metadata={
            "help": "learning-rate milestones as fractions of the optimizer steps "
            "(SPEC §8: 30k/60k/90k of 97,656)"
        },
    )
    lr_gamma: float = described(0.2, "learning-rate factor at each milestone")
    warmup_epochs: float = described(0.0, "linear learning-rate warm-up from 0")
    label_smoothing: float = described(0.0, "label smoothing of the cross-entropy loss")
    bf16: bool = described(False, "bfloat16 autocast for forward/backward")
    channels_last: bool = described(False, "channels-last memory format for the model")
    device: str = described("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    eval_every: int = described(10, "epochs between evaluations (and always at the end)")
    checkpoint_every: int = described(1, "epochs between checkpoints (and on SIGINT/SIGTERM)")
    stop_at_step: int | None = described(
        None, "checkpoint and stop at this optimizer step (resume later)"
    )
    progress: bool = described(True, "tqdm bars (only when stderr is a terminal)")
    tensorboard: bool = described(False, "log to out_dir/tensorboard when tensorboard is installed")


@dataclass
class SparsityConfig:
    """Keys every method shares; a method's own arguments go under ``args``."""

    method: str = described(
        "rigl",
        "a registered method (dense, static, set, snfs, rigl, snip, pruning, small_dense) or "
        "package.module:ClassName of your own",
    )
    sparsity: float = described(0.8, "fraction of zero weights over the sparse layers")
    distribution: str = described(
        "erk", "uniform | er | erk: how the sparsity is split over layers"
    )
    dense_layers: list[str] | None = field(
        default=None,
        metadata={"help": "kept dense (names or globs); null: the first layer; []: none"},
    )
    power: float = described(1.0, "ERK exponent (0 is uniform)")
    custom_densities: dict[str, float] = field(
        default_factory=dict, metadata={"help": "name → fixed density, outside the budget"}
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the method's own arguments, e.g. args.delta_t=500"},
    )

    def method_class(self) -> type:
        from ..sparsity import get_method

        return get_method(self.method)

    def method_args(self) -> Any:
        """The method's resolved arguments (its ``Args`` dataclass, defaults filled in)."""
        cls = self.method_class()
        return cls.Args.from_mapping(self.args, cls.name)

    def plan_keys(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`AllocationPlan.build` and of every sparsifier."""
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "power": self.power,
            "dense_layers": self.dense_layers,
            "custom_densities": dict(self.custom_densities) or None,
        }


@dataclass
class RunConfig:
    seed: int = described(0, "seeds data order, initialisation and every mask decision")
    out_dir: str = described(MISSING, "the run directory")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)


def descriptions(node: Any = None, prefix: str = "") -> dict[str, str]:
    """Each config key's one-line description by dotted name (``"train.lr"``), in order."""
    node = RunConfig(out_dir="") if node is None else node
    found: dict[str, str] = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            found.update(descriptions(value, f"{prefix}{f.name}."))
        else:
            found[f"{prefix}{f.name}"] = f.metadata.get("help", "")
    return found


def presets() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("regrow") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _preset_text(preset: str) -> str:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.read_text()
    folder = resources.files("regrow") / "configs"
    candidate = folder / f"{preset}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"preset {preset!r} is unknown: allowed values are {', '.join(presets())} "
            "(or the path of a .yaml file)."
        )
    return candidate.read_text()


def _known_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys += _known_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the preset, then ``key=value`` overrides; validated."""
    base = OmegaConf.structured(RunConfig)
    try:
        layers = [base]
        if preset:
            layers.append(OmegaConf.create(_preset_text(preset)))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(
                    f"override {item!r} is not of the form key=value (e.g. sparsity.method=set)."
                )
            layers.append(OmegaConf.from_dotlist([item]))
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(
            f"config key {key!r}: {str(error).splitlines()[0]}. Known keys: "
            f"{', '.join(_known_keys(RunConfig(out_dir='')))}."
        ) from None
    if OmegaConf.is_missing(merged, "out_dir"):
        raise ConfigError("out_dir is not set: give the run directory, e.g. out_dir=runs/rigl_s0.")
    config = OmegaConf.to_object(merged)
    assert isinstance(config, RunConfig)
    validate(config)
    return config


INT_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
#: Value checks the types cannot make: key → (predicate, allowed values). ``None`` always passes.
RANGES: dict[str, tuple[Any, str]] = {
    "sparsity.sparsity": (lambda v: 0 <= v < 1, "0 <= x < 1"),
    "train.epochs": INT_AT_LEAST_1,
    "train.multiplier": (lambda v: v > 0, "x > 0"),
    "train.batch_size": INT_AT_LEAST_1,
    "train.lr": (lambda v: v > 0, "x > 0"),
    "train.eval_every": INT_AT_LEAST_1,
    "train.checkpoint_every": INT_AT_LEAST_1,
    "train.stop_at_step": INT_AT_LEAST_1,
    "train.label_smoothing": (lambda v: 0 <= v < 1, "0 <= x < 1"),
    "train.lr_milestones": (lambda v: all(0 < m < 1 for m in v), "fractions of the run in (0, 1)"),
    "data.validation_size": (lambda v: v >= 0, "an integer >= 0"),
    "data.limit_train": INT_AT_LEAST_1,
}


def _get(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(config: RunConfig) -> None:
    """Check values the types cannot: names against the registries, ranges."""
    from ..data import DATASETS
    from ..models import MODELS

    names = {
        "data.name": sorted(DATASETS),
        "model.name": sorted(MODELS),
        "sparsity.distribution": DISTRIBUTIONS,
    }
    for key, allowed in names.items():
        if _get(config, key) not in allowed:
            raise ConfigError(
                f"{key}={_get(config, key)!r} is not allowed: allowed values are "
                f"{', '.join(map(str, allowed))}."
            )
    for key, (ok, allowed) in RANGES.items():
        value = _get(config, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range: allowed values are {allowed}.")
    try:
        cls = config.sparsity.method_class()
    except ValueError as error:
        raise ConfigError(f"sparsity.{error}") from None
    try:
        cls.Args.from_mapping(config.sparsity.args, cls.name)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"sparsity.args: {error}") from None
    for name, density in config.sparsity.custom_densities.items():
        if not 0 <= density <= 1:
            raise ConfigError(
                f"sparsity.custom_densities.{name}={density!r} is out of range: allowed values "
                "are 0 <= x <= 1."
            )


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
