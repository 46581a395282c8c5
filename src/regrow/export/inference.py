"""The inference model: :func:`export_model` rewrites a masked model, traced with torch.fx, as plain
PyTorch modules that skip the work its masks made useless (dead channels removed, batch norm
folded, CSR where measured faster), then checks it against the masked model. The steps, and what
the result may and may not be used for: docs/EXPORT.md."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import fx, nn

from ..sparsity.masks import strip_masks
from .csr import CSR_MARGIN, choose_csr
from .csr import CSR_MAX_DENSITY as CSR_MAX_DENSITY
from .graph import finish, propagate_shapes
from .passes import drop_identities, fold_batch_norms, remove_dead_channels
from .timing import interleaved_seconds, median

CSR_MODES = ("auto", "always", "never")
#: Outputs must agree within ``TOLERANCE × (1 + max |reference output|)``.
TOLERANCE = 1e-4


@dataclass
class LayerReport:
    """One conv / linear layer of the exported model."""

    name: str
    shape_before: list[int]  #: the weight's shape in the masked model
    shape_after: list[int]  #: … in the exported one (out and in channels shrunk)
    density: float  #: nonzero fraction of the exported weight
    format: str  #: ``"dense"`` or ``"csr"``
    folded_batch_norm: str | None = None  #: the batch norm folded into it
    dense_ms: float | None = None  #: the export-time timing (ms per call), when it ran
    csr_ms: float | None = None


@dataclass
class ExportReport:
    """What :func:`export_model` did, for ``export.json`` and the printed summary."""

    batch_size: int
    csr_mode: str
    threads: int
    input_shape: list[int]
    layers: list[LayerReport] = field(default_factory=list)
    #: producer → ``[dead rows kept, why]`` for each layer whose dead rows were not all removed
    kept_dead: dict[str, list[Any]] = field(default_factory=dict)
    removed_channels: dict[str, int] = field(default_factory=dict)  #: producer → channels removed
    max_abs_diff: float | None = None
    #: ``csr="auto"`` with CSR layers chosen: the whole model's ms per batch with them (``csr``)
    #: and with every layer dense (``dense``); the CSR layers stay only if that is faster too
    model_ms: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def csr_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.format == "csr"]


def example_batch(input_shape: Sequence[int], batch_size: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch of ``batch_size`` samples of ``input_shape``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *input_shape), generator=generator)


def export_model(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    csr: str = "auto",
    rounds: int = 7,
) -> tuple[fx.GraphModule, ExportReport]:
    """The inference model of the masked ``model`` (see the module docstring) and its report.

    ``input_shape`` is one sample's shape; ``batch_size`` the batch the CSR choice is timed at;
    ``csr``: ``"auto"`` (timed), ``"always"`` (every eligible layer), ``"never"``."""
    if csr not in CSR_MODES:
        raise ValueError(f"csr={csr!r}: allowed values are {', '.join(CSR_MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size!r}: allowed values are >= 1")
    training = model.training
    try:
        return _export(model.eval(), input_shape, batch_size, csr, rounds)
    finally:
        model.train(training)


def _export(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, csr: str, rounds: int
) -> tuple[fx.GraphModule, ExportReport]:
    plain = strip_masks(model).eval()
    try:
        graph_module = fx.symbolic_trace(plain)
    except Exception as error:  # fx raises many types on untraceable control flow
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__} ({type(error).__name__}: {error}); "
            "export needs a model without data-dependent control flow in forward."
        ) from None
    graph_module.eval()
    for node in graph_module.graph.nodes:
        node.type = None  # string annotations (postponed evaluation) do not pickle
    example = example_batch(input_shape, batch_size)
    report = ExportReport(batch_size, csr, torch.get_num_threads(), list(input_shape))
    before = {
        name: list(m.weight.shape)
        for name, m in graph_module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        drop_identities(graph_module)
        propagate_shapes(graph_module, example)
        kept_dead, removed = remove_dead_channels(graph_module)
        report.kept_dead.update(kept_dead)
        report.removed_channels.update(removed)
        propagate_shapes(graph_module, example)
        folded = fold_batch_norms(graph_module)
        propagate_shapes(graph_module, example)
        layers = _layer_reports(graph_module, before, folded)
        all_dense = copy.deepcopy(graph_module) if csr == "auto" else None
        choose_csr(graph_module, csr, layers, rounds)
        finish(graph_module)
        if all_dense is not None and any(layer.format == "csr" for layer in layers.values()):
            graph_module = _faster_of(graph_module, all_dense, layers, example, rounds, report)
        for parameter in graph_module.parameters():
            parameter.requires_grad_(False)
        report.layers = list(layers.values())
        check = example_batch(input_shape, max(batch_size, 4), seed=1)
        report.max_abs_diff = check_outputs(model, graph_module, check)
    return graph_module, report


def _faster_of(
    with_csr: fx.GraphModule,
    all_dense: fx.GraphModule,
    layers: dict[str, LayerReport],
    example: torch.Tensor,
    rounds: int,
    report: ExportReport,
) -> fx.GraphModule:
    """``with_csr`` if the whole model is faster with its CSR layers by :data:`CSR_MARGIN`, else
    ``all_dense`` (every layer marked dense again); the timings go to ``report.model_ms``."""
    # Layers timed alone can mislead (call overheads, caches): keep the CSR layers only if the
    # whole model is faster with them too.
    finish(all_dense)
    with torch.inference_mode():
        seconds = interleaved_seconds(
            {"dense": partial(all_dense, example), "csr": partial(with_csr, example)},
            rounds=rounds,
            block_seconds=0.01,
            max_block=1000,
        )
    report.model_ms = {k: median(v) * 1e3 for k, v in seconds.items()}
    if report.model_ms["csr"] <= CSR_MARGIN * report.model_ms["dense"]:
        return with_csr
    for layer in layers.values():
        layer.format = "dense"
    return all_dense


def check_outputs(reference: nn.Module, exported: nn.Module, batch: torch.Tensor) -> float:
    """The largest absolute difference between the two models' outputs on ``batch`` (eval mode);
    ``RuntimeError`` if it exceeds :data:`TOLERANCE` × (1 + the largest reference output)."""
    reference.eval()
    exported.eval()
    with torch.inference_mode():
        expected, got = reference(batch), exported(batch)
    if expected.shape != got.shape:
        raise RuntimeError(f"export changed the output shape: {expected.shape} → {got.shape}")
    diff = float((expected - got).abs().max()) if expected.numel() else 0.0
    bound = TOLERANCE * (1.0 + float(expected.abs().max()))
    if not diff <= bound:
        raise RuntimeError(
            f"the exported model's outputs differ from the masked model's by {diff:.3g} (> "
            f"{bound:.3g}): this is a bug in regrow.export; export with --csr never to narrow it."
        )
    return diff


def _layer_reports(
    graph_module: fx.GraphModule, before: dict[str, list[int]], folded: dict[str, str]
) -> dict[str, LayerReport]:
    reports = {}
    for name, module in graph_module.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name in before:
            weight = module.weight.detach()
            reports[name] = LayerReport(
                name=name,
                shape_before=before[name],
                shape_after=list(weight.shape),
                density=float((weight != 0).sum()) / max(weight.numel(), 1),
                format="dense",
                folded_batch_norm=folded.get(name),
            )
    return reports
