"""Which tensors are sparse, and the boolean masks that keep them sparse (SPEC §1).

Masks are boolean buffers registered on the module that owns the weight (``<param>_mask``), so a
plain ``model.state_dict()`` saves them too. Applying masks is done with foreach kernels over all
layers at once: one launch per step, no Python loop of tensor operations, no host synchronisation.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import torch
from torch import nn

#: Module types whose ``weight`` is sparse by default.
SPARSE_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)

MASK_SUFFIX = "_mask"


def default_sparse_names(model: nn.Module) -> list[str]:
    """FQNs of the weights of every conv and linear layer, in registration order."""
    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, SPARSE_MODULE_TYPES) and module.weight is not None
    ]


def _matches(pattern: str, param_name: str) -> bool:
    """A ``dense_layers`` entry names a parameter, its module, or a glob over either."""
    module_name = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return any(
        name == pattern or fnmatch.fnmatchcase(name, pattern) for name in (param_name, module_name)
    )


def sparse_parameter_names(
    model: nn.Module,
    dense_layers: Sequence[str] | None = None,
    sparse_layers: Sequence[str] | None = None,
) -> list[str]:
    """The FQNs of the parameters a sparsifier makes sparse (SPEC §1).

    ``sparse_layers`` (default: the weight of every conv/linear layer) are the candidates; from those,
    ``dense_layers`` are kept dense. ``dense_layers=None`` keeps the first candidate (the stem)
    dense, as the paper does; ``dense_layers=[]`` makes every candidate sparse. Entries are module
    names, parameter names or glob patterns; one that matches no candidate is a ``ValueError``.
    """
    params = dict(model.named_parameters())
    if sparse_layers is None:
        candidates = default_sparse_names(model)
    else:
        candidates = []
        for pattern in sparse_layers:
            found = [name for name in params if _matches(pattern, name)]
            if not found:
                raise ValueError(
                    f"sparse_layers entry {pattern!r} matches no parameter; "
                    f"parameters are: {sorted(params)}."
                )
            candidates.extend(name for name in found if name not in candidates)
    if not candidates:
        raise ValueError(
            "the model has no conv or linear layer to make sparse; name tensors with sparse_layers."
        )
    if dense_layers is None:
        return candidates[1:]
    if isinstance(dense_layers, str):
        dense_layers = [dense_layers]
    dense: set[str] = set()
    for pattern in dense_layers:
        found = {name for name in candidates if _matches(pattern, name)}
        if not found:
            raise ValueError(
                f"dense_layers entry {pattern!r} matches no sparse layer; allowed values are "
                f"these names (or module names, or glob patterns over them): {candidates}."
            )
        dense |= found
    return [name for name in candidates if name not in dense]


def owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding ``param_name`` and the attribute name within it."""
    module_name, _, attr = param_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def register_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Register each mask as a persistent buffer ``<param>_mask`` next to its parameter."""
    for name, mask in masks.items():
        module, attr = owner(model, name)
        module.register_buffer(attr + MASK_SUFFIX, mask, persistent=True)


def foreach_mask_(tensors: Iterable[torch.Tensor], masks: Iterable[torch.Tensor]) -> None:
    """Zero ``tensors`` where ``masks`` (same dtype, 0/1 values) are zero, in one foreach launch."""
    tensors, masks = list(tensors), list(masks)
    if tensors:
        torch._foreach_mul_(tensors, masks)
