"""SNIP: one-shot pruning at the first batch by connection sensitivity (Lee et al. 2019; SPEC §5)."""

from __future__ import annotations

import torch

from ..base import Sparsifier, Traits, register
from ..selection import seeded_generator


@register
class SNIP(Sparsifier):
    """Masks start full; the first batch keeps, per layer, the largest ``|g ⊙ w|`` (layer budgets
    from the distribution) and takes no optimizer step. Then training is static."""

    name = "snip"
    # The one dense batch at step 0 is left out of the closed-form FLOPs (it is counted live).
    traits = Traits(starts_dense=True, updates_before_step=True)

    def update_due(self, step: int) -> bool:
        return step == 0

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        new = []
        for name, p, g in zip(self.names, self.params, grads, strict=True):
            scores = torch.zeros_like(p) if g is None else (g.float() * p.float()).abs()
            generator = seeded_generator(self.seed, step, "snip/" + name, p.device)
            new.append(self.select(name, scores, self.target_counts[name], generator))
        return new
