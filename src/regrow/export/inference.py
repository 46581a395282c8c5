"""The inference model: :func:`export_model` rewrites a masked model, traced with torch.fx, as plain
PyTorch modules that skip the work its masks made useless (dead channels removed, batch norm
folded, each layer dense, CSR, condensed or ELL as measured fastest), then checks it against the
masked model. A model with a cached ``decode`` (the language model) gets its decode step exported
too, its layers' forms chosen for one token at a time (:mod:`.decode`). The steps, and what the
result may and may not be used for: docs/EXPORT.md."""

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
from . import decode
from .formats import MARGIN, check_mode, choose_formats
from .graph import TOLERANCE as TOLERANCE
from .graph import checked_difference, finish, propagate_shapes
from .passes import drop_identities, fold_batch_norms, remove_dead_channels
from .timing import interleaved_seconds, median, synchronized

#: The output check's tolerance when a layer runs in fp16 (the semi-structured form): fp16 keeps
#: 11 significant bits, so each product and sum is off by up to about 1e-3 relative.
FP16_TOLERANCE = 1e-2
#: Forms computed in fp16.
FP16_FORMS = ("semi_structured",)


@dataclass
class LayerReport:
    """One conv / linear layer of the exported model."""

    name: str
    shape_before: list[int]  #: the weight's shape in the masked model
    shape_after: list[int]  #: … in the exported one (out and in channels shrunk)
    density: float  #: nonzero fraction of the exported weight
    #: ``"dense"``, ``"csr"``, ``"condensed"``, ``"ell"``, ``"embedding_bag"``, ``"bsr"`` or
    #: ``"semi_structured"``
    format: str
    folded_batch_norm: str | None = None  #: the batch norm folded into it
    #: the export-time timing, ms per call of each form tried (``"dense"`` included), when it ran
    times_ms: dict[str, float] | None = None


@dataclass
class ExportReport:
    """What :func:`export_model` did, for ``export.json`` and the printed summary."""

    batch_size: int
    formats: str  #: the mode: ``"auto"`` (timed) or the form forced
    compiled: bool  #: the forms were timed under ``torch.compile``
    threads: int
    input_shape: list[int]
    layers: list[LayerReport] = field(default_factory=list)
    #: a model with a cached decode: the layers of its one-token decode step
    decode_layers: list[LayerReport] | None = None
    #: producer → ``[dead rows kept, why]`` for each layer whose dead rows were not all removed
    kept_dead: dict[str, list[Any]] = field(default_factory=dict)
    removed_channels: dict[str, int] = field(default_factory=dict)  #: producer → channels removed
    max_abs_diff: float | None = None
    decode_max_abs_diff: float | None = None
    #: ``"auto"`` where some layer can be sparse: the whole model's ms per batch for each contender
    #: of :data:`WHOLE_GRAPH_RUNS` timed (:func:`kept_run` says which was kept)
    model_ms: dict[str, float] | None = None
    decode_model_ms: dict[str, float] | None = None  #: the same for one decode step

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sparse_layers(self, decoding: bool = False) -> dict[str, str]:
        """Layer → form, for the layers not left dense (of the decode step if ``decoding``)."""
        layers = (self.decode_layers or []) if decoding else self.layers
        return {layer.name: layer.format for layer in layers if layer.format != "dense"}


def example_batch(
    input_shape: Sequence[int],
    batch_size: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    high: int | None = None,
) -> torch.Tensor:
    """A seeded batch of ``batch_size`` samples of ``input_shape``: standard normal, or for an
    integer ``dtype`` (token ids) uniform in ``0 … high - 1``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, *input_shape)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randint(0, high or 2, shape, generator=generator, dtype=dtype)


def model_batch(model: nn.Module, input_shape: Sequence[int], batch_size: int, seed: int = 0):
    """:func:`example_batch` in ``model``'s input type: its ``input_dtype`` (token ids below its
    ``vocab_size``), else float."""
    dtype = getattr(model, "input_dtype", torch.float32)
    return example_batch(input_shape, batch_size, seed, dtype, getattr(model, "vocab_size", None))


def export_model(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    formats: str = "auto",
    rounds: int = 7,
    compiled: bool = False,
) -> tuple[fx.GraphModule, ExportReport]:
    """The inference model of the masked ``model`` (see the module docstring) and its report.

    ``input_shape`` is one sample's shape; ``batch_size`` the batch the forms are timed at;
    ``formats``: ``"auto"`` (timed), or one form of
    :data:`~regrow.export.formats.FORMAT_MODES` for every layer that can take it (a device form,
    ``"semi_structured"``, only where the model's device runs it); ``compiled``: time the forms
    under ``torch.compile`` (for a model that will be compiled). The export runs on the device of
    ``model``'s parameters."""
    check_mode(formats, model_device(model))
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size!r}: allowed values are >= 1")
    training = model.training
    try:
        return _export(model.eval(), input_shape, batch_size, formats, rounds, compiled)
    finally:
        model.train(training)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def trace(model: nn.Module, what: str = "forward") -> fx.GraphModule:
    """``model`` (its ``forward``, or its ``decode``) traced with torch.fx, in eval mode."""
    try:
        graph_module = decode.trace_decode(model) if what == "decode" else fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types on untraceable control flow
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}.{what} ({type(error).__name__}: "
            f"{error}); export needs a model without data-dependent control flow in {what}."
        ) from None
    graph_module.eval()
    for node in graph_module.graph.nodes:
        node.type = None  # string annotations (postponed evaluation) do not pickle
    return graph_module


def _export(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    formats: str,
    rounds: int,
    compiled: bool,
) -> tuple[fx.GraphModule, ExportReport]:
    plain = strip_masks(model).eval()
    graph_module = trace(plain)
    decoder = trace(plain, "decode") if decode.can_decode(plain) else None
    device = model_device(plain)
    example = model_batch(plain, input_shape, batch_size).to(device)
    report = ExportReport(batch_size, formats, compiled, torch.get_num_threads(), list(input_shape))
    before = {
        name: list(m.weight.shape)
        for name, m in graph_module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        drop_identities(graph_module)
        propagate_shapes(graph_module, example)
        kept_dead, removed = remove_dead_channels(graph_module)
        report.kept_dead.update(kept_dead)
        report.removed_channels.update(removed)
        propagate_shapes(graph_module, example)
        folded = fold_batch_norms(graph_module)
        propagate_shapes(graph_module, example)
        # The decode step runs the same (now smaller) modules: rebind it to them before the
        # forms, which each graph chooses for its own inputs, rewrite the graphs apart.
        if decoder is not None:
            decoder = decode.rebind(decoder, graph_module, folded)
        layers = _layer_reports(graph_module, before, folded)
        graph_module, report.model_ms = _choose(
            graph_module, (example,), layers, formats, rounds, compiled, device
        )
        report.layers = list(layers.values())
        if decoder is not None:
            step = decode.step_inputs(plain, batch_size)
            propagate_shapes(decoder, *step)
            decode_layers = _layer_reports(decoder, before, folded)
            decoder, report.decode_model_ms = _choose(
                decoder, step, decode_layers, formats, rounds, compiled, device
            )
            report.decode_layers = list(decode_layers.values())
            decode.attach(graph_module, decoder, plain)
        for parameter in graph_module.parameters():
            parameter.requires_grad_(False)
        check = model_batch(plain, input_shape, max(batch_size, 4), seed=1).to(device)
        every = report.layers + (report.decode_layers or [])
        tolerance = FP16_TOLERANCE if any(x.format in FP16_FORMS for x in every) else TOLERANCE
        report.max_abs_diff = check_outputs(model, graph_module, check, tolerance)
        if decoder is not None:
            report.decode_max_abs_diff = decode.check_decode(model, graph_module, check, tolerance)
    return graph_module, report


def _choose(
    graph_module: fx.GraphModule,
    inputs: tuple[Any, ...],
    layers: dict[str, LayerReport],
    formats: str,
    rounds: int,
    compiled: bool,
    device: torch.device | str = "cpu",
) -> tuple[fx.GraphModule, dict[str, float] | None]:
    """Give each layer its form (:func:`~regrow.export.formats.choose_formats`); with
    ``"auto"``, time the whole graph three ways — every layer dense, each layer in the form its
    own timing picked (``sparse``), every layer that can be sparse in its fastest sparse form
    (``all_sparse``) — and keep the faster sparse graph if it takes at most
    :data:`~regrow.export.formats.MARGIN` × the dense one (else every layer is dense again).
    Returns the graph module and the whole-graph timings (``None`` when not timed)."""
    if formats != "auto":
        choose_formats(graph_module, formats, layers, rounds, compiled, device)
        finish(graph_module)
        return graph_module, None
    graphs = {name: _sharing_copy(graph_module) for name in ("dense", "all_sparse")}
    graphs["sparse"] = graph_module
    forms = {"dense": dict.fromkeys(layers, "dense")}
    for name, margin in (("sparse", MARGIN), ("all_sparse", None)):
        # A layer timed alone runs with its weights in cache and pays a call's overhead; inside a
        # model whose weights do not fit in cache, a sparse form that lost alone can win (a
        # decode step's 768 × 768 attention layers): the whole graph decides.
        choose_formats(graphs[name], formats, layers, rounds, compiled, device, margin)
        forms[name] = {layer_name: layer.format for layer_name, layer in layers.items()}
    for graph in graphs.values():
        finish(graph)
    distinct: dict[str, dict[str, str]] = {}  # contenders with the same forms are timed once
    for name, picked in forms.items():
        if picked not in distinct.values():
            distinct[name] = picked
    if len(distinct) == 1:  # no layer can take a sparse form
        return graph_module, None
    runs = {name: graphs[name] for name in distinct}
    if compiled:
        runs = {name: torch.compile(run, dynamic=False) for name, run in runs.items()}
    with torch.inference_mode():
        seconds = interleaved_seconds(
            {name: synchronized(partial(run, *inputs), device) for name, run in runs.items()},
            rounds=rounds,
            block_seconds=0.01,
            max_block=1000,
        )
    model_ms = {k: median(v) * 1e3 for k, v in seconds.items()}
    best = kept_run(model_ms)
    for name, layer in layers.items():
        layer.format = forms[best][name]
    return graphs[best], model_ms


#: The whole-graph contenders of ``"auto"`` (``ExportReport.model_ms`` keys), in words.
WHOLE_GRAPH_RUNS = {
    "dense": "every layer dense",
    "sparse": "each layer in the form its own timing picked",
    "all_sparse": "every layer that can be sparse in its fastest sparse form",
}


def kept_run(model_ms: dict[str, float]) -> str:
    """The contender the export keeps: the faster sparse graph if it takes at most
    :data:`~regrow.export.formats.MARGIN` × the dense one, else ``"dense"``."""
    best = min((name for name in model_ms if name != "dense"), key=model_ms.__getitem__)
    return best if model_ms[best] <= MARGIN * model_ms["dense"] else "dense"


def describe_whole_graph(model_ms: dict[str, float]) -> str:
    """One line of ``model_ms``: each contender's ms and which one was kept."""
    times = [
        f"{model_ms[k]:.4g} ms {what}" for k, what in WHOLE_GRAPH_RUNS.items() if k in model_ms
    ]
    return "; ".join(times) + f" (kept: {WHOLE_GRAPH_RUNS[kept_run(model_ms)]})"


def _sharing_copy(graph_module: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``graph_module``'s graph over the same submodules: a form rewrites the graph
    and adds buffers, never changing a module, so the contenders share the weights (a deep copy
    would also save them twice when it is the one kept)."""
    graph = copy.deepcopy(graph_module.graph)
    return fx.GraphModule(graph_module, graph, class_name=type(graph_module).__name__)


def check_outputs(
    reference: nn.Module, exported: nn.Module, batch: torch.Tensor, tolerance: float = TOLERANCE
) -> float:
    """The largest absolute difference between the two models' outputs on ``batch`` (eval mode);
    ``RuntimeError`` if it exceeds ``tolerance`` × (1 + the largest reference output)."""
    reference.eval()
    exported.eval()
    with torch.inference_mode():
        expected, got = reference(batch), exported(batch)
    return checked_difference(expected, got, "the exported model's outputs", tolerance)


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
