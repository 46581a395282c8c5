"""RigL: grow where the dense gradient is largest (Evci et al. 2020, Algorithm 1; SPEC §4)."""

from __future__ import annotations

from ..base import register
from ..gradient_growth import GradientGrowthSparsifier


@register
class RigL(GradientGrowthSparsifier):
    """Drop the smallest |w|, grow the largest |∇L| of the effective (masked) weights.

    On an update iteration the batch's dense gradient is used for the update only: :meth:`step`
    returns ``False``, no optimizer step is taken and the step counter does not advance. With
    ``grad_accumulation=N`` the gradient is averaged with the N − 1 batches before it
    (:mod:`regrow.sparsity.gradient_growth`).
    """

    name = "rigl"
