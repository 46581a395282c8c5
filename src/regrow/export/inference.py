"""The inference model: a masked model rewritten as plain PyTorch modules that skip the work its
masks made useless.

:func:`export_model` traces the model (eval mode) with :mod:`torch.fx` and rewrites the graph:

1. **Masks out, eval semantics in.** The ``<param>_mask`` buffers are dropped (the weights are
   already zero where they are off) and dropout / identity modules are removed.
2. **Dead channels removed.** A *producer* (``nn.Linear``, or ``nn.Conv2d`` with ``groups=1``) whose
   output channels reach only per-channel elementwise ops (batch norm with running statistics,
   activations) and then only ``nn.Linear`` / ``nn.Conv2d`` *consumers* — nothing else: no residual
   add, no flatten, no concatenation, no graph output — loses every channel that is

   - dead: its weight row is all zero (an ablated neuron). Such a channel carries a constant (the
     producer's bias, or 0, through the elementwise ops); where that constant is 0 the channel is
     simply dropped, where it is not it is folded into the bias of a consumer that sees it as a
     constant (``nn.Linear``, or a 1×1 unpadded conv); a padded k×k conv would see it change at
     the borders, so there a dead channel with a non-zero constant stays; or
   - unused: every consumer's weight column for it is all zero.

   The producer's rows, the batch norms' entries and the consumers' input columns go together, so
   the layers are smaller dense layers. Channels anywhere else keep their layer at full size, zeros
   included (:attr:`ExportReport.kept_dead` says where, and why).
3. **Batch norm folded** into the conv / linear layer right before it when that layer feeds nothing
   else (``W·γ/σ``, ``(b-μ)·γ/σ+β``; zeros stay zeros). Other batch norms (a pre-activation
   network's, after a residual add) are kept as they are.
4. **CSR where it is faster.** Each remaining ``nn.Linear`` on 2-d inputs and 1×1 conv (``groups=1``,
   no padding) with weight density at most :data:`CSR_MAX_DENSITY` is timed at export, on its own
   input shape at the chosen batch size: dense vs. ``torch.addmm`` with a CSR weight (int32
   indices, MKL on x86 CPUs). It becomes CSR only if that is at most :data:`CSR_MARGIN` × the dense
   time, and only if the whole model, timed with those layers in CSR and with none, is faster by
   the same margin too (else every layer stays dense: a layer timed alone hides call overheads);
   ``csr="always"`` / ``"never"`` skip the timing. A CSR layer keeps its CSR arrays as plain
   buffers and builds the sparse tensor per call (``torch.sparse_csr_tensor``), so the module can
   be copied, moved and saved like any other.
5. **Checked** against the masked model on a random batch (:attr:`ExportReport.max_abs_diff`).

The result is a :class:`torch.fx.GraphModule` of ``torch.nn`` modules and ``torch`` functions only:
``torch.save`` it and ``torch.load(path, weights_only=False)`` needs only PyTorch, not regrow. It is
an eval-mode model (batch norm uses its running statistics; dropout is gone): do not train it.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..sparsity.masks import MASK_SUFFIX
from .timing import interleaved_seconds, median

CSR_MODES = ("auto", "always", "never")
#: ``csr="auto"`` makes a layer CSR only when its timed CSR call takes at most this × the dense one.
CSR_MARGIN = 0.9
#: Layers denser than this are never tried in CSR (sparse kernels lose to dense ones there).
CSR_MAX_DENSITY = 0.5
#: Outputs must agree within ``TOLERANCE × (1 + max |reference output|)``.
TOLERANCE = 1e-4

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_DROPPED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus,
)  # fmt: skip
_F = nn.functional
_ACTIVATION_FUNCTIONS = {
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, _F.relu, _F.relu6, _F.leaky_relu, _F.elu,
    _F.gelu, _F.silu, _F.hardswish, _F.hardsigmoid, _F.hardtanh, _F.mish, _F.softplus,
}  # fmt: skip
_INPLACE_FUNCTIONS = {torch.relu_}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}


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


def strip_masks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its ``<param>_mask`` buffers, each masked tensor zeroed where its
    mask is off (a sparsifier keeps it so already): the plain model with the same weights."""
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for module in plain.modules():
            for name in [n for n in module._buffers if n.endswith(MASK_SUFFIX)]:
                mask = module._buffers[name]
                delattr(module, name)
                target = getattr(module, name[: -len(MASK_SUFFIX)], None)
                if (
                    isinstance(target, torch.Tensor)
                    and getattr(mask, "shape", None) == target.shape
                ):
                    target.mul_(mask.to(target.dtype))
    return plain


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
        _drop_identities(graph_module)
        _propagate_shapes(graph_module, example)
        _remove_dead_channels(graph_module, report)
        _propagate_shapes(graph_module, example)
        folded = _fold_batch_norms(graph_module)
        _propagate_shapes(graph_module, example)
        layers = _layer_reports(graph_module, before, folded)
        all_dense = copy.deepcopy(graph_module) if csr == "auto" else None
        _choose_csr(graph_module, csr, layers, rounds)
        _finish(graph_module)
        if all_dense is not None and any(layer.format == "csr" for layer in layers.values()):
            # Layers timed alone can mislead (call overheads, caches): keep the CSR layers only
            # if the whole model is faster with them too.
            _finish(all_dense)
            with torch.inference_mode():
                seconds = interleaved_seconds(
                    {"dense": partial(all_dense, example), "csr": partial(graph_module, example)},
                    rounds=rounds,
                    block_seconds=0.01,
                    max_block=1000,
                )
            report.model_ms = {k: median(v) * 1e3 for k, v in seconds.items()}
            if not report.model_ms["csr"] <= CSR_MARGIN * report.model_ms["dense"]:
                graph_module = all_dense
                for layer in layers.values():
                    layer.format = "dense"
        for parameter in graph_module.parameters():
            parameter.requires_grad_(False)
        report.layers = list(layers.values())
        check = example_batch(input_shape, max(batch_size, 4), seed=1)
        report.max_abs_diff = check_outputs(model, graph_module, check)
    return graph_module, report


def _finish(graph_module: fx.GraphModule) -> None:
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()


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


# --------------------------------------------------------------------------- graph helpers
def _modules(graph_module: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(graph_module.named_modules())


def _calls(graph_module: fx.GraphModule) -> Counter[str]:
    """How many times each submodule is called (a module called twice is shared: left alone)."""
    return Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")


def _rank(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _propagate_shapes(graph_module: fx.GraphModule, example: torch.Tensor) -> None:
    graph_module.recompile()
    ShapeProp(graph_module).propagate(example)


def _drop_identities(graph_module: fx.GraphModule) -> None:
    """Remove dropout and identity modules (eval semantics): their users read their input."""
    modules = _modules(graph_module)
    for node in list(graph_module.graph.nodes):
        dropped = node.op == "call_module" and isinstance(modules[node.target], _DROPPED_MODULES)
        if dropped and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.recompile()


def _layer(module: nn.Module, rank: int | None) -> bool:
    """A conv / linear layer whose channels are dimension 1 of a tensor of this rank."""
    if isinstance(module, nn.Linear):
        return rank == 2
    return isinstance(module, nn.Conv2d) and module.groups == 1 and rank == 4


def _has_node(values: Sequence[Any]) -> bool:
    found = []
    fx.node.map_arg(tuple(values), found.append)
    return bool(found)


def _inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))


def _elementwise(
    node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], calls: Counter[str]
) -> bool:
    """Whether ``node`` maps each channel of ``source`` on its own, keeping the shape: a batch norm
    with running statistics called once, or an activation, reading ``source`` only."""
    if not node.args or node.args[0] is not source:
        return False
    if _has_node([*node.args[1:], *node.kwargs.values()]):
        return False
    if _inplace(node, modules) and len(source.users) > 1:
        return False
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _BATCH_NORMS):
            return calls[node.target] == 1 and module.running_mean is not None
        return isinstance(module, _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def _consumer(
    node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], calls: Counter[str], rank: int
) -> bool:
    """Whether ``node`` is a conv / linear layer (called once) reading ``source`` as its input."""
    if node.op != "call_module" or node.args != (source,) or node.kwargs:
        return False
    return calls[node.target] == 1 and _layer(modules[node.target], rank)


def _channel_tree(
    producer: fx.Node, modules: dict[str, nn.Module], calls: Counter[str]
) -> tuple[list[fx.Node], list[fx.Node]] | str:
    """The elementwise nodes (in order) and the consumers that ``producer``'s channels reach, or,
    when they reach anything else, a short reason naming it."""
    rank = _rank(producer)
    assert rank is not None
    elementwise, consumers, frontier = [], [], [producer]
    while frontier:
        source = frontier.pop(0)
        for user in source.users:
            if _consumer(user, source, modules, calls, rank):
                consumers.append(user)
            elif _elementwise(user, source, modules, calls):
                elementwise.append(user)
                frontier.append(user)
            else:
                what = "the model's output" if user.op == "output" else f"{user.name}"
                return f"its channels feed {what}"
    return elementwise, consumers


def _run_node(node: fx.Node, value: torch.Tensor, modules: dict[str, nn.Module]) -> torch.Tensor:
    value = value.clone()
    if node.op == "call_module":
        return modules[node.target](value)
    if node.op == "call_function":
        return node.target(value, *node.args[1:], **node.kwargs)
    return getattr(value, node.target)(*node.args[1:], **node.kwargs)


def _foldable(module: nn.Module) -> bool:
    """A consumer that sees a constant input channel as a constant: linear, 1×1 unpadded conv."""
    if isinstance(module, nn.Linear):
        return True
    padding = module.padding
    unpadded = padding == "valid" or all(p == 0 for p in padding)
    return all(k == 1 for k in module.kernel_size) and unpadded


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    if isinstance(getattr(module, name), nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=False))
    else:
        setattr(module, name, value.contiguous())


def _keep_out(module: nn.Module, keep: torch.Tensor) -> None:
    _set(module, "weight", module.weight[keep])
    if module.bias is not None:
        _set(module, "bias", module.bias[keep])
    if isinstance(module, nn.Linear):
        module.out_features = len(keep)
    else:
        module.out_channels = len(keep)


def _keep_in(module: nn.Module, keep: torch.Tensor) -> None:
    _set(module, "weight", module.weight[:, keep])
    if isinstance(module, nn.Linear):
        module.in_features = len(keep)
    else:
        module.in_channels = len(keep)


def _keep_batch_norm(module: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(module, name)
        _set(module, name, None if value is None else value[keep])
    module.num_features = len(keep)


# ------------------------------------------------------------------------ dead channels
def _remove_dead_channels(graph_module: fx.GraphModule, report: ExportReport) -> None:
    modules, calls = _modules(graph_module), _calls(graph_module)
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = modules[node.target]
        if not _layer(producer, _rank(node)):
            continue
        weight = producer.weight.detach()
        channels = weight.shape[0]
        row_dead = (weight.reshape(channels, -1) == 0).all(1)
        tree = _channel_tree(node, modules, calls)
        if isinstance(tree, str):
            if row_dead.any():
                report.kept_dead[node.target] = [int(row_dead.sum()), tree]
            continue
        elementwise, consumers = tree
        if not consumers:
            continue
        # The value each dead channel carries: the bias (or 0) through the elementwise ops.
        probe = torch.zeros(channels, dtype=weight.dtype)
        if producer.bias is not None:
            probe = producer.bias.detach().clone()
        values = {node: probe.reshape(1, channels, *([1] * (weight.dim() - 2)))}
        for op in elementwise:
            values[op] = _run_node(op, values[op.args[0]], modules)
        removable = torch.ones(channels, dtype=torch.bool)
        folds = []
        for consumer in consumers:
            layer = modules[consumer.target]
            columns = layer.weight.detach().transpose(0, 1).reshape(channels, -1)
            unused = (columns == 0).all(1)
            constant = values[consumer.args[0]].reshape(channels)
            zero = constant == 0
            fold = _foldable(layer) & torch.isfinite(constant)
            removable &= unused | (row_dead & (zero | fold))
            folds.append((layer, row_dead & ~unused & ~zero, constant))
        if bool(removable.all()):
            removable[0] = False  # no empty layers
        kept_dead = int((row_dead & ~removable).sum())
        if kept_dead:
            report.kept_dead[node.target] = [
                kept_dead,
                "they carry a non-zero constant into a padded conv",
            ]
        if not removable.any():
            continue
        keep = (~removable).nonzero().flatten()
        for layer, folded, constant in folds:
            drop = (folded & removable).nonzero().flatten()
            if len(drop):
                _fold_constant(layer, drop, constant)
        _keep_out(producer, keep)
        for op in elementwise:
            if op.op == "call_module" and isinstance(modules[op.target], _BATCH_NORMS):
                _keep_batch_norm(modules[op.target], keep)
        for consumer in consumers:
            _keep_in(modules[consumer.target], keep)
        report.removed_channels[node.target] = channels - len(keep)


def _fold_constant(layer: nn.Module, channels: torch.Tensor, constant: torch.Tensor) -> None:
    """Add what the constant input ``channels`` contribute to ``layer``'s bias."""
    weight = layer.weight.detach().double()[:, channels]
    per_channel = weight.reshape(weight.shape[0], len(channels), -1).sum(2)
    delta = per_channel @ constant[channels].double()
    bias = layer.bias
    base = torch.zeros_like(delta) if bias is None else bias.detach().double()
    layer.bias = nn.Parameter((base + delta).to(layer.weight.dtype), requires_grad=False)


# -------------------------------------------------------------------------- batch norm
def _fold_batch_norms(graph_module: fx.GraphModule) -> dict[str, str]:
    """Fold each batch norm into the conv / linear right before it (when that feeds nothing else);
    returns layer → the batch norm folded into it."""
    modules, calls = _modules(graph_module), _calls(graph_module)
    folded = {}
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        norm = modules[node.target]
        if not isinstance(norm, _BATCH_NORMS) or norm.running_mean is None:
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        if len(source.users) != 1 or calls[source.target] != 1:
            continue
        layer = modules[source.target]
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        expected = (2, nn.BatchNorm1d) if isinstance(layer, nn.Linear) else (4, nn.BatchNorm2d)
        if _rank(source) != expected[0] or not isinstance(norm, expected[1]):
            continue
        weight = layer.weight.detach().double()
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.detach().double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.detach().double()
        bias = layer.bias.detach().double() if layer.bias is not None else 0.0
        dtype = layer.weight.dtype
        new_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        layer.weight = nn.Parameter(new_weight.to(dtype), requires_grad=False)
        layer.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        folded[source.target] = node.target
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return folded


# --------------------------------------------------------------------------------- CSR
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


def _csr_eligible(node: fx.Node, module: nn.Module) -> bool:
    if not isinstance(node.args[0], fx.Node) or len(node.args) != 1 or node.kwargs:
        return False
    rank = _rank(node.args[0])
    if isinstance(module, nn.Linear):
        return rank == 2
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and rank == 4
        and all(k == 1 for k in module.kernel_size)
        and _foldable(module)
    )


def csr_arrays(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row pointers and column indices (int32) and values of ``weight`` as a 2-d CSR matrix."""
    matrix = weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()
    return (
        matrix.crow_indices().to(torch.int32),
        matrix.col_indices().to(torch.int32),
        matrix.values().clone(),
    )


def csr_linear(
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ W.T + b`` with ``W`` in CSR (``bias``: a column, ``[out, 1]``); what a CSR linear layer
    of the exported model computes (its graph spells the same calls out)."""
    weight = torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
    out = torch.sparse.mm(weight, x.t()) if bias is None else torch.addmm(bias, weight, x.t())
    return out.t().contiguous()


def csr_conv1x1(
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    bias: torch.Tensor | None,
    stride: tuple[int, int],
) -> torch.Tensor:
    """A 1×1 unpadded conv with its ``[out, in]`` weight in CSR (see :func:`csr_linear`)."""
    if tuple(stride) != (1, 1):
        x = x[:, :, :: stride[0], :: stride[1]]
    n, c, h, w = x.shape
    columns = x.transpose(0, 1).reshape(c, -1)
    weight = torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
    out = torch.sparse.mm(weight, columns) if bias is None else torch.addmm(bias, weight, columns)
    return out.reshape(-1, n, h, w).transpose(0, 1).contiguous()


def _choose_csr(
    graph_module: fx.GraphModule, mode: str, layers: dict[str, LayerReport], rounds: int
) -> None:
    if mode == "never":
        return
    modules = _modules(graph_module)
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or node.target not in layers:
            continue
        module, layer = modules[node.target], layers[node.target]
        if not _csr_eligible(node, module):
            continue
        if mode == "auto" and layer.density > CSR_MAX_DENSITY:
            continue
        crow, col, values = csr_arrays(module.weight)
        size = (module.weight.shape[0], module.weight[0].numel())
        bias = None if module.bias is None else module.bias.detach().reshape(-1, 1).clone()
        if mode == "auto":
            x = torch.randn(_shape(node.args[0]))
            layer.dense_ms, layer.csr_ms = _time_layer(module, x, (crow, col, values), bias, rounds)
            if not layer.csr_ms <= CSR_MARGIN * layer.dense_ms:
                continue
        _replace_with_csr(graph_module, node, module, (crow, col, values), size, bias)
        layer.format = "csr"


def _time_layer(
    module: nn.Module,
    x: torch.Tensor,
    arrays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bias: torch.Tensor | None,
    rounds: int,
) -> tuple[float, float]:
    """Median ms per call of ``module(x)`` and of its CSR form, timed side by side."""
    size = (module.weight.shape[0], module.weight[0].numel())
    if isinstance(module, nn.Linear):
        sparse = partial(csr_linear, x, *arrays, size, bias)
    else:
        sparse = partial(csr_conv1x1, x, *arrays, size, bias, tuple(module.stride))
    with torch.inference_mode():
        seconds = interleaved_seconds(
            {"dense": partial(module, x), "csr": sparse}, rounds=rounds, block_seconds=0.002
        )
    return median(seconds["dense"]) * 1e3, median(seconds["csr"]) * 1e3


def _replace_with_csr(
    graph_module: fx.GraphModule,
    node: fx.Node,
    module: nn.Module,
    arrays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    size: tuple[int, int],
    bias: torch.Tensor | None,
) -> None:
    """Rewrite ``node`` (a linear / 1×1 conv call) into the calls of :func:`csr_linear` /
    :func:`csr_conv1x1`, with the CSR arrays (and bias column) as buffers of the graph module."""
    graph = graph_module.graph
    prefix = str(node.target).replace(".", "_") + "_csr"
    names = {}
    for suffix, tensor in zip(("crow", "col", "values", "bias"), (*arrays, bias), strict=True):
        if tensor is not None:
            names[suffix] = f"{prefix}_{suffix}"
            graph_module.register_buffer(names[suffix], tensor)
    x = node.args[0]
    with graph.inserting_before(node):
        crow, col, values = (graph.get_attr(names[s]) for s in ("crow", "col", "values"))
        weight = graph.call_function(
            torch.sparse_csr_tensor, (crow, col, values, size), {"check_invariants": False}
        )
        if isinstance(module, nn.Conv2d):
            if tuple(module.stride) != (1, 1):
                step = (slice(None), slice(None), *(slice(None, None, s) for s in module.stride))
                x = graph.call_function(operator.getitem, (x, step))
            n, h, w = (graph.call_method("size", (x, d)) for d in (0, 2, 3))
            columns = graph.call_method("transpose", (x, 0, 1))
            columns = graph.call_method("reshape", (columns, size[1], -1))
        else:
            columns = graph.call_method("t", (x,))
        if bias is None:
            out = graph.call_function(torch.sparse.mm, (weight, columns))
        else:
            out = graph.call_function(torch.addmm, (graph.get_attr(names["bias"]), weight, columns))
        if isinstance(module, nn.Conv2d):
            out = graph.call_method("reshape", (out, -1, n, h, w))
            out = graph.call_method("transpose", (out, 0, 1))
        else:
            out = graph.call_method("t", (out,))
        out = graph.call_method("contiguous", (out,))
    node.replace_all_uses_with(out)
    graph.erase_node(node)
