"""What a layer is to the plan: which modules hold a sparse candidate, how a weight's rows (output
neurons) and fan-in are read, which parameters are one tensor under several names, and which
layer the input meets first.

**Rows and fan-in.** A weight is read as ``[out, fan_in]``: row ``r`` holds the weights of output
neuron ``r``. PyTorch stores its layers output-first (``nn.Linear`` ``[out, in]``, a conv
``[c_out, c_in, k_h, k_w]``), so the rows are the first dimension and the fan-in the product of
the others. A *transposed linear* layer stores its weight ``[in, out]`` and computes
``x @ weight + bias``; its rows are the weight's columns and its fan-in is ``weight.shape[0]``.
That is Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2 and the GPT family compute
every projection with it), recognised without importing ``transformers`` (an optional extra) by
duck typing: a module whose class is named ``Conv1D`` with a 2-D ``weight`` of shape
``[in, out] = [weight.shape[0], module.nf]``. A layer of another library with the same layout
says so through a small protocol: a class attribute ``weight_layout = "in_out"`` (and a 2-D
``weight``). Such a layer is a linear layer everywhere else: a default sparse candidate, a linear
layer to the FLOP counter (``fan_in = in``), and the densities of uniform, ER and ERK do not
depend on the layout (their scores are symmetric in ``in`` and ``out``).

**Shared tensors.** A parameter registered under several names (an output head tied to the token
embedding) is one tensor, listed by ``named_parameters`` under its first name only:
:func:`parameter_names` maps every name to that one.

**The first layer the input meets.** Without an example input the plan cannot trace the forward
pass, so registration order stands in for it: when an embedding (``nn.Embedding``,
``nn.EmbeddingBag``) comes before every candidate, the input meets the embedding first
(:func:`input_meets_embedding_first`: a transformer), and nothing beyond the embeddings is the
"first layer" the default keeps dense.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: Module types whose ``weight`` is a sparse candidate by default (besides transposed linears).
SPARSE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Projection weights of ``nn.MultiheadAttention`` (which of them exist depends on its dims).
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: The value of a module's ``weight_layout`` attribute that declares a ``[in, out]`` weight.
IN_OUT = "in_out"
#: Module types the input may meet first (looked up, never sparse by default).
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer whose 2-D weight is stored ``[in, out]``:
    ``transformers``' ``Conv1D`` (class name ``Conv1D``, ``nf == weight.shape[1]``) or a module
    declaring ``weight_layout = "in_out"``."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return False
    if getattr(module, "weight_layout", None) == IN_OUT:
        return True
    return type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == weight.shape[1]


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transposed linear layer (:func:`is_transposed_linear`)."""
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


def candidate_weights(module: nn.Module) -> list[str]:
    """The names (within ``module``) of its own default sparse candidates: ``weight`` of a
    conv/linear layer (a transposed linear included), the input projections of
    ``nn.MultiheadAttention``; ``[]`` for anything else."""
    if isinstance(module, SPARSE_MODULE_TYPES) or is_transposed_linear(module):
        return ["weight"] if getattr(module, "weight", None) is not None else []
    if isinstance(module, nn.MultiheadAttention):
        return [name for name in ATTENTION_WEIGHTS if getattr(module, name) is not None]
    return []


def input_meets_embedding_first(model: nn.Module) -> bool:
    """Whether an embedding comes before every default candidate in registration order: the
    input (token ids) meets the embedding first, so no candidate is the model's first layer."""
    for module in model.modules():
        if isinstance(module, EMBEDDING_TYPES):
            return True
        if candidate_weights(module):
            return False
    return False


def parameter_names(model: nn.Module) -> dict[str, str]:
    """Every name of every parameter (a shared tensor under each of its names) → the name
    ``named_parameters`` lists it under (its first)."""
    first: dict[int, str] = {}
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names[name] = first.setdefault(id(param), name)
    return names


def transposed_parameters(model: nn.Module) -> set[str]:
    """The (first) names of the parameters that are the weight of a transposed linear layer."""
    ids = {id(m.weight) for m in model.modules() if is_transposed_linear(m)}
    return {name for name, param in model.named_parameters() if id(param) in ids}


def fan_in_shape(shape: Iterable[int], transposed: bool = False) -> tuple[int, int]:
    """``(out, fan_in)`` of a weight: its first dimension and the product of the others, or for a
    transposed linear (``[in, out]``) its second and its first."""
    dims = [int(d) for d in shape]
    if transposed:
        return dims[1], dims[0]
    return dims[0], math.prod(dims[1:])


def rows_view(tensor: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """``tensor`` (a weight, its mask, gradient or scores) as ``[out, fan_in]``: a view, one row
    per output neuron."""
    return tensor.t() if transposed else tensor.reshape(tensor.shape[0], -1)


def from_rows(
    rows: torch.Tensor, shape: torch.Size | tuple[int, ...], transposed: bool = False
) -> torch.Tensor:
    """The inverse of :func:`rows_view`: ``[out, fan_in]`` back to the weight's ``shape``
    (contiguous)."""
    return rows.t().contiguous() if transposed else rows.reshape(shape)
