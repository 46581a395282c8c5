"""The boolean masks that keep the sparse tensors sparse (which tensors: :mod:`.plan`).

Masks are boolean buffers registered on the module that owns the weight (``<param>_mask``), so a
plain ``model.state_dict()`` saves them too. Applying masks is done with foreach kernels over all
layers at once: one launch per step, no Python loop of tensor operations, no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

MASK_SUFFIX = "_mask"


def owner(model: nn.Module, param_name: str) -> tuple[nn.Module, str]:
    """The module holding ``param_name`` and the attribute name within it."""
    module_name, _, attr = param_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def has_mask(model: nn.Module, param_name: str) -> bool:
    """Whether ``param_name`` already has a mask buffer (a sparsifier was built on the model)."""
    module, attr = owner(model, param_name)
    return attr + MASK_SUFFIX in dict(module.named_buffers(recurse=False))


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
