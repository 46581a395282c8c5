"""The forms structured masks allow (SPEC §19, docs/EXPORT.md): *BSR* for a layer whose non-zeros
fill ``B × B`` blocks of its ``[out, fan_in]`` weight, and *semi-structured* (2:4, CUDA only) for a
linear layer with at most 2 non-zeros in every 4 consecutive inputs.

Both are read from the exported weight itself, not from the run's ``sparsity.structure``: the
weight is what the form stores, it is what the layer holds after dead channels were removed (which
may shift a block grid), and the Python API exports models without a run config. Each form is
offered only on a device where a small probe of PyTorch's kernel ran (:func:`bsr_supported`,
:func:`semi_structured_supported`), so a build without the kernel keeps the other forms.

Invariant: a rewritten layer computes the masked layer's output (exactly up to fp32 rounding for
BSR; within fp16 rounding for semi-structured, whose weight and input are cast to fp16).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import fx, nn
from torch.nn import functional as F

from . import csr

#: Block sizes tried, largest first (a mask of ``B × B`` blocks is one of ``B/2 × B/2`` too).
BLOCK_SIZES = (64, 32, 16, 8, 4, 2)
#: A layer is in blocks of ``B`` when its non-zeros fill at least this share of the blocks that
#: hold any (a block mask fills them all, but for weights that are exactly zero; an unstructured
#: mask at 90 % fills 29 % of its 2 × 2 blocks).
MIN_BLOCK_FILL = 0.75
#: PyTorch's CPU BSR kernel (MKL) takes a path 20–40× slower than dense for most counts of input
#: columns that are not a multiple of 16 (measured, torch 2.13 CPU, blocks 2–32): pad to it.
BSR_COLUMNS = 16
#: ``to_sparse_semi_structured``'s shape rule for fp16 under both its backends (CUTLASS: rows a
#: multiple of 32 and columns of 64; cuSPARSELt: 16 and 16).
SEMI_ROWS, SEMI_COLUMNS = 32, 64


def block_size(weight: torch.Tensor) -> int | None:
    """The largest ``B`` of :data:`BLOCK_SIZES` dividing ``weight``'s ``[out, fan_in]`` view whose
    blocks holding a non-zero are at least :data:`MIN_BLOCK_FILL` full; ``None`` if none is."""
    nonzero = weight.detach().reshape(weight.shape[0], -1) != 0
    rows, columns = nonzero.shape
    count = int(nonzero.sum())
    if count == 0:
        return None
    for b in BLOCK_SIZES:
        if rows % b or columns % b:
            continue
        blocks = nonzero.reshape(rows // b, b, columns // b, b).any(3).any(1)
        if count >= MIN_BLOCK_FILL * int(blocks.sum()) * b * b:
            return b
    return None


def bsr_linear(
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ W.T + b`` with ``W`` in BSR (``bias``: a column, ``[out, 1]``; ``x``: ``[..., in]``):
    what a BSR linear layer of the exported model computes (its graph spells the same calls)."""
    weight = torch.sparse_bsr_tensor(crow, col, values, size, check_invariants=False)
    columns = x.reshape(-1, size[1]).t()
    count = columns.shape[1]
    columns = F.pad(columns, (0, -count % BSR_COLUMNS))
    out = torch.sparse.mm(weight, columns) if bias is None else torch.addmm(bias, weight, columns)
    return out[:, :count].t().reshape(*x.shape[:-1], size[0]).contiguous()


@functools.cache
def bsr_supported(device: torch.device) -> bool:
    """Whether ``addmm`` with a BSR weight runs on ``device`` (a 4 × 4 probe, once per device)."""
    try:
        weight = torch.eye(4, device=device).to_sparse_bsr((2, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = torch.addmm(
                torch.zeros(4, 1, device=device), weight, torch.ones(4, 16, device=device)
            )
        return bool((out == 1).all())
    except (RuntimeError, NotImplementedError):
        return False


def bsr_eligible(node: fx.Node, module: nn.Module, device: torch.device) -> bool:
    """A layer the CSR form takes (:func:`~.csr.eligible`) whose weight is in blocks, on a device
    with PyTorch's BSR ``addmm``."""
    return (
        csr.eligible(node, module)
        and block_size(module.weight) is not None
        and bsr_supported(torch.device(device))
    )


def replace_with_bsr(graph_module: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    """Rewrite ``node`` into the calls of :func:`bsr_linear` (a 1×1 conv: the CSR form's columns,
    :func:`~.csr.csr_conv1x1`, with a BSR weight), arrays and bias column buffers of the graph
    module."""
    b = block_size(module.weight)
    assert b is not None, "replace_with_bsr needs a weight in blocks (bsr_eligible)"
    arrays = csr.csr_arrays(module.weight, b)
    csr.replace_with_compressed(
        graph_module, node, module, arrays, torch.sparse_bsr_tensor, "bsr", BSR_COLUMNS
    )


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every 4 consecutive weights of each row (``[out, in]``)."""
    rows, columns = weight.shape
    if columns % 4:
        return False
    groups = (weight.detach() != 0).reshape(rows, columns // 4, 4).sum(-1)
    return bool((groups <= 2).all())


@functools.cache
def semi_structured_supported(device: torch.device) -> bool:
    """Whether ``to_sparse_semi_structured`` and a linear with it run on ``device``: a CUDA device
    of compute capability 8.0 (Ampere) or newer, probed once with a 64 × 64 fp16 weight."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        if torch.cuda.get_device_capability(device) < (8, 0):
            return False
        weight = torch.tensor([1.0, 0.0, 1.0, 0.0], device=device).repeat(SEMI_COLUMNS, 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sparse = torch.sparse.to_sparse_semi_structured(weight.half().contiguous())
            x = torch.ones(8, SEMI_COLUMNS, device=device, dtype=torch.float16)
            out = F.linear(x, sparse)
        return bool((out == 32).all())
    except (RuntimeError, NotImplementedError, ValueError):
        return False


def semi_structured_eligible(node: fx.Node, module: nn.Module, device: torch.device) -> bool:
    """A linear layer on one input, 2:4 along its inputs, of a shape ``to_sparse_semi_structured``
    takes, on a device where it runs."""
    if not csr.eligible(node, module) or not isinstance(module, nn.Linear):
        return False
    out_features, in_features = module.weight.shape
    return (
        out_features % SEMI_ROWS == 0
        and in_features % SEMI_COLUMNS == 0
        and is_two_four(module.weight)
        and semi_structured_supported(torch.device(device))
    )


def replace_with_semi_structured(
    graph_module: fx.GraphModule, node: fx.Node, module: nn.Linear
) -> None:
    """Rewrite ``node`` into ``F.linear(x.half(), W, b.half()).to(x.dtype)`` with ``W`` the fp16
    weight compressed by ``to_sparse_semi_structured`` (a buffer of the graph module: it saves
    and loads with ``torch.save`` / ``torch.load``, its class being PyTorch's)."""
    weight = module.weight.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = torch.sparse.to_sparse_semi_structured(weight.half().contiguous())
    prefix = str(node.target).replace(".", "_") + "_semi_structured"
    graph_module.register_buffer(f"{prefix}_weight", sparse)
    args: list[fx.Node] = []
    graph = graph_module.graph
    with graph.inserting_before(node):
        x = graph.call_method("to", (node.args[0], torch.float16))
        args = [x, graph.get_attr(f"{prefix}_weight")]
        if module.bias is not None:
            graph_module.register_buffer(f"{prefix}_bias", module.bias.detach().half().clone())
            args.append(graph.get_attr(f"{prefix}_bias"))
        out = graph.call_function(F.linear, tuple(args))
        out = graph.call_method("to", (out, weight.dtype))
    node.replace_all_uses_with(out)
    graph.erase_node(node)
