"""SET: grow at random (Mocanu et al. 2018; SPEC §4)."""

from __future__ import annotations

import torch

from ..base import register
from ..dynamic import DynamicSparsifier
from ..selection import seeded_generator


@register
class SET(DynamicSparsifier):
    """Drop the smallest |w| after the optimizer step, grow uniformly at random (seeded)."""

    name = "set"

    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        param = self.params[index]
        generator = seeded_generator(self.seed, step, "random/" + self.names[index], param.device)
        return torch.rand(param.shape, generator=generator, device=param.device)
