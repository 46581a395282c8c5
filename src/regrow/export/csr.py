"""CSR layers of the inference model: the kernels (:func:`csr_linear`, :func:`csr_conv1x1`), which
layers may become CSR, and the graph rewrite (the timed choice is :mod:`.formats`).

A CSR layer keeps its arrays (int32 indices) as plain buffers of the graph module and builds the
sparse tensor per call, so the module copies, moves and saves like any other.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.nn import functional as F

from .graph import foldable, rank_of

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def csr_arrays(weight: torch.Tensor, block: int | None = None) -> Arrays:
    """Row pointers and column indices (int32) and values of ``weight`` as a 2-d CSR matrix, or
    with ``block`` as a BSR matrix of ``block × block`` blocks (values ``[blocks, b, b]``)."""
    matrix = weight.detach().reshape(weight.shape[0], -1)
    matrix = matrix.to_sparse_csr() if block is None else matrix.to_sparse_bsr((block, block))
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
    """``x @ W.T + b`` with ``W`` in CSR (``bias``: a column, ``[out, 1]``; ``x``: ``[..., in]``);
    what a CSR linear layer of the exported model computes (its graph spells the same calls out)."""
    weight = torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
    columns = x.reshape(-1, size[1]).t()
    out = torch.sparse.mm(weight, columns) if bias is None else torch.addmm(bias, weight, columns)
    return out.t().reshape(*x.shape[:-1], size[0]).contiguous()


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


def eligible(node: fx.Node, module: nn.Module) -> bool:
    """A linear layer, or a 1×1 unpadded conv (``groups=1``), on one argument."""
    if not isinstance(node.args[0], fx.Node) or len(node.args) != 1 or node.kwargs:
        return False
    rank = rank_of(node.args[0])
    if isinstance(module, nn.Linear):
        return rank is not None and rank >= 2
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and rank == 4
        and all(k == 1 for k in module.kernel_size)
        and foldable(module)
    )


def replace_with_csr(graph_module: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Rewrite ``node`` (a linear / 1×1 conv call) into the calls of :func:`csr_linear` /
    :func:`csr_conv1x1`, with the CSR arrays (and bias column) as buffers of the graph module."""
    replace_with_compressed(
        graph_module, node, module, csr_arrays(module.weight), torch.sparse_csr_tensor, "csr"
    )


def replace_with_compressed(
    graph_module: fx.GraphModule,
    node: fx.Node,
    module: nn.Module,
    arrays: Arrays,
    constructor: Callable[..., torch.Tensor],
    form: str,
    pad_columns: int = 1,
) -> None:
    """Rewrite ``node`` into ``addmm(bias column, W, input columns)`` with ``W`` built per call by
    ``constructor(crow, col, values, size)`` (CSR or BSR) from ``arrays``, buffers of the graph
    module named after ``form``; ``pad_columns > 1`` pads the input columns with zeros to a
    multiple of it (and drops the padded outputs), for a kernel that is fast only there."""
    size = (module.weight.shape[0], module.weight[0].numel())
    bias = None if module.bias is None else module.bias.detach().reshape(-1, 1).clone()
    graph = graph_module.graph
    prefix = str(node.target).replace(".", "_") + "_" + form
    names = {}
    for suffix, tensor in zip(("crow", "col", "values", "bias"), (*arrays, bias), strict=True):
        if tensor is not None:
            names[suffix] = f"{prefix}_{suffix}"
            graph_module.register_buffer(names[suffix], tensor)
    x = node.args[0]
    with graph.inserting_before(node):
        crow, col, values = (graph.get_attr(names[s]) for s in ("crow", "col", "values"))
        weight = graph.call_function(
            constructor, (crow, col, values, size), {"check_invariants": False}
        )
        if isinstance(module, nn.Conv2d):
            if tuple(module.stride) != (1, 1):
                step = (slice(None), slice(None), *(slice(None, None, s) for s in module.stride))
                x = graph.call_function(operator.getitem, (x, step))
            n, h, w = (graph.call_method("size", (x, d)) for d in (0, 2, 3))
            columns = graph.call_method("transpose", (x, 0, 1))
            columns = graph.call_method("reshape", (columns, size[1], -1))
        else:
            flat = graph.call_method("reshape", (x, -1, size[1]))
            columns = graph.call_method("t", (flat,))
        if pad_columns > 1:
            count = graph.call_method("size", (columns, 1))
            padding = graph.call_function(
                operator.mod, (graph.call_function(operator.neg, (count,)), pad_columns)
            )
            columns = graph.call_function(F.pad, (columns, (0, padding)))
        if bias is None:
            out = graph.call_function(torch.sparse.mm, (weight, columns))
        else:
            out = graph.call_function(torch.addmm, (graph.get_attr(names["bias"]), weight, columns))
        if pad_columns > 1:
            out = graph.call_function(operator.getitem, (out, (slice(None), slice(None, count))))
        if isinstance(module, nn.Conv2d):
            out = graph.call_method("reshape", (out, -1, n, h, w))
            out = graph.call_method("transpose", (out, 0, 1))
        else:  # back to x's leading dimensions
            leading = graph.call_function(
                operator.getitem, (graph.call_method("size", (x,)), slice(None, -1))
            )
            shape = graph.call_function(operator.add, (leading, (size[0],)))
            out = graph.call_method("reshape", (graph.call_method("t", (out,)), shape))
        out = graph.call_method("contiguous", (out,))
    node.replace_all_uses_with(out)
    graph.erase_node(node)
