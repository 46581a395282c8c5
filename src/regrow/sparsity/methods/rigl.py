"""RigL: grow where the dense gradient is largest (Evci et al. 2020, Algorithm 1; SPEC §4)."""

from __future__ import annotations

import torch

from ..base import Traits, register
from ..dynamic import DynamicSparsifier


@register
class RigL(DynamicSparsifier):
    """Drop the smallest |w|, grow the largest |∇L| of the effective (masked) weights.

    On an update iteration the batch's dense gradient is used for the update only: :meth:`step`
    returns ``False``, no optimizer step is taken and the step counter does not advance.
    """

    name = "rigl"
    traits = Traits(
        needs_total_steps=True,
        conserves_active_counts=True,
        updates_before_step=True,
        dense_backward="on_update",
    )

    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        param = self.params[index]
        return torch.zeros_like(param) if grad is None else grad.abs()
