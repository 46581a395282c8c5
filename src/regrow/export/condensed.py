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
Rows are padded (index 0, value 0) to a multiple of :data:`LANES` and summed in that many
independent partial sums (:func:`lane_sum`); the gather is ATen's unchecked index
(:func:`unchecked_columns`).

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


LANES = 4
"""Partial sums per row. The loop ``torch.compile`` writes for a gather-multiply-sum is scalar
(inductor does not vectorise a load through uint16 indices) and adds every product into one
accumulator, so the add's latency, not memory, bounds it. Summing ``LANES`` interleaved products
first gives the processor independent adds to overlap: a 4,096 → 4,096 layer at 90 % went
2.1× → 3.9× dense on this repository's CPU (8 lanes measure the same, 16 worse; with the bounds
check gone, :func:`unchecked_columns`, 2 and 8 lanes still measure no better; docs/EXPORT.md)."""


@dataclass
class Packed:
    """A ``[out, in]`` weight by rows: ``values`` / ``indices`` ``[active rows, k]`` (``k`` the
    longest row rounded up to a multiple of :data:`LANES`); ``rows``
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
    """``weight`` (``[out, in]``, or a 1×1 conv's ``[out, in, 1, 1]``; zeros where inactive) as
    :class:`Packed`, rows' indices in ascending order."""
    weight = weight.detach().flatten(1)
    out_features, in_features = weight.shape
    counts = (weight != 0).sum(1)
    active = (counts > 0).nonzero().flatten()
    if len(active) == 0:  # an all-zero layer: one zero row keeps the shapes valid
        active = torch.zeros(1, dtype=torch.long)
    k = -(-max(int(counts.max()), 1) // LANES) * LANES
    dense = F.pad(weight[active], (0, max(k - in_features, 0)))
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
    flat = materialized(x).reshape(-1, x.shape[-1])
    lanes = indices.long().view(indices.shape[0], -1, LANES)
    out = lane_sum(unchecked_columns(flat, lanes) * values.view(lanes.shape))
    if rows is not None:
        out = unchecked_columns(F.pad(out, (0, 1)), rows.long())
    out = out.view(*x.shape[:-1], out.shape[-1])
    return out if bias is None else out + bias


UNSAFE_INDEX = torch.ops.aten._unsafe_index.Tensor
"""The ATen op of :func:`unchecked_columns`, called by name in the export's graph (plain
PyTorch at load time)."""


def unchecked_columns(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``flat[:, index]`` (``flat``: ``[samples, columns]``) as ATen's ``_unsafe_index``: the
    same gather, which ``torch.compile`` writes without a bounds check per element. The indices are
    the export's own, in range by construction; checked, the loop of a condensed layer tests and
    branches on every weight it reads, and runs 1.4–1.6× slower (docs/EXPORT.md). Eager PyTorch
    runs it as ``flat[:, index]``."""
    return UNSAFE_INDEX(flat, [None, index])


def lane_sum(products: torch.Tensor) -> torch.Tensor:
    """``products`` (``[..., rows, k / LANES, LANES]``) summed over its last two dimensions: first
    across the lanes, as independent adds, then along the row (:data:`LANES`)."""
    lanes = [products[..., lane] for lane in range(LANES)]
    while len(lanes) > 1:  # a tree: no add waits for more than one level before it
        lanes = [lanes[i] + lanes[i + 1] for i in range(0, len(lanes), 2)]
    return lanes[0].sum(-1)


BARRIER_COPIES = 16
"""Copies of the input the barrier (:func:`materialized`) takes the maximum of: more than the
reductions inductor unrolls into pointwise code (8), so it stays a reduction whose output is
written to a buffer."""


def materialized(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, as the maximum of :data:`BARRIER_COPIES` copies of it. Under
    ``torch.compile`` a reduction's output is computed into a buffer, so the gather that follows
    reads the layer's input; without it the compiler inlines the op that produced the input (a
    GELU, a layer norm) into the gather and recomputes it for every gathered weight, ``k`` times
    per input (10× slower for a 3,072 → 768 layer after a GELU on this repository's CPU). Inductor
    writes the reduction itself, where a cumulative sum (the barrier before) was a call into
    ATen: 8–15 µs each, 0.4 ms of a 12-block decode step."""
    copies = x.unsqueeze(-1).expand(*x.shape, BARRIER_COPIES)
    return torch.amax(copies, -1)


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
        size = graph.call_method("size", (x,))
    with graph.inserting_after(size):
        shape = graph.call_function(operator.add, (size, (BARRIER_COPIES,)))
    with graph.inserting_after(shape):
        copies = graph.call_method("expand", (unsqueezed, shape))
    with graph.inserting_after(copies):
        out = graph.call_function(torch.amax, (copies, -1))
    unsqueezed.meta["materialized"] = out
    return out


def _lane_sum(graph: fx.Graph, products: fx.Node) -> fx.Node:
    """:func:`lane_sum` of ``products`` spelled out in ``graph`` (no regrow call in the graph)."""
    lanes = [graph.call_function(operator.getitem, (products, (Ellipsis, i))) for i in range(LANES)]
    while len(lanes) > 1:
        pairs = range(0, len(lanes), 2)
        lanes = [graph.call_function(operator.add, (lanes[i], lanes[i + 1])) for i in pairs]
    return graph.call_method("sum", (lanes[0], -1))


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
        shape = _size_with_last(graph, x, out_features)
        out = graph.call_method("reshape", (graph.call_method("t", (out,)), shape))
        if "bias" in get:
            out = graph.call_function(operator.add, (out, graph.get_attr(get["bias"])))
    node.replace_all_uses_with(out)
    graph.erase_node(node)


def _size_with_last(graph: fx.Graph, x: fx.Node, last: int) -> fx.Node:
    """A node of ``x.size()[:-1] + (last,)``: a layer's output shape from its input's."""
    size = graph.call_method("size", (x,))
    leading = graph.call_function(operator.getitem, (size, slice(None, -1)))
    return graph.call_function(operator.add, (leading, (last,)))


def bag_eligible(node: fx.Node, module: nn.Module) -> bool:
    """A linear layer called on one tensor argument (the embedding bag's layers)."""
    single = len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node)
    return single and isinstance(module, nn.Linear)


def replace_with_packed(
    graph_module: fx.GraphModule, node: fx.Node, module: nn.Module, packed: Packed
) -> None:
    """Rewrite ``node`` (a linear or 1×1 conv call, :func:`regrow.export.csr.eligible`) into
    :func:`packed_linear`'s calls, its arrays (and bias) buffers of the graph module. A 1×1 conv is
    the linear layer over its channels: the input's channels moved last (after its stride), the
    output's moved back."""
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
    conv = isinstance(module, nn.Conv2d)
    out_features, in_features = module.weight.shape[:2]
    with graph.inserting_before(node):
        if conv:
            if tuple(module.stride) != (1, 1):
                step = (slice(None), slice(None), *(slice(None, None, s) for s in module.stride))
                x = graph.call_function(operator.getitem, (x, step))
            x = graph.call_method("movedim", (x, 1, -1))
        shape = _size_with_last(graph, x, out_features)
        flat = graph.call_method("reshape", (_materialized(graph, x), -1, in_features))
        lanes = (len(packed.values), -1, LANES)
        indices = graph.call_method("long", (graph.get_attr(names["indices"]),))
        indices = graph.call_method("view", (indices, *lanes))
        gathered = graph.call_function(UNSAFE_INDEX, (flat, [None, indices]))
        values = graph.call_method("view", (graph.get_attr(names["values"]), *lanes))
        out = _lane_sum(graph, graph.call_function(torch.mul, (gathered, values)))
        if "rows" in names:
            rows = graph.call_method("long", (graph.get_attr(names["rows"]),))
            out = graph.call_function(F.pad, (out, (0, 1)))
            out = graph.call_function(UNSAFE_INDEX, (out, [None, rows]))
        out = graph.call_method("view", (out, shape))
        if "bias" in names:
            out = graph.call_function(operator.add, (out, graph.get_attr(names["bias"])))
        if conv:
            out = graph.call_method("movedim", (out, -1, 1))
    node.replace_all_uses_with(out)
    graph.erase_node(node)
