"""Gradual magnitude pruning, dense to sparse (Zhu & Gupta 2017; SPEC §5)."""

from __future__ import annotations

from typing import Any

import torch

from ..base import Sparsifier, register, seeded_generator, topk_mask
from ..schedules import PAPER_PRUNE_BEGIN, PAPER_PRUNE_END, gmp_active_count, scaled_step


@register
class Pruning(Sparsifier):
    """Start dense; after the optimizer step at ``prune_begin``, every ``delta_t`` steps (default
    1,000) and at ``prune_end``, cut each layer to ``N − round_down((N − K)(1 − (1 − p)^3))`` weights
    by removing its smallest |w|, where ``K`` is the layer's final budget from the distribution.

    ``prune_begin``/``prune_end`` default to the paper's 20,000 and 75,000 of 97,656 CIFAR steps,
    scaled to ``total_steps`` (so a ×M run scales them too).
    """

    name = "pruning"
    starts_dense = True
    needs_total_steps = True
    default_delta_t = 1000

    def __init__(
        self,
        *args: Any,
        prune_begin: int | None = None,
        prune_end: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        assert self.total_steps is not None
        self.prune_begin = (
            scaled_step(PAPER_PRUNE_BEGIN, self.total_steps) if prune_begin is None else prune_begin
        )
        self.prune_end = (
            scaled_step(PAPER_PRUNE_END, self.total_steps) if prune_end is None else prune_end
        )
        if not 0 <= self.prune_begin <= self.prune_end:
            raise ValueError(
                f"prune_begin={self.prune_begin}, prune_end={self.prune_end}: allowed values are "
                "0 <= prune_begin <= prune_end."
            )

    def update_due(self, step: int) -> bool:
        in_window = self.prune_begin <= step <= self.prune_end
        on_grid = (step - self.prune_begin) % self.delta_t == 0
        return in_window and (on_grid or step == self.prune_end)

    def scheduled_counts(self, step: int) -> dict[str, int]:
        """Active weights of each layer after a pruning step at ``step``."""
        return {
            name: gmp_active_count(
                step, p.numel(), self.target_counts[name], self.prune_begin, self.prune_end
            )
            for name, p in zip(self.names, self.params, strict=True)
        }

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        counts = self.scheduled_counts(step)
        new = []
        for name, p, active in zip(self.names, self.params, self._active, strict=True):
            mask = self.masks[name]
            generator = seeded_generator(self.seed, step, "prune/" + name, p.device)
            count = min(counts[name], active)
            new.append(topk_mask(p.abs(), count, generator, excluded=~mask))
        return new
