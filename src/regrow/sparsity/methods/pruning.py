"""Gradual magnitude pruning, dense to sparse (Zhu & Gupta 2017; SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..args import MethodArgs, arg, at_least
from ..base import Sparsifier, Traits, register
from ..distributions import Densities, resolve_densities
from ..plan import AllocationPlan
from ..schedules import PruningSchedule, pruning_segments
from ..selection import seeded_generator, topk_mask
from ..structure import STRUCTURES


@dataclass(frozen=True)
class PruningArgs(MethodArgs):
    delta_t: int = arg(1000, "optimizer steps between pruning steps", at_least(1))
    prune_begin: int | None = arg(
        None,
        "first pruning step (None: the paper's 20,000 of 97,656, scaled to the run)",
        at_least(0),
    )
    prune_end: int | None = arg(
        None,
        "last pruning step (None: the paper's 75,000 of 97,656, scaled to the run)",
        at_least(0),
    )
    scope: str = arg(
        "layer",
        "layer: each layer to its own target (docs/SPEC.md §5); global: one magnitude threshold over all "
        "sparse layers (the reproducibility report's baseline)",
        choices=("layer", "global"),
    )


@register
class Pruning(Sparsifier):
    """Start dense; after the optimizer step at ``prune_begin``, every ``delta_t`` steps and at
    ``prune_end``, remove the smallest |w| down to the cubic schedule's count.

    ``scope="layer"``: a layer of ``N`` weights keeps ``N − round_down((N − K)(1 − (1 − p)^3))``,
    ``K`` its final budget from the distribution. ``scope="global"``: the same count over all sparse
    layers together (``N``, ``K`` summed), with one threshold, so each layer ends where its weights'
    magnitudes put it.
    """

    name = "pruning"
    Args = PruningArgs
    traits = Traits(starts_dense=True, needs_total_steps=True)
    args: PruningArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.total_steps is not None
        self.schedule = self.schedule_for(self.args, self.total_steps)

    @staticmethod
    def schedule_for(args: PruningArgs, total_steps: int) -> PruningSchedule:
        return PruningSchedule.for_run(total_steps, args.prune_begin, args.prune_end, args.delta_t)

    @classmethod
    def mean_inference_flops(
        cls, profile: Any, plan: AllocationPlan, args: MethodArgs, total_steps: int
    ) -> float:
        assert isinstance(args, PruningArgs)
        if args.scope == "global":
            raise ValueError(
                "training FLOPs of scope=global pruning depend on where the trained weights put "
                "each layer: they are measured during training (train_flops in summary.json), "
                "not known in closed form. Use scope=layer here."
            )
        return pruning_mean_flops(profile, plan, cls.schedule_for(args, total_steps))

    def supported_structures(self) -> tuple[str, ...]:
        # One threshold over all layers compares single weights: no structure (SPEC §19).
        return STRUCTURES if self.args.scope == "layer" else ("unstructured",)

    def update_due(self, step: int) -> bool:
        return self.schedule.is_pruning_step(step)

    def scheduled_counts(self, step: int) -> dict[str, int]:
        """Active weights of each layer after a layer-scope pruning step at ``step`` (rounded down
        to the structure's units, SPEC §19)."""
        return {
            name: self.round_count(
                name, self.schedule.active_count(step, p.numel(), self.target_counts[name])
            )
            for name, p in zip(self.names, self.params, strict=True)
        }

    def scheduled_total(self, step: int) -> int:
        """Active weights over all sparse layers after a pruning step at ``step``."""
        size = sum(p.numel() for p in self.params)
        return self.schedule.active_count(step, size, sum(self.target_counts.values()))

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        if self.args.scope == "global":
            return self._global_masks(step)
        counts = self.scheduled_counts(step)
        new = []
        for name, p, active in zip(self.names, self.params, self._active, strict=True):
            generator = seeded_generator(self.seed, step, "prune/" + name, p.device)
            count = min(counts[name], active)
            new.append(self.select(name, p.abs(), count, generator, excluded=~self.masks[name]))
        return new

    def _global_masks(self, step: int) -> list[torch.Tensor]:
        magnitudes = torch.cat([p.detach().abs().reshape(-1).float() for p in self.params])
        active = torch.cat([self.masks[name].reshape(-1) for name in self.names])
        count = min(self.scheduled_total(step), sum(self._active))
        generator = seeded_generator(self.seed, step, "prune/global", magnitudes.device)
        kept = topk_mask(magnitudes, count, generator, excluded=~active)
        return [
            piece.view(p.shape)
            for piece, p in zip(
                kept.split([p.numel() for p in self.params]), self.params, strict=True
            )
        ]


def pruning_mean_flops(
    profile: Any,
    final_densities: Densities,
    schedule: PruningSchedule | None = None,
    initial_densities: Densities = None,
    before_step: bool = False,
) -> float:
    """``mean_t f_S(s_t)``: forward FLOPs per sample averaged over every step of the run (SPEC §7);
    ``profile`` is a :class:`regrow.flops.FlopProfile` (anything with ``inference_flops``).

    At progress ``g`` each layer has density ``d0_l − (d0_l − d_l) · g``, ``d_l`` its final density
    from the distribution and ``d0_l`` its initial one (``initial_densities``; ``None``: 1, dense
    to sparse); the FLOPs are counted at those densities for each piece of
    :func:`pruning_segments` (``before_step``: prunings that come before their step's optimizer
    step) and weighted by its number of steps.
    """
    schedule = schedule or PruningSchedule()
    final = resolve_densities(final_densities)
    given = resolve_densities(initial_densities)
    initial = {name: given.get(name, 1.0) for name in final}
    total = 0.0
    for count, progress in pruning_segments(schedule, before_step):
        densities = {
            name: initial[name] - (initial[name] - d) * progress for name, d in final.items()
        }
        total += count * profile.inference_flops(densities)
    return total / schedule.total_steps
