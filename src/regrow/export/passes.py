"""The graph passes of the export, in the order :func:`~regrow.export.inference.export_model` runs
them: drop identities, remove dead channels, fold batch norms (the CSR rewrite is in :mod:`.csr`).

Each pass keeps the graph module computing what it computed before (in eval mode), up to rounding;
a module called more than once is shared and left alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import fx, nn

from .graph import (
    BATCH_NORMS,
    DROPPED_MODULES,
    call_counts,
    channel_tree,
    foldable,
    is_layer,
    rank_of,
    run_node,
    submodules,
)

#: Why dead rows stay when they feed a padded conv a non-zero constant (``kept_dead``'s reason).
_PADDED_CONSTANT = "they carry a non-zero constant into a padded conv"


def drop_identities(graph_module: fx.GraphModule) -> None:
    """Remove dropout and identity modules (eval semantics): their users read their input."""
    modules = submodules(graph_module)
    for node in list(graph_module.graph.nodes):
        dropped = node.op == "call_module" and isinstance(modules[node.target], DROPPED_MODULES)
        if dropped and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
    graph_module.recompile()


# ------------------------------------------------------------------------ dead channels
def remove_dead_channels(
    graph_module: fx.GraphModule,
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Remove the dead and unused channels of each producer whose channels reach only elementwise
    ops and consumers. Returns producer → ``[dead rows kept, why]`` where dead rows stay, and
    producer → channels removed."""
    modules, calls = submodules(graph_module), call_counts(graph_module)
    kept_dead: dict[str, list[Any]] = {}
    removed: dict[str, int] = {}
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = modules[node.target]
        if not is_layer(producer, rank_of(node)):
            continue
        weight = producer.weight.detach()
        channels = weight.shape[0]
        row_dead = (weight.reshape(channels, -1) == 0).all(1)
        tree = channel_tree(node, modules, calls)
        if isinstance(tree, str):
            if row_dead.any():
                kept_dead[node.target] = [int(row_dead.sum()), tree]
            continue
        elementwise, consumers = tree
        if not consumers:
            continue
        removable, folds = _removable(node, row_dead, elementwise, consumers, modules)
        kept = int((row_dead & ~removable).sum())
        if kept:
            kept_dead[node.target] = [kept, _PADDED_CONSTANT]
        if removable.any():
            kept_channels = _remove(removable, folds, node, elementwise, consumers, modules)
            removed[node.target] = channels - kept_channels
    return kept_dead, removed


Fold = tuple[nn.Module, torch.Tensor, torch.Tensor]  #: consumer, channels to fold, constants


def _removable(
    node: fx.Node,
    row_dead: torch.Tensor,
    elementwise: list[fx.Node],
    consumers: list[fx.Node],
    modules: dict[str, nn.Module],
) -> tuple[torch.Tensor, list[Fold]]:
    """Which of ``node``'s channels can go, and what each consumer must fold into its bias."""
    producer = modules[node.target]
    weight = producer.weight.detach()
    channels = weight.shape[0]
    # The value each dead channel carries: the bias (or 0) through the elementwise ops.
    probe = torch.zeros(channels, dtype=weight.dtype)
    if producer.bias is not None:
        probe = producer.bias.detach().clone()
    values = {node: probe.reshape(1, channels, *([1] * (weight.dim() - 2)))}
    for op in elementwise:
        values[op] = run_node(op, values[op.args[0]], modules)
    removable = torch.ones(channels, dtype=torch.bool)
    folds = []
    for consumer in consumers:
        layer = modules[consumer.target]
        columns = layer.weight.detach().transpose(0, 1).reshape(channels, -1)
        unused = (columns == 0).all(1)
        constant = values[consumer.args[0]].reshape(channels)
        zero = constant == 0
        fold = foldable(layer) & torch.isfinite(constant)
        removable &= unused | (row_dead & (zero | fold))
        folds.append((layer, row_dead & ~unused & ~zero, constant))
    if bool(removable.all()):
        removable[0] = False  # no empty layers
    return removable, folds


def _remove(
    removable: torch.Tensor,
    folds: list[Fold],
    node: fx.Node,
    elementwise: list[fx.Node],
    consumers: list[fx.Node],
    modules: dict[str, nn.Module],
) -> int:
    """Fold, then cut the ``removable`` channels out of producer, batch norms and consumers;
    returns the channels kept."""
    keep = (~removable).nonzero().flatten()
    for layer, folded, constant in folds:
        drop = (folded & removable).nonzero().flatten()
        if len(drop):
            _fold_constant(layer, drop, constant)
    _keep_out(modules[node.target], keep)
    for op in elementwise:
        if op.op == "call_module" and isinstance(modules[op.target], BATCH_NORMS):
            _keep_batch_norm(modules[op.target], keep)
    for consumer in consumers:
        _keep_in(modules[consumer.target], keep)
    return len(keep)


def _fold_constant(layer: nn.Module, channels: torch.Tensor, constant: torch.Tensor) -> None:
    """Add what the constant input ``channels`` contribute to ``layer``'s bias."""
    weight = layer.weight.detach().double()[:, channels]
    per_channel = weight.reshape(weight.shape[0], len(channels), -1).sum(2)
    delta = per_channel @ constant[channels].double()
    bias = layer.bias
    base = torch.zeros_like(delta) if bias is None else bias.detach().double()
    layer.bias = nn.Parameter((base + delta).to(layer.weight.dtype), requires_grad=False)


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


# -------------------------------------------------------------------------- batch norm
def fold_batch_norms(graph_module: fx.GraphModule) -> dict[str, str]:
    """Fold each batch norm into the conv / linear right before it (when that feeds nothing else);
    returns layer → the batch norm folded into it."""
    modules, calls = submodules(graph_module), call_counts(graph_module)
    folded = {}
    for node in list(graph_module.graph.nodes):
        source = _foldable_source(node, modules, calls)
        if source is None:
            continue
        _fold_batch_norm(modules[source.target], modules[node.target])
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
        folded[source.target] = node.target
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return folded


def _foldable_source(
    node: fx.Node, modules: dict[str, nn.Module], calls: Counter[str]
) -> fx.Node | None:
    """The layer node a batch norm ``node`` can fold into: a linear / conv of the matching rank
    that feeds only it (each called once); else ``None``."""
    if node.op != "call_module" or calls[node.target] != 1:
        return None
    norm = modules[node.target]
    if not isinstance(norm, BATCH_NORMS) or norm.running_mean is None:
        return None
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if not isinstance(source, fx.Node) or source.op != "call_module":
        return None
    if len(source.users) != 1 or calls[source.target] != 1:
        return None
    layer = modules[source.target]
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return None
    expected = (2, nn.BatchNorm1d) if isinstance(layer, nn.Linear) else (4, nn.BatchNorm2d)
    if rank_of(source) != expected[0] or not isinstance(norm, expected[1]):
        return None
    return source


def _fold_batch_norm(layer: nn.Module, norm: nn.Module) -> None:
    """``W·γ/σ`` and ``(b-μ)·γ/σ+β`` into ``layer`` (in float64; zeros stay zeros)."""
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
