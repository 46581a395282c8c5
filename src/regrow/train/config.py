"""The run configuration: typed dataclasses, YAML presets, dotted command-line overrides.

``load_config("cifar10_wrn22_2", ["sparsity.method=set", "seed=2"])`` starts from the dataclass
defaults, merges the preset (``src/regrow/train/presets/<name>.yaml``, shipped inside the package so an
installed ``regrow`` finds it) and then the overrides. OmegaConf checks keys and types against the
dataclasses (:mod:`.config_errors` words its errors); :func:`validate` checks values (ranges,
names) and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data import DATASETS
from ..models import MODELS
from ..sparsity import METHODS, Sparsifier, get_method
from ..sparsity.base import sparse_start_methods
from ..sparsity.distributions import DISTRIBUTIONS
from ..sparsity.initialization import INITS
from ..sparsity.structure import parse_structure
from ..util.yamlfile import package_folder, read_named, shipped_names, yaml_problem
from .config_errors import (
    ConfigError,
    Source,
    check_layer,
    field_types,
    in_override,
    in_preset,
    type_error,
)

#: The presets shipped with the package (``regrow train --preset NAME``).
PRESETS = package_folder("regrow.train", "presets")


def described(default: Any, help: str) -> Any:
    """A config field and its one-line description (``regrow train --print-config`` shows it
    beside the value; :func:`descriptions` collects them). A list or dict field uses
    ``field(default_factory=..., metadata={"help": ...})`` directly."""
    return field(default=default, metadata={"help": help})


#: What ``train.compile_mode`` may be (``auto`` and torch.compile's own modes).
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: What ``train.sgd_implementation`` may be (``auto`` and the implementations torch.optim.SGD and
#: torch.optim.AdamW share; the key names either optimizer's, whichever ``train.optimizer`` is).
SGD_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")
#: What ``train.optimizer`` may be.
OPTIMIZERS = ("sgd", "adamw")
#: What ``train.lr_schedule`` may be: steps at milestones, or a cosine decay (both after warm-up).
LR_SCHEDULES = ("step", "cosine")


def _choices(names: Any) -> str:
    return " | ".join(names)


@dataclass
class DataConfig:
    name: str = described("cifar10", _choices(DATASETS))
    root: str = described("data", "folder holding cifar-10-batches-py/ or cifar-100-python/")
    download: bool = described(False, "fetch the official archive (checksum verified) if missing")
    validation_size: int = described(0, "training images held out for validation (report: 5,000)")
    limit_train: int | None = described(None, "use only the first N training images")
    augment: bool = described(True, "random crop (4-pixel reflect pad) + horizontal flip")
    path: str | None = described(
        None, "text: a UTF-8 file (null: the standard library's pydoc_data.topics)"
    )
    block_size: int = described(256, "text: characters per training window (the context)")


@dataclass
class ModelConfig:
    name: str = described("wrn22_2", f"a registered model: {_choices(MODELS)}")
    width: float = described(1.0, "channel multiplier (Small-Dense variants)")


@dataclass
class TrainConfig:
    epochs: int = described(250, "epochs of the 1x run")
    multiplier: float = described(
        1.0, "×M: longer runs scale epochs (and so every step-based schedule)"
    )
    batch_size: int = described(128, "samples per optimizer step, over all processes")
    optimizer: str = described(
        "sgd",
        "sgd | adamw (torch.optim.AdamW: decoupled weight decay on every weight with ndim > 1, "
        "embeddings included, none on biases and norms; ignores momentum and nesterov)",
    )
    lr: float = described(0.1, "peak learning rate")
    momentum: float = described(0.9, "SGD momentum (sgd only)")
    nesterov: bool = described(True, "Nesterov momentum (sgd only)")
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.95],
        metadata={"help": "AdamW's [beta1, beta2] (adamw only; PyTorch's default is [0.9, 0.999])"},
    )
    eps: float = described(
        1e-8, "AdamW's epsilon, added to the root of the second moment (adamw only)"
    )
    weight_decay: float = described(
        5e-4, "on weights only (ndim > 1: not biases, not normalisation); adamw: decoupled"
    )
    grad_clip: float | None = described(
        None, "clip the global gradient norm to this before each optimizer step (null: never)"
    )
    lr_schedule: str = described(
        "step",
        "step (×lr_gamma at each of lr_milestones) | cosine (from lr to lr × min_lr_ratio at the "
        "last step); both after the linear warm-up",
    )
    lr_milestones: list[float] = field(
        default_factory=lambda: [0.3072, 0.6144, 0.9216],
        metadata={
            "help": "learning-rate milestones as fractions of the optimizer steps "
            "(lr_schedule=step; the paper: 30k/60k/90k of 97,656; docs/SPEC.md §8)"
        },
    )
    lr_gamma: float = described(0.2, "learning-rate factor at each milestone (lr_schedule=step)")
    min_lr_ratio: float = described(
        0.1, "the last step's learning rate ÷ train.lr (lr_schedule=cosine)"
    )
    warmup_epochs: float = described(0.0, "linear learning-rate warm-up from 0")
    label_smoothing: float = described(0.0, "label smoothing of the cross-entropy loss")
    bf16: bool | None = described(
        None, "bfloat16 autocast for forward/backward (null: on CUDA yes, on the CPU no)"
    )
    channels_last: bool | None = described(
        None, "channels-last memory format for the model (null: on CUDA yes, on the CPU no)"
    )
    compile: bool = described(
        False, "the non-update step as one torch.compile'd function (mask updates stay eager)"
    )
    compile_mode: str = described(
        "auto",
        "torch.compile mode: auto (reduce-overhead, i.e. CUDA graphs, on CUDA; default on the "
        f"CPU) | {_choices(COMPILE_MODES[1:])}",
    )
    sgd_implementation: str = described(
        "auto",
        "the optimizer's kernels (SGD's or AdamW's): auto (fused on CUDA, foreach on the CPU) | "
        f"{_choices(SGD_IMPLEMENTATIONS[1:])}",
    )
    cudnn_benchmark: bool | None = described(
        None, "let cuDNN pick the fastest convolution algorithms (null: yes on CUDA)"
    )
    device: str = described("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    eval_every: int = described(10, "epochs between evaluations (and always at the end)")
    checkpoint_every: int = described(1, "epochs between checkpoints (and on SIGINT/SIGTERM)")
    stop_at_step: int | None = described(
        None, "checkpoint and stop at this optimizer step (resume later)"
    )
    progress: bool = described(
        True, "a tqdm bar on a terminal, else a plain line on stderr per epoch (and every 5 min)"
    )
    tensorboard: bool = described(False, "log to out_dir/tensorboard when tensorboard is installed")


@dataclass
class SparsityConfig:
    """Keys every method shares; a method's own arguments go under ``args``."""

    method: str = described(
        "rigl",
        f"a registered method ({', '.join(METHODS)}) or package.module:ClassName of your own",
    )
    sparsity: float = described(0.8, "fraction of zero weights over the sparse layers")
    distribution: str = described(
        "erk", f"{_choices(DISTRIBUTIONS)}: how the sparsity is split over layers"
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
    init: str = described(
        "dense",
        f"{_choices(INITS)}: the model's initial weights, or each neuron's rescaled to the "
        "variance of its sparse fan-in once the first masks are chosen",
    )
    structure: str = described(
        "unstructured",
        "unstructured | N:M (e.g. 2:4) | kernel | block:B: the masks' structure (docs/SPEC.md §19)",
    )
    init_masks: str | None = described(
        None, "start from the masks of this run directory's checkpoint (null: the method's own)"
    )
    init_masks_mode: str = described(
        "exact",
        f"{_choices(Sparsifier.START_MODES)}: the masks as saved, or each layer's permuted",
    )
    rewind: bool = described(
        False, "with init_masks: the source run's initial weights (same seed, model, data)"
    )

    def method_class(self) -> type:

        return get_method(self.method)

    def method_args(self) -> Any:
        """The method's resolved arguments (its ``Args`` dataclass, defaults filled in)."""
        cls = self.method_class()
        return cls.Args.from_mapping(self.args, cls.name)

    def model_width(self, build: Any, width: float) -> float:
        """The width the method trains ``build(width)`` at: ``width`` itself, or the one
        Small-Dense solves to match the sparse model's parameter count."""
        return self.method_class().model_width(build, width, self.method_args(), **self.plan_keys())

    def plan_keys(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`AllocationPlan.build` and of every sparsifier."""
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "power": self.power,
            "dense_layers": self.dense_layers,
            "custom_densities": dict(self.custom_densities) or None,
            "structure": self.structure,
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
    return shipped_names(PRESETS)


def _preset_text(preset: str) -> str:
    return read_named("preset", preset, PRESETS, ConfigError)[0]


def _preset_layer(preset: str) -> tuple[Any, Any]:
    """The preset as an OmegaConf mapping and its YAML node tree (for line numbers); a clear
    error if it is not YAML or not a mapping."""
    text = _preset_text(preset)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # syntax, and what the top level is
    except yaml.YAMLError as error:
        raise yaml_problem(f"preset {preset}", error, ConfigError) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else f"the value {root.value!r}"
        raise ConfigError(
            f"preset {preset} holds {kind} (line {root.start_mark.line + 1}), not a mapping of "
            "config keys: write one `key: value` per line, sections indented (train:, then "
            "`  epochs: 30`)."
        )
    try:
        layer = OmegaConf.create(text)  # OmegaConf's own YAML rules (1e-3 is a float)
    except yaml.YAMLError as error:  # what only its loader refuses (a duplicate key)
        raise yaml_problem(f"preset {preset}", error, ConfigError) from None
    return layer, root


#: Config keys that map layer names (``fc1.weight``, ``g0.b0.conv1.weight``) to values.
LAYER_NAME_MAPPINGS = ("sparsity.custom_densities",)


def _joined_layer_names(layer: Any) -> Any:
    """``layer`` with the layer names under :data:`LAYER_NAME_MAPPINGS` whole again: OmegaConf
    splits ``sparsity.custom_densities.fc1.weight=0.5`` at every dot into ``{fc1: {weight: 0.5}}``
    (and keeps the quotes of ``"fc1.weight"`` on its two halves); the nested names are joined
    with dots and a pair of surrounding quotes dropped, so all three spellings mean
    ``{"fc1.weight": 0.5}``."""
    tree = OmegaConf.to_container(layer, resolve=False)
    changed = False
    for key in LAYER_NAME_MAPPINGS:
        section, _, leaf = key.rpartition(".")
        parent = tree.get(section) if isinstance(tree, dict) else None
        names = parent.get(leaf) if isinstance(parent, dict) else None
        if isinstance(names, dict):
            joined = _join_names(names)
            changed = changed or joined != names
            parent[leaf] = joined
    return OmegaConf.create(tree) if changed else layer


def _join_names(node: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    joined: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            joined.update(_join_names(value, f"{name}."))
        else:
            quoted = len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'"
            joined[name[1:-1] if quoted else name] = value
    return joined


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the preset, then ``key=value`` overrides; validated.

    ``preset`` may list several, comma-separated, merged left to right: a base preset and recipes
    over it, e.g. ``quickstart,lottery``.
    """
    layers: list[tuple[Any, Source]] = []
    for name in (part.strip() for part in (preset or "").split(",") if part.strip()):
        layer, nodes = _preset_layer(name)
        layers.append((_joined_layer_names(layer), partial(in_preset, name, nodes)))
    for item in overrides or []:
        if not item.split("=", 1)[0].strip() or "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. sparsity.method=set)."
            )
        try:
            layers.append((_joined_layer_names(OmegaConf.from_dotlist([item])), in_override))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as error:
            reason = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(
                f"override {item!r} cannot be read: {reason or type(error).__name__}."
            ) from None
    merged = OmegaConf.structured(RunConfig)
    for layer, source in layers:
        check_layer(OmegaConf.to_container(layer, resolve=False), RunConfig, source)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise type_error(error, layer, source, RunConfig, RANGES) from None
    # A missing out_dir is named after the other values are checked (a preset names none: each
    # run needs a directory of its own).
    no_out_dir = OmegaConf.is_missing(merged, "out_dir")
    if no_out_dir:
        merged.out_dir = ""
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:  # an interpolation (${...}) that does not resolve
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config: {text}.") from None
    assert isinstance(config, RunConfig)
    validate(config)
    if no_out_dir:
        raise ConfigError(
            "out_dir is not set: give the run directory, a new one for each run, e.g. "
            "out_dir=runs/rigl_s0."
        )
    return config


INT_AT_LEAST_1 = (lambda v: v >= 1, "integers >= 1")
#: The longest run ``train.epochs`` and ``train.multiplier`` may ask for: far beyond any paper's,
#: short of a value that is a typo (``1e30``) and would train step by step for ever.
MAX_EPOCHS = 100_000
MAX_MULTIPLIER = 1000
#: Value checks the types cannot make: key → (predicate, allowed values). ``None`` always passes.
RANGES: dict[str, tuple[Any, str]] = {
    "sparsity.sparsity": (lambda v: 0 <= v < 1, "0 <= x < 1"),
    "model.width": (lambda v: v > 0, "x > 0 (the channel multiplier)"),
    "train.epochs": (lambda v: 1 <= v <= MAX_EPOCHS, f"integers >= 1 and <= {MAX_EPOCHS}"),
    "train.multiplier": (lambda v: 0 < v <= MAX_MULTIPLIER, f"0 < x <= {MAX_MULTIPLIER}"),
    "train.batch_size": INT_AT_LEAST_1,
    "train.lr": (lambda v: v > 0, "x > 0"),
    "train.momentum": (lambda v: 0 <= v < 1, "0 <= x < 1"),
    "train.weight_decay": (lambda v: v >= 0, "x >= 0"),
    "train.lr_gamma": (
        lambda v: v > 0,
        "x > 0 (the factor the learning rate is multiplied by at each milestone)",
    ),
    "train.warmup_epochs": (lambda v: v >= 0, "x >= 0 (0: no warm-up)"),
    "train.eval_every": INT_AT_LEAST_1,
    "train.checkpoint_every": INT_AT_LEAST_1,
    "train.stop_at_step": INT_AT_LEAST_1,
    "train.label_smoothing": (lambda v: 0 <= v < 1, "0 <= x < 1"),
    "train.lr_milestones": (lambda v: all(0 < m < 1 for m in v), "fractions of the run in (0, 1)"),
    "train.betas": (
        lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
        "two numbers [beta1, beta2], each 0 <= b < 1",
    ),
    "train.eps": (lambda v: v > 0, "x > 0 (0 would divide 0 by 0 at inactive weights)"),
    "train.grad_clip": (lambda v: v > 0, "x > 0, or null (no clipping)"),
    "train.min_lr_ratio": (lambda v: 0 <= v <= 1, "0 <= x <= 1"),
    "data.validation_size": (lambda v: v >= 0, "integers >= 0"),
    "data.limit_train": INT_AT_LEAST_1,
    "data.block_size": INT_AT_LEAST_1,
}


def _get(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(config: RunConfig) -> None:
    """Check values the types cannot: names against the registries, ranges."""
    names = {
        "data.name": sorted(DATASETS),
        "model.name": sorted(MODELS),
        "sparsity.distribution": DISTRIBUTIONS,
        "sparsity.init": INITS,
        "train.compile_mode": COMPILE_MODES,
        "train.sgd_implementation": SGD_IMPLEMENTATIONS,
        "train.optimizer": OPTIMIZERS,
        "train.lr_schedule": LR_SCHEDULES,
    }
    for key, allowed in names.items():
        if _get(config, key) not in allowed:
            raise ConfigError(
                f"{key}={_get(config, key)!r} is not allowed: allowed values are "
                f"{', '.join(map(str, allowed))}."
            )
    for key in field_types(RunConfig):
        value = _get(config, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} is not a finite number.")
    for key, (ok, allowed) in RANGES.items():
        value = _get(config, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range: allowed values are {allowed}.")
    t = config.train
    if round(t.epochs * t.multiplier) < 1:
        raise ConfigError(
            f"train.epochs × train.multiplier = {t.epochs} × {t.multiplier} rounds to 0 epochs: "
            "the run would take no step; allowed are values whose product is at least 0.5 (raise "
            "train.multiplier or train.epochs)."
        )
    if t.optimizer == "sgd" and t.nesterov and t.momentum == 0:
        raise ConfigError(
            "train.nesterov=true needs train.momentum > 0: set train.nesterov=false for plain "
            "SGD, or a momentum in (0, 1)."
        )
    try:
        cls = config.sparsity.method_class()
    except ValueError as error:
        raise ConfigError(f"sparsity.{error}") from None
    try:
        cls.Args.from_mapping(config.sparsity.args, cls.name)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"sparsity.args: {error}") from None
    _validate_init_masks(config.sparsity, cls)
    _validate_structure(config.sparsity, cls)
    for name, density in config.sparsity.custom_densities.items():
        if not 0 <= density <= 1:
            raise ConfigError(
                f"sparsity.custom_densities.{name}={density!r} is out of range: allowed values "
                "are 0 <= x <= 1."
            )


def _validate_structure(s: SparsityConfig, cls: Any) -> None:
    """``sparsity.structure``: a structure's form, and one the method's class keeps (arguments
    that rule one out, e.g. Pruning's scope=global, are refused when the sparsifier is built)."""
    try:
        structure = parse_structure(s.structure)
    except ValueError as error:
        raise ConfigError(f"sparsity.{error}") from None
    if structure.family not in cls.structures:
        able = [name for name, c in METHODS.items() if structure.family in c.structures]
        raise ConfigError(
            f"sparsity.structure={s.structure!r} is not kept by sparsity.method={s.method}: "
            f"methods that keep {structure.family} are {', '.join(able)}."
        )


def _validate_init_masks(s: SparsityConfig, cls: Any) -> None:
    """``sparsity.init_masks``, ``init_masks_mode`` and ``rewind`` (the run directory itself is
    read when the run is built: :mod:`regrow.train.init_masks`)."""
    if s.init_masks_mode not in Sparsifier.START_MODES:
        raise ConfigError(
            f"sparsity.init_masks_mode={s.init_masks_mode!r} is not allowed: allowed values are "
            f"{', '.join(Sparsifier.START_MODES)}."
        )
    if s.init_masks is None:
        if s.rewind:
            raise ConfigError(
                "sparsity.rewind=true needs sparsity.init_masks=RUN_DIR (the run whose initial "
                "weights and masks to start from)."
            )
        return
    if not str(s.init_masks).strip():
        raise ConfigError("sparsity.init_masks='' is empty: give a run directory, or null.")
    if not cls.traits.masked or cls.traits.starts_dense:
        why = "trains without masks" if not cls.traits.masked else "starts dense"
        raise ConfigError(
            f"sparsity.init_masks is set, but sparsity.method={s.method} {why}: start from masks "
            f"with a method that starts sparse ({', '.join(sparse_start_methods())})."
        )


#: Config keys that hold a path: resolved once, when a run starts, and saved absolute
#: (:func:`with_absolute_paths`), so a resume from another working directory reads the same files.
PATH_KEYS = ("data.root", "data.path", "sparsity.init_masks")


def absolute_path(value: str) -> str:
    """``value`` (``~`` expanded) as an absolute path against the working directory; the path
    itself, not where its links lead."""
    return os.path.abspath(os.path.expanduser(value))


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with each key of :data:`PATH_KEYS` an absolute path (``None`` stays ``None``)."""
    data, sparsity = config.data, config.sparsity
    if sparsity.init_masks is not None:
        sparsity = dataclasses.replace(sparsity, init_masks=absolute_path(sparsity.init_masks))
    data = dataclasses.replace(data, root=absolute_path(data.root))
    if data.path is not None:
        data = dataclasses.replace(data, path=absolute_path(data.path))
    return dataclasses.replace(config, data=data, sparsity=sparsity)


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
