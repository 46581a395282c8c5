"""Which form each layer of the inference model takes: dense, CSR (:mod:`.csr`), condensed / ELL
or embedding bag (:mod:`.condensed`), BSR or semi-structured 2:4 (:mod:`.structured`, where the
weight's non-zeros have that structure and the export's device runs the kernel), chosen by
measured time on the layer's own input at the export's batch size (``"auto"``) or forced (any
other of :data:`FORMAT_MODES`).

A candidate is timed as a one-layer graph module rewritten exactly as the model's layer would be,
so what is timed is what runs; with ``compiled=True`` each candidate is timed under
``torch.compile`` (where the condensed gather-multiply-sum fuses into one loop; CSR, which
``torch.compile`` does not fuse, is then not a candidate). A sparse form is chosen only if it takes
at most :data:`MARGIN` × the dense time (or, with ``margin=None``, whenever the layer can take
one: the export's ``all_sparse`` whole-graph contender, :func:`regrow.export.inference.export_model`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol

import torch
from torch import fx, nn

from . import condensed, csr, structured
from .graph import shape_of, submodules
from .timing import interleaved_seconds, median, synchronized

FORMAT_MODES = ("auto", "dense", "csr", "condensed", "embedding_bag", "bsr", "semi_structured")
#: Forms that run only on some devices, with what each needs.
DEVICE_FORMS = {"semi_structured": "a CUDA device of compute capability 8.0 (Ampere) or newer"}
#: ``"auto"`` makes a layer sparse only when its timed call takes at most this × the dense one.
MARGIN = 0.9
#: Layers denser than this are never tried in a sparse form (dense kernels win there).
MAX_DENSITY = 0.5

Rewrite = Callable[[fx.GraphModule, fx.Node, nn.Module], None]


class FormatChoice(Protocol):
    """What :func:`choose_formats` reads and writes of a layer (its report)."""

    density: float
    format: str
    times_ms: dict[str, float] | None


def available_modes(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The values of :data:`FORMAT_MODES` that can run on ``device``."""
    device = torch.device(device)
    supported = {"semi_structured": structured.semi_structured_supported(device)}
    return tuple(mode for mode in FORMAT_MODES if supported.get(mode, True))


def check_mode(mode: str, device: torch.device | str = "cpu") -> None:
    """``ValueError`` (one line) unless ``mode`` is a form that can run on ``device``."""
    allowed = available_modes(device)
    if mode in allowed:
        return
    if mode in DEVICE_FORMS:
        raise ValueError(
            f"formats={mode!r}: not available on this device ({torch.device(device)}; it needs "
            f"{DEVICE_FORMS[mode]}); allowed values here are {', '.join(allowed)}"
        )
    raise ValueError(f"formats={mode!r}: allowed values are {', '.join(allowed)}")


def candidates(
    node: fx.Node,
    module: nn.Module,
    mode: str,
    compiled: bool,
    device: torch.device | str = "cpu",
) -> dict[str, Rewrite]:
    """The sparse forms ``node`` (a call of ``module``) may take in ``mode`` on ``device``, by
    format name (the structured forms only where the weight has their structure)."""
    found: dict[str, Rewrite] = {}
    if mode in ("auto", "csr") and not (compiled and mode == "auto") and csr.eligible(node, module):
        found["csr"] = csr.replace_with_csr
    if mode in ("auto", "condensed") and csr.eligible(node, module):
        packed = condensed.pack_rows(module.weight)
        found[packed.format] = partial(condensed.replace_with_packed, packed=packed)
    if mode in ("auto", "embedding_bag") and condensed.bag_eligible(node, module):
        found["embedding_bag"] = condensed.replace_with_bag
    # torch.compile does not fuse sparse-tensor kernels either: like CSR, not timed compiled.
    eager = not (compiled and mode == "auto")
    if mode in ("auto", "bsr") and eager and structured.bsr_eligible(node, module, device):
        found["bsr"] = structured.replace_with_bsr
    if (
        mode in ("auto", "semi_structured")
        and eager
        and structured.semi_structured_eligible(node, module, device)
    ):
        found["semi_structured"] = structured.replace_with_semi_structured
    return found


def choose_formats(
    graph_module: fx.GraphModule,
    mode: str,
    layers: Mapping[str, FormatChoice],
    rounds: int,
    compiled: bool = False,
    device: torch.device | str = "cpu",
    margin: float | None = MARGIN,
) -> None:
    """Rewrite each layer of ``layers`` into the form ``mode`` gives it on ``device`` (see the
    module docstring), recording ``format`` and, when timed, ``times_ms`` (a layer timed already
    keeps its timings). With ``margin=None`` every layer ``"auto"`` may make sparse takes its
    fastest sparse form, faster than dense or not."""
    if mode == "dense":
        return
    modules = submodules(graph_module)
    cache: dict[tuple[Any, ...], dict[str, float]] = {}
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or node.target not in layers:
            continue
        module, layer = modules[node.target], layers[node.target]
        if mode == "auto" and layer.density > MAX_DENSITY:
            continue
        forms = candidates(node, module, mode, compiled, device)
        if not forms:
            continue
        if mode == "auto":
            if layer.times_ms is None:
                shape = shape_of(node.args[0])
                key = (shape, _signature(module), compiled, tuple(forms))
                if key not in cache:
                    cache[key] = time_forms(module, shape, forms, rounds, compiled, device)
                layer.times_ms = cache[key]
            times = layer.times_ms
            best = min(forms, key=lambda name: times[name])
            if margin is not None and not times[best] <= margin * times["dense"]:
                continue
        else:
            best = next(iter(forms))
        forms[best](graph_module, node, module)
        layer.format = best


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What a layer's timing depends on: its weight's shape, its non-zeros, its non-empty rows
    and its longest row (layers alike in these share one timing)."""
    weight = module.weight.detach()
    counts = (weight.reshape(weight.shape[0], -1) != 0).sum(1)
    rows = int((counts > 0).sum())
    return (type(module).__name__, tuple(weight.shape), int(counts.sum()), rows, int(counts.max()))


def one_layer(module: nn.Module) -> tuple[fx.GraphModule, fx.Node]:
    """A graph module that calls a copy of ``module`` on its input, and that call's node."""
    root = nn.Module()
    root.add_module("layer", copy.deepcopy(module))
    graph = fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_module("layer", (x,))
    graph.output(node)
    return fx.GraphModule(root, graph), node


def one_layer_in(module: nn.Module, rewrite: Rewrite) -> fx.GraphModule:
    """:func:`one_layer` with its call rewritten by ``rewrite`` into a sparse form."""
    graph_module, node = one_layer(module)
    rewrite(graph_module, node, graph_module.layer)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


def time_forms(
    module: nn.Module,
    shape: tuple[int, ...],
    forms: Mapping[str, Rewrite],
    rounds: int,
    compiled: bool,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Median ms per call of ``module`` dense and in each of ``forms``, side by side, on a random
    input of ``shape`` on ``device`` (compiled when ``compiled``)."""
    x = torch.randn(shape, device=device)
    calls: dict[str, Callable[[], Any]] = {}
    dense, _ = one_layer(module)
    calls["dense"] = synchronized(partial(dense, x), device)
    for name, rewrite in forms.items():
        graph_module = one_layer_in(module, rewrite)
        run = torch.compile(graph_module, dynamic=False) if compiled else graph_module
        calls[name] = synchronized(partial(run, x), device)
    with torch.inference_mode():
        seconds = interleaved_seconds(calls, rounds=rounds, block_seconds=0.002)
    return {name: median(values) * 1e3 for name, values in seconds.items()}
