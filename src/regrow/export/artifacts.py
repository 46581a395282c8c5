"""Run directory → masked model → export directory, and back.

An export directory (``regrow export RUN_DIR OUT``) holds

================  ============================================================================
``compressed.pt`` the compressed checkpoint (:mod:`regrow.export.compress`): the masked model's
                  ``state_dict``, masks bit-packed, only active values stored; read it with
                  :func:`regrow.export.load_compressed` (bit-exact), or inspect it with
                  ``torch.load(path, weights_only=True)``
``model.pt``      the inference model (:mod:`regrow.export.inference`), ``torch.save`` of a
                  ``torch.fx.GraphModule``: ``torch.load(path, weights_only=False)`` needs only
                  PyTorch; eval mode only
``export.json``   what was exported: the source run (``partial``: true when it had not finished,
                  ``step``: the step of the checkpoint exported), the model (name, width, classes, input
                  shape), the checkpoint sizes, every layer's shape before/after, format (dense
                  or CSR) and export-time timings, the dead channels kept and why, the check
                  against the masked model, versions
================  ============================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .. import __version__
from ..models import get_model_spec
from ..sparsity import get_method
from ..sparsity.masks import MASK_SUFFIX, register_masks
from ..train.checkpoint import atomic_write, load_checkpoint, write_json
from ..train.rundir import DONE, RunDir
from .compress import load_compressed, save_compressed, size_report
from .inference import ExportReport, export_model

COMPRESSED = "compressed.pt"
MODEL = "model.pt"
INFO = "export.json"
VOCABULARY = "vocabulary.json"


@dataclass
class MaskedModel:
    """A masked model rebuilt from a run (or an export), and what it is."""

    model: nn.Module
    name: str  #: the registered model name
    width: float
    num_classes: int
    input_shape: tuple[int, ...]
    source: str  #: the run directory (or export) it came from
    method: str | None = None
    sparsity: float | None = None  #: 1 - the density over the masked tensors
    #: The run had not finished: its last checkpoint (at ``step``) is what was loaded.
    partial: bool = False
    step: int | None = None  #: the optimizer step of the loaded checkpoint
    state: str | None = None  #: the run directory's state (docs/RUN_DIR.md) when loaded
    #: keywords the model was built with beyond width and classes (a language model's block_size)
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.name,
            "model_width": self.width,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "method": self.method,
            "sparsity": self.sparsity,
            "partial": self.partial,
            "step": self.step,
            "model_options": self.options,
        }


def masked_sparsity(state: dict[str, torch.Tensor]) -> float | None:
    """1 - the fraction of active entries over every ``<param>_mask`` of ``state``."""
    masks = [t for k, t in state.items() if k.endswith("_mask") and t.dtype == torch.bool]
    total = sum(m.numel() for m in masks)
    return None if not total else 1.0 - sum(int(m.sum()) for m in masks) / total


def _input_shape(name: str, options: dict[str, Any]) -> tuple[int, ...]:
    """One sample's shape: the model's, or a language model's ``(block_size,)``."""
    if "block_size" in options:
        return (int(options["block_size"]),)
    return tuple(get_model_spec(name).input_shape)


def build_masked_model(
    name: str,
    width: float,
    state: dict[str, torch.Tensor],
    num_classes: int | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """The registered model ``name`` at ``width`` (and ``options``, such as a language model's
    ``block_size``) with ``state`` loaded, its masks registered as buffers; the number of classes
    is read from the last linear layer's weight when not given."""

    spec = get_model_spec(name)
    options = options or {}
    if num_classes is None:
        with torch.device("meta"):
            skeleton = spec(width=width)
        linears = [n for n, m in skeleton.named_modules() if isinstance(m, nn.Linear)]
        key = f"{linears[-1]}.weight" if linears else None
        num_classes = int(state[key].shape[0]) if key in state else spec.num_classes
    model = spec(num_classes=num_classes, width=width, **options)
    masks = {k[: -len(MASK_SUFFIX)]: t for k, t in state.items() if k.endswith(MASK_SUFFIX)}
    register_masks(model, {k: torch.zeros_like(t) for k, t in masks.items()})
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ValueError(
            f"the checkpoint does not fit model {name} at width {width} with {num_classes} "
            f"classes ({' '.join(line.strip() for line in first[:3])})"
        ) from None
    return model.eval(), num_classes


def load_run(run_dir: str | Path) -> MaskedModel:
    """The masked model of a regrow run directory, rebuilt from its ``checkpoint.pt`` (the model
    and width from its config and ``summary.json``)."""

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"{run.path} is not a directory: give a regrow run directory")
    if not run.has_checkpoint():
        raise FileNotFoundError(
            f"{run.path} has no {RunDir.CHECKPOINT}: not a regrow run directory, or the run has "
            "not written a checkpoint yet (train it with `regrow train`)"
        )
    saved = load_checkpoint(run.checkpoint_path)
    config = yaml.safe_load(saved["config"]) if isinstance(saved.get("config"), str) else {}
    model_config = (config or {}).get("model", {})
    options = {}
    if run.vocabulary_path.is_file():  # a language model: its context is the run's block size
        options["block_size"] = int((config or {}).get("data", {}).get("block_size", 256))
    summary = run.summary() or {}
    name = summary.get("model", model_config.get("name"))
    if name is None:
        raise ValueError(f"{run.checkpoint_path} names no model (config model.name)")
    width = float(summary.get("model_width", model_config.get("width", 1.0)))
    state = saved["model"]
    model, num_classes = build_masked_model(name, width, state, options=options)

    method = summary.get("method", (config or {}).get("sparsity", {}).get("method"))
    sparsifier = saved.get("sparsifier")
    step = sparsifier.get("step_count") if isinstance(sparsifier, dict) else None
    state_name = run.state()
    return MaskedModel(
        model=model,
        name=get_model_spec(name).name,
        width=width,
        num_classes=num_classes,
        input_shape=_input_shape(name, options),
        source=str(run.path),
        method=method,
        sparsity=masked_sparsity(state),
        partial=state_name != DONE,
        step=step if isinstance(step, int) else None,
        state=state_name,
        options=options,
    )


def check_out_dir(out: str | Path, source: str | Path | None = None) -> Path:
    """``out`` as a place to write an export of ``source``: a new or empty directory, or an
    earlier export of the same run (which is replaced); never another run's export."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"OUT {path} exists and is not a directory: choose another OUT")
    if path.is_dir() and any(path.iterdir()) and not (path / INFO).is_file():
        raise ValueError(
            f"OUT {path} is a non-empty directory that holds no export: choose a new or empty "
            "OUT (an earlier export of the same run is overwritten)"
        )
    earlier = _exported_from(path / INFO)
    if source is not None and earlier is not None and not _same_path(earlier, source):
        raise ValueError(
            f"OUT {path} holds the export of another run ({earlier}): choose another OUT, or "
            f"delete {path} first to replace it"
        )
    return path


def _exported_from(info: Path) -> str | None:
    """The run an existing ``export.json`` was made from (``None``: no readable one)."""
    try:
        source = json.loads(info.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def export_run(
    masked: MaskedModel,
    out: str | Path,
    batch_size: int = 1,
    formats: str = "auto",
    zero_signs: bool = True,
    compiled: bool = False,
) -> tuple[dict[str, Any], ExportReport]:
    """Write ``compressed.pt``, ``model.pt`` and ``export.json`` for ``masked`` into ``out``;
    returns the ``export.json`` content and the export report. ``zero_signs``: see
    :func:`regrow.export.compress.compress_state_dict`."""

    path = check_out_dir(out, masked.source)
    state = masked.model.state_dict()
    graph_module, report = export_model(
        masked.model, masked.input_shape, batch_size, formats, compiled=compiled
    )
    path.mkdir(parents=True, exist_ok=True)
    sizes = size_report(state, zero_signs)
    written = save_compressed(state, path / COMPRESSED, zero_signs)
    sizes["compressed_file_bytes"] = written
    atomic_write(path / MODEL, lambda handle: torch.save(graph_module, handle))
    vocabulary = RunDir(masked.source).vocabulary_path
    if vocabulary.is_file():  # a language model's token ids mean nothing without it
        text = vocabulary.read_text(encoding="utf-8")
        atomic_write(path / VOCABULARY, lambda handle: handle.write(text.encode("utf-8")))
    info = {
        **masked.describe(),
        "files": {"compressed": COMPRESSED, "model": MODEL},
        "zero_signs_kept": zero_signs,
        "sizes": sizes,
        "export": report.as_dict(),
        "batch_norm": "folded into the conv/linear before it where that feeds nothing else; "
        "kept (eval mode, running statistics) elsewhere",
        "regrow_version": __version__,
        "torch_version": torch.__version__,
    }
    write_json(path / INFO, info)
    return info, report


def load_export(path: str | Path) -> tuple[dict[str, Any], nn.Module, MaskedModel]:
    """An export directory's ``export.json``, its inference model and the masked model rebuilt
    from its compressed checkpoint."""
    folder = Path(path)
    if not (folder / INFO).is_file():
        raise FileNotFoundError(f"{folder} holds no {INFO}: not an export directory")
    info = json.loads((folder / INFO).read_text())
    exported = torch.load(folder / MODEL, map_location="cpu", weights_only=False)
    state = load_compressed(folder / COMPRESSED)
    options = info.get("model_options") or {}  # older exports lack the key
    model, num_classes = build_masked_model(
        info["model"], info["model_width"], state, info["num_classes"], options
    )
    masked = MaskedModel(
        model=model,
        name=info["model"],
        width=info["model_width"],
        num_classes=num_classes,
        input_shape=tuple(info["input_shape"]),
        source=str(folder),
        method=info.get("method"),
        sparsity=info.get("sparsity"),
        partial=bool(info.get("partial", False)),  # older exports lack the key
        step=info.get("step"),
        options=options,
    )
    return info, exported.eval(), masked


def random_masked_model(
    name: str,
    sparsity: float,
    width: float = 1.0,
    distribution: str = "erk",
    seed: int = 0,
    method: str = "static",
) -> MaskedModel:
    """The registered model ``name`` with the masks a ``method`` (default: Static, random masks)
    installs at ``sparsity`` (``dense_layers`` the default: the stem stays dense), freshly
    initialised — for timing an architecture without a run."""

    spec = get_model_spec(name)
    torch.manual_seed(seed)
    model = spec(num_classes=spec.num_classes, width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = get_method(method)(
        model, optimizer, sparsity=sparsity, distribution=distribution, seed=seed, total_steps=1
    )
    sparsifier.remove()
    state = model.state_dict()
    return MaskedModel(
        model=model.eval(),
        name=spec.name,
        width=width,
        num_classes=spec.num_classes,
        input_shape=tuple(spec.input_shape),
        source=f"random {method} masks ({distribution}, seed {seed})",
        method=method,
        sparsity=masked_sparsity(state),
    )


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / INFO).is_file()
