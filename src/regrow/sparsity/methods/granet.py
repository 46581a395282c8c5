"""GraNet: gradual magnitude pruning with zero-cost neuroregeneration (Liu et al., NeurIPS 2021;
SPEC §14).

Owns one invariant: after an update at step ``t`` every layer holds exactly the cubic schedule's
count, from its initial count ``N0`` down to its budget ``K``; the regeneration in the same update
moves connections (drop by ``|w|``, grow by ``|∇L|``) without changing that count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..args import MethodArgs, arg, at_least, in_range
from ..base import Sparsifier, Traits, register, sparse_start_methods
from ..plan import AllocationPlan
from ..schedules import DROP_SCHEDULES, PruningSchedule, drop_fraction
from ..selection import seeded_generator
from .pruning import pruning_mean_flops


@dataclass(frozen=True)
class GraNetArgs(MethodArgs):
    initial_density: float = arg(
        1.0,
        "density the sparse layers start at, spread by the plan's distribution (1: dense to "
        "sparse; the paper's sparse-to-sparse runs start at 0.5)",
        in_range(0, 1, low_open=True),
    )
    delta_t: int = arg(1000, "optimizer steps between updates (ΔT)", at_least(1))
    prune_begin: int | None = arg(
        None,
        "first pruning step (None: Pruning's 20,000 of 97,656, scaled to the run)",
        at_least(0),
    )
    prune_end: int | None = arg(
        None,
        "last pruning step, where the plan's budgets are reached (None: Pruning's 75,000 of "
        "97,656, scaled to the run)",
        at_least(0),
    )
    alpha: float = arg(
        0.5,
        "initial regeneration fraction: the share of a layer's weights (after pruning) dropped "
        "by |w| and regrown by |∇L| at an update; 0 prunes only",
        in_range(0, 1),
    )
    drop_schedule: str = arg(
        "cosine",
        "how the regeneration fraction decays from prune_begin to T_end",
        choices=DROP_SCHEDULES,
    )
    t_end_fraction: float = arg(
        1.0, "last regeneration update, as a fraction of the run (T_end)", in_range(0, 1)
    )


def initial_allocation(plan: AllocationPlan, initial_density: float) -> AllocationPlan | None:
    """``plan``'s layers, distribution and power at sparsity ``1 − initial_density``: where GraNet
    starts. A layer with a density of its own (``custom``) starts at the larger of it and
    ``initial_density``. ``None`` for ``initial_density = 1`` (every masked layer starts full).
    ``ValueError`` when ``initial_density`` is below the plan's density (GraNet only prunes)."""
    target = 1.0 - plan.sparsity
    if initial_density < target - 1e-12:
        raise ValueError(
            f"initial_density={initial_density!r} is below the density the plan ends at "
            f"({target:g}, sparsity {plan.sparsity:g}), and GraNet only prunes: allowed values "
            f"are {target:g} <= initial_density <= 1."
        )
    if initial_density >= 1.0:
        return None
    custom = {
        layer.name: max(layer.density, initial_density)
        for layer in plan.masked
        if layer.role == "custom"
    }
    return AllocationPlan.build(
        {layer.name: layer.shape for layer in plan.layers},
        1.0 - initial_density,
        plan.distribution,
        plan.power,
        plan.dense_names,
        custom,
    )


@register
class GraNet(Sparsifier):
    """Prune each layer to the cubic schedule's count, then regenerate: drop a further
    ``floor(f · n)`` of its ``n`` weights by smallest ``|w|`` and grow as many at the largest
    ``|∇L|`` of the update batch, ``f`` decaying from ``alpha`` (RigL's cosine) until ``T_end``.

    Updates after ``prune_begin``, every ``delta_t`` steps and at ``prune_end`` (the schedule of
    :class:`~regrow.sparsity.methods.pruning.Pruning`, scope ``layer``), then on the same grid up
    to ``T_end`` for regeneration alone. Each update spends its batch on the dense gradient, as
    RigL's: :meth:`step` returns ``False`` and the step counter stays put.
    """

    name = "granet"
    Args = GraNetArgs
    # The defaults (initial_density 1) start dense: start masks are refused at any initial
    # density (the schedule starts from the method's own counts) and a state saved before the
    # first update must hold initial_counts().
    traits = Traits(
        starts_dense=True,
        updates_before_step=True,
        dense_backward="on_update",
        needs_total_steps=True,
    )
    args: GraNetArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.total_steps is not None
        a, total = self.args, self.total_steps
        self.schedule = self.schedule_for(a, total)
        self.t_end = int(a.t_end_fraction * total)
        self.initial_active = self.initial_counts()
        if self.schedule.end >= total:
            raise ValueError(
                f"prune_end={self.schedule.end} is not a step of the run (total_steps={total}): "
                "the masks would never reach the plan's budgets. Allowed values are "
                f"prune_begin <= prune_end <= {total - 1}."
            )
        if a.alpha > 0 and self.t_end < self.schedule.begin:
            raise ValueError(
                f"t_end_fraction={a.t_end_fraction} ends regeneration at step {self.t_end}, "
                f"before the first update at prune_begin={self.schedule.begin}: allowed values "
                f"are t_end_fraction >= {self.schedule.begin / total:.4g} here, or alpha=0 for "
                "pruning alone."
            )

    @staticmethod
    def schedule_for(args: GraNetArgs, total_steps: int) -> PruningSchedule:
        return PruningSchedule.for_run(total_steps, args.prune_begin, args.prune_end, args.delta_t)

    @classmethod
    def mean_inference_flops(
        cls, profile: Any, plan: AllocationPlan, args: MethodArgs, total_steps: int
    ) -> float:
        assert isinstance(args, GraNetArgs)
        start = initial_allocation(plan, args.initial_density)
        schedule = cls.schedule_for(args, total_steps)
        return pruning_mean_flops(profile, plan, schedule, start, before_step=True)

    def initial_counts(self) -> dict[str, int]:
        start = initial_allocation(self.plan, self.args.initial_density)
        if start is None:
            return {name: p.numel() for name, p in zip(self.names, self.params, strict=True)}
        counts = start.active_counts()
        # Never below the budget, even where the two plans' densities round apart; whole units.
        return {
            name: self.round_count(name, max(counts[name], k))
            for name, k in self.target_counts.items()
        }

    def update_due(self, step: int) -> bool:
        if self.schedule.is_pruning_step(step):
            return True
        begin, end = self.schedule.begin, self.schedule.end
        on_grid = step >= begin and (step - begin) % self.args.delta_t == 0
        return self.args.alpha > 0 and end < step <= self.t_end and on_grid

    def scheduled_counts(self, step: int) -> dict[str, int]:
        """Active weights of each layer after an update at ``step``:
        ``N0 − floor((N0 − K)(1 − (1 − p)^3))``."""
        return {
            name: self.round_count(
                name, self.schedule.active_count(step, self.initial_active[name], k)
            )
            for name, k in self.target_counts.items()
        }

    def regeneration_fraction(self, step: int) -> float:
        """The share of a layer's weights regenerated at ``step``: ``alpha`` decayed by
        ``drop_schedule`` over ``[prune_begin, T_end]``, 0 after ``T_end``."""
        if step > self.t_end:
            return 0.0
        begin = self.schedule.begin
        return drop_fraction(
            step - begin, self.args.alpha, self.t_end - begin, self.args.drop_schedule
        )

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        counts, fraction = self.scheduled_counts(step), self.regeneration_fraction(step)
        new = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            count = min(counts[name], self._active[i])
            moved = self.round_count(name, math.floor(fraction * count))
            # Pruning to `count` and then dropping `moved` more by |w| keeps the largest
            # `count - moved` |w|: one choice. Every position not kept may grow, the ones just
            # pruned or dropped included (as RigL's, SPEC §4).
            generator = seeded_generator(self.seed, step, "prune/" + name, p.device)
            kept = self.select(name, p.abs(), count - moved, generator, excluded=~self.masks[name])
            scores = torch.zeros_like(p) if grads[i] is None else grads[i].abs()
            generator = seeded_generator(self.seed, step, "grow/" + name, p.device)
            grow = count - int(kept.sum())  # what was pruned or dropped beyond `count`
            new.append(kept | self.select(name, scores, grow, generator, kept, kept))
        return new

    def _check_start_masks(self, masks: Mapping[str, torch.Tensor], mode: str) -> None:
        if self.args.initial_density < 1.0:  # the trait's refusal would say "starts dense"
            raise ValueError(
                f"GraNet prunes from its own initial masks (initial_density="
                f"{self.args.initial_density}), so it cannot start from given masks: use a "
                f"method that starts from sparse masks ({', '.join(sparse_start_methods())})."
            )
        super()._check_start_masks(masks, mode)
