"""The boolean masks that keep the sparse tensors sparse (which tensors: :mod:`.plan`).

Masks are boolean buffers registered on the module that owns the weight (``<param>_mask``), so a
plain ``model.state_dict()`` saves them too. Applying masks is done with foreach kernels over all
layers at once: one launch per step, no Python loop of tensor operations, no host synchronisation.
"""

from __future__ import annotations

import copy
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


def strip_masks(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` without its ``<param>_mask`` buffers, each masked tensor zeroed where its mask is
    off (training keeps it so already): the plain model with the same weights and outputs, to
    save, publish or export (a Hugging Face model's ``save_pretrained`` then loads into a fresh
    model with no unexpected keys).

    A copy by default; ``inplace=True`` removes the buffers from ``model`` itself (after
    training: a sparsifier keeps its own masks, but the model's state dict no longer carries them).
    """
    plain = model if inplace else copy.deepcopy(model)
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
