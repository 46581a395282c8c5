"""torch.fx helpers the export passes share: submodules and how often each is called, tensor ranks
and shapes (after :func:`propagate_shapes`), and which nodes a producer's channels reach.

Shapes are read from ``node.meta["tensor_meta"]``, so a pass that changes layer sizes must
propagate shapes again before the next one reads them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

#: The export's outputs must agree within ``TOLERANCE × (1 + max |reference output|)``.
TOLERANCE = 1e-4

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
DROPPED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
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


def checked_difference(
    expected: torch.Tensor, got: torch.Tensor, what: str, tolerance: float = TOLERANCE
) -> float:
    """The largest absolute difference of the masked model's and the export's outputs;
    ``RuntimeError`` naming ``what`` differs if it exceeds ``tolerance`` (default
    :data:`TOLERANCE`) × (1 + the largest expected output)."""
    if expected.shape != got.shape:
        raise RuntimeError(f"export changed the output shape: {expected.shape} → {got.shape}")
    if not expected.numel():
        return 0.0
    diff = float((expected - got).abs().max())
    bound = tolerance * (1.0 + float(expected.abs().max()))
    if not diff <= bound:
        raise RuntimeError(
            f"{what} differ from the masked model's by {diff:.3g} (> {bound:.3g}): this is a bug "
            "in regrow.export; export with --formats dense to narrow it."
        )
    return diff


def submodules(graph_module: fx.GraphModule) -> dict[str, nn.Module]:
    return dict(graph_module.named_modules())


def call_counts(graph_module: fx.GraphModule) -> Counter[str]:
    """How many times each submodule is called (a module called twice is shared: left alone)."""
    return Counter(n.target for n in graph_module.graph.nodes if n.op == "call_module")


def rank_of(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def shape_of(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def propagate_shapes(graph_module: fx.GraphModule, *inputs: Any) -> None:
    graph_module.recompile()
    ShapeProp(graph_module).propagate(*inputs)


def finish(graph_module: fx.GraphModule) -> None:
    """Drop dead nodes and unused submodules, check the graph and regenerate its code."""
    graph_module.graph.eliminate_dead_code(is_impure_node=_is_impure)
    graph_module.graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()


def _is_impure(node: fx.Node) -> bool:
    # fx counts method calls as pure; an in-place one (a decode step's cache write) is not.
    in_place = node.op == "call_method" and str(node.target).endswith("_")
    return in_place or node.is_impure()


def is_layer(module: nn.Module, rank: int | None) -> bool:
    """A conv layer whose channels are dimension 1 of a tensor of this rank, or a linear layer
    (its channels the last dimension of any rank)."""
    if isinstance(module, nn.Linear):
        return rank is not None and rank >= 2
    return isinstance(module, nn.Conv2d) and module.groups == 1 and rank == 4


def foldable(module: nn.Module) -> bool:
    """A consumer that sees a constant input channel as a constant: linear, 1×1 unpadded conv."""
    if isinstance(module, nn.Linear):
        return True
    padding = module.padding
    unpadded = padding == "valid" or all(p == 0 for p in padding)
    return all(k == 1 for k in module.kernel_size) and unpadded


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


def is_elementwise(
    node: fx.Node,
    source: fx.Node,
    modules: dict[str, nn.Module],
    calls: Counter[str],
    rank: int | None = None,
) -> bool:
    """Whether ``node`` maps each channel of ``source`` on its own, keeping the shape: a batch norm
    with running statistics called once (channels at dimension 1 of a rank-2 or rank-4
    ``source``), or an activation, reading ``source`` only."""
    if not node.args or node.args[0] is not source:
        return False
    if _has_node([*node.args[1:], *node.kwargs.values()]):
        return False
    if _inplace(node, modules) and len(source.users) > 1:
        return False
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, BATCH_NORMS):
            at_dim_1 = rank in (2, 4)
            return at_dim_1 and calls[node.target] == 1 and module.running_mean is not None
        return isinstance(module, _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def is_consumer(
    node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], calls: Counter[str], rank: int
) -> bool:
    """Whether ``node`` is a conv / linear layer (called once) reading ``source`` as its input."""
    if node.op != "call_module" or node.args != (source,) or node.kwargs:
        return False
    return calls[node.target] == 1 and is_layer(modules[node.target], rank)


def channel_tree(
    producer: fx.Node, modules: dict[str, nn.Module], calls: Counter[str]
) -> tuple[list[fx.Node], list[fx.Node]] | str:
    """The elementwise nodes (in order) and the consumers that ``producer``'s channels reach, or,
    when they reach anything else, a short reason naming it."""
    rank = rank_of(producer)
    assert rank is not None
    elementwise, consumers, frontier = [], [], [producer]
    while frontier:
        source = frontier.pop(0)
        for user in source.users:
            if is_consumer(user, source, modules, calls, rank):
                consumers.append(user)
            elif is_elementwise(user, source, modules, calls, rank):
                elementwise.append(user)
                frontier.append(user)
            else:
                return f"its channels feed {_describe(user)}"
    return elementwise, consumers


def _describe(node: fx.Node) -> str:
    """``node`` for a message: the model's output, or its name and what it calls."""
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"{node.target}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if target == "getattr" and len(node.args) > 1:
        target = f"getattr .{node.args[1]}"
    return f"{node.name} ({target})" if target else node.name


def run_node(node: fx.Node, value: torch.Tensor, modules: dict[str, nn.Module]) -> torch.Tensor:
    """``node`` applied to ``value`` alone (an elementwise node: its other arguments are not nodes)."""
    value = value.clone()
    if node.op == "call_module":
        return modules[node.target](value)
    if node.op == "call_function":
        return node.target(value, *node.args[1:], **node.kwargs)
    return getattr(value, node.target)(*node.args[1:], **node.kwargs)
