"""Condensed and ELL linear layers of the inference model: each output neuron keeps only its
active weights and their input indices, ``values[r, j]`` and ``indices[r, j]``, and computes
``y[..., r] = Σ_j values[r, j] · x[..., indices[r, j]]`` by gather, multiply and sum.

- *condensed*: every active row holds the same number ``k`` of weights (an SRigL layer's constant
  fan-in), so ``[rows, k]`` holds exactly the layer's weights;
- *ELL*: rows of different fan-in (RigL, SET), padded to the largest with index 0 and value 0.

Empty rows (ablated neurons) are not stored: the layer computes its active rows and spreads them
back over its outputs (``rows`` maps each output to its active row, or to a zero column), so the
output keeps the layer's width. Indices are stored in the smallest unsigned type that holds the
input size (uint8, uint16, else int32): at batch 1 the layer is limited by the bytes it reads.

In the graph the layer is spelled out in ``torch`` calls on buffers of the graph module (no regrow
import at load time); :func:`packed_linear` is the same computation as one function. Eager PyTorch
materialises the gathered ``[..., rows, k]`` tensor; under ``torch.compile`` the gather, multiply
and sum fuse into one loop, which is where this form is fast (docs/EXPORT.md).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F


def index_dtype(size: int) -> torch.dtype:
    """The smallest index type that holds ``0 … size - 1``."""
    if size <= 1 << 8:
        return torch.uint8
    if size <= 1 << 16:
        return torch.uint16
    return torch.int32


@dataclass
class Packed:
    """A ``[out, in]`` weight by rows: ``values`` / ``indices`` ``[active rows, k]``; ``rows``
    (``None`` when every row is active) maps each output to its active row, or to ``active rows``
    (a zero column) for an empty one; ``constant``: every active row holds exactly ``k`` weights."""

    values: torch.Tensor
    indices: torch.Tensor
    rows: torch.Tensor | None
    constant: bool

    @property
    def format(self) -> str:
        return "condensed" if self.constant else "ell"


def pack_rows(weight: torch.Tensor) -> Packed:
    """``weight`` (``[out, in]``, zeros where inactive) as :class:`Packed`, rows' indices in
    ascending order."""
    weight = weight.detach()
    out_features, in_features = weight.shape
    counts = (weight != 0).sum(1)
    active = (counts > 0).nonzero().flatten()
    if len(active) == 0:  # an all-zero layer: one zero row keeps the shapes valid
        active = torch.zeros(1, dtype=torch.long)
    k = max(int(counts.max()), 1)
    dense = weight[active]
    # Stable sort puts each row's nonzeros first, in column order; padding is column 0, value 0.
    order = torch.sort((dense == 0).to(torch.int8), dim=1, stable=True).indices[:, :k]
    values = torch.gather(dense, 1, order)
    indices = torch.where(values != 0, order, torch.zeros_like(order))
    rows = None
    if int(counts.min()) == 0:  # empty rows read the zero column, ``len(active)``
        rows = torch.full((out_features,), len(active), dtype=torch.long)
        rows[active] = torch.arange(len(active))
        rows[counts == 0] = len(active)  # an all-zero layer's stand-in row 0 too
        rows = rows.to(index_dtype(len(active) + 1))
    live = counts[counts > 0]
    constant = len(live) > 0 and bool((live == live[0]).all())
    return Packed(values.contiguous(), indices.to(index_dtype(in_features)), rows, constant)


def packed_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    rows: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ W.T + b`` with ``W`` packed (:func:`pack_rows`); ``x``: ``[..., in]``."""
    out = (materialized(x)[..., indices.long()] * values).sum(-1)
    if rows is not None:
        out = F.pad(out, (0, 1))[..., rows.long()]
    return out if bias is None else out + bias


def materialized(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself: a cumulative sum over a new dimension of size 1 is the identity. Under
    ``torch.compile`` it is computed into a buffer, so the gather that follows reads the layer's
    input; without it the compiler inlines the op that produced the input (a GELU, a layer norm)
    into the gather and recomputes it for every gathered weight, ``k`` times per input (10× slower
    for a 3,072 → 768 layer after a GELU on this repository's CPU)."""
    return torch.cumsum(x.unsqueeze(-1), -1).squeeze(-1)


def _materialized(graph: fx.Graph, x: fx.Node) -> fx.Node:
    """:func:`materialized` of ``x`` in ``graph``: once per input shared by several layers (the
    query, key and value), and not at all for a graph input, which is a buffer already."""
    if x.op == "placeholder":
        return x
    for user in x.users:
        if "materialized" in user.meta:  # the unsqueeze of an earlier layer's barrier
            return user.meta["materialized"]
    with graph.inserting_after(x):
        unsqueezed = graph.call_method("unsqueeze", (x, -1))
    with graph.inserting_after(unsqueezed):
        summed = graph.call_function(torch.cumsum, (unsqueezed, -1))
    with graph.inserting_after(summed):
        out = graph.call_method("squeeze", (summed, -1))
    unsqueezed.meta["materialized"] = out
    return out


def bag_arrays(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight`` (``[out, in]``) as the input of :func:`bag_linear`: every non-zero's column
    (int32, row by row), each row's start in that list (int32), and the values."""
    weight = weight.detach()
    rows, columns = (weight != 0).nonzero(as_tuple=True)  # row by row, columns ascending
    counts = torch.bincount(rows, minlength=weight.shape[0])
    offsets = torch.cumsum(counts, 0) - counts
    values = weight[rows, columns].clone()
    return columns.to(torch.int32), offsets.to(torch.int32), values


def bag_linear(
    x: torch.Tensor,
    columns: torch.Tensor,
    offsets: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ W.T + b`` as one ``F.embedding_bag`` call: output ``o`` of every sample sums the
    ``x`` columns of row ``o``'s non-zeros, weighted by their values (:func:`bag_arrays`), over
    the table ``x.T`` (``[in, samples]``). PyTorch's CPU kernel for it gathers whole table rows,
    so it pays with many samples at once (batch 32), where gathering one value per weight does
    not."""
    flat = x.reshape(-1, x.shape[-1])
    table = flat.t().contiguous()
    out = F.embedding_bag(columns, table, offsets, mode="sum", per_sample_weights=values)
    out = out.t().reshape(*x.shape[:-1], offsets.shape[0])
    return out if bias is None else out + bias


def replace_with_bag(graph_module: fx.GraphModule, node: fx.Node, module: nn.Linear) -> None:
    """Rewrite ``node`` (a linear call) into :func:`bag_linear`'s calls, its arrays (and bias)
    buffers of the graph module."""
    graph = graph_module.graph
    prefix = str(node.target).replace(".", "_") + "_bag"
    arrays = dict(zip(("columns", "offsets", "values"), bag_arrays(module.weight), strict=True))
    if module.bias is not None:
        arrays["bias"] = module.bias.detach().clone()
    for name, tensor in arrays.items():
        graph_module.register_buffer(f"{prefix}_{name}", tensor)
    get = {name: f"{prefix}_{name}" for name in arrays}
    x = node.args[0]
    out_features = module.weight.shape[0]
    with graph.inserting_before(node):
        flat = graph.call_method("reshape", (x, -1, module.weight.shape[1]))
        table = graph.call_method("contiguous", (graph.call_method("t", (flat,)),))
        out = graph.call_function(
            F.embedding_bag,
            (graph.get_attr(get["columns"]), table, graph.get_attr(get["offsets"])),
            {"mode": "sum", "per_sample_weights": graph.get_attr(get["values"])},
        )
        size = graph.call_method("size", (x,))
        shape = graph.call_function(
            operator.add,
            (graph.call_function(operator.getitem, (size, slice(None, -1))), (out_features,)),
        )
        out = graph.call_method("reshape", (graph.call_method("t", (out,)), shape))
        if "bias" in get:
            out = graph.call_function(operator.add, (out, graph.get_attr(get["bias"])))
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def eligible(node: fx.Node, module: nn.Module) -> bool:
    """A linear layer called on one tensor argument."""
    single = len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node)
    return single and isinstance(module, nn.Linear)


def replace_with_packed(
    graph_module: fx.GraphModule, node: fx.Node, module: nn.Linear, packed: Packed
) -> None:
    """Rewrite ``node`` (a linear call) into :func:`packed_linear`'s calls, its arrays (and bias)
    buffers of the graph module."""
    graph = graph_module.graph
    prefix = str(node.target).replace(".", "_") + "_" + packed.format
    bias = None if module.bias is None else module.bias.detach().clone()
    names = {}
    for suffix, tensor in (
        ("values", packed.values),
        ("indices", packed.indices),
        ("rows", packed.rows),
        ("bias", bias),
    ):
        if tensor is not None:
            names[suffix] = f"{prefix}_{suffix}"
            graph_module.register_buffer(names[suffix], tensor)
    x = node.args[0]
    with graph.inserting_before(node):
        x = _materialized(graph, x)
        indices = graph.call_method("long", (graph.get_attr(names["indices"]),))
        gathered = graph.call_function(operator.getitem, (x, (Ellipsis, indices)))
        product = graph.call_function(torch.mul, (gathered, graph.get_attr(names["values"])))
        out = graph.call_method("sum", (product, -1))
        if "rows" in names:
            rows = graph.call_method("long", (graph.get_attr(names["rows"]),))
            out = graph.call_function(F.pad, (out, (0, 1)))
            out = graph.call_function(operator.getitem, (out, (Ellipsis, rows)))
        if "bias" in names:
            out = graph.call_function(operator.add, (out, graph.get_attr(names["bias"])))
    node.replace_all_uses_with(out)
    graph.erase_node(node)
