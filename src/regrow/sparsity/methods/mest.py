"""MEST with elastic mutation (Yuan et al., NeurIPS 2021; SPEC §15).

SET's drop-and-grow after the optimizer step with MEST's two differences: the drop removes the
lowest importance ``|w| + λ|∇L|`` (the batch's masked gradient, which active weights have), and
the mutation ratio decays in steps. With ``memory_bound="soft"`` an update is two mask updates:
grow first (a layer holds at most ``floor(margin · size)`` weights above its budget), train, then
drop back to exactly the budget. Invariant: hard keeps every layer's count; soft keeps every
layer within ``[budget, budget + floor(margin · size)]`` and at its budget after every drop half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..args import arg, at_least, in_range
from ..base import Sparsifier, register
from ..dynamic import DynamicArgs
from ..plan import AllocationPlan
from ..schedules import DROP_SCHEDULES, UpdateSchedule, drop_fraction
from ..selection import seeded_generator
from .set import SET

MEMORY_BOUNDS = ("hard", "soft")


@dataclass(frozen=True)
class MESTArgs(DynamicArgs):
    """SET's arguments with MEST's defaults (the released code's CIFAR scripts: a mutation of 20%
    of the active weights, halved at epoch 90 of 160, none after epoch 120) and its own."""

    alpha: float = arg(
        0.2,
        "initial mutation ratio: fraction of a layer's active weights replaced per update",
        in_range(0, 1, low_open=True),
    )
    drop_schedule: str = arg(
        "step",
        "how the mutation ratio decays (step: × mutation_decay every decay_every of the run)",
        choices=(*DROP_SCHEDULES, "step"),
    )
    mutation_decay: float = arg(
        0.5, "factor of each step decay of the mutation ratio", in_range(0, 1)
    )
    decay_every: float = arg(
        0.5625,
        "fraction of the run between step decays of the mutation ratio (epoch 90 of 160)",
        in_range(0, 1, low_open=True),
    )
    grad_weight: float = arg(
        1.0,
        "λ of the drop score |w| + λ|∇L| (0: magnitude only, the released code's default)",
        (lambda v: 0 <= v < math.inf, "finite numbers >= 0"),
    )
    memory_bound: str = arg(
        "hard",
        "hard: drop then grow in one update; soft: grow first, drop soft_steps later",
        choices=MEMORY_BOUNDS,
    )
    margin: float = arg(
        0.05,
        "soft bound: most weights a layer holds above its budget, as a fraction of its size",
        in_range(0, 1, low_open=True),
    )
    soft_steps: int | None = arg(
        None,
        "soft bound: optimizer steps the grown weights train before the drop (None: delta_t - 1)",
        at_least(1),
    )

    def check(self) -> None:
        if self.memory_bound != "soft":
            return
        if self.redistribution != "none":
            raise ValueError(
                f"redistribution={self.redistribution!r} with memory_bound='soft': allowed is "
                "'none' (the soft bound holds each layer to its own budget); use "
                "memory_bound='hard' to redistribute."
            )
        if soft_steps_of(self) < 1 or soft_steps_of(self) >= self.delta_t:
            raise ValueError(
                f"soft_steps={self.soft_steps!r} with delta_t={self.delta_t}: allowed values are "
                "1 <= soft_steps < delta_t (the drop half comes before the next grow); lower "
                "soft_steps or raise delta_t (>= 2 for the default delta_t - 1)."
            )


def soft_steps_of(args: MESTArgs) -> int:
    """Optimizer steps between a grow half and its drop half."""
    return args.delta_t - 1 if args.soft_steps is None else args.soft_steps


def mutation_ratio(args: MESTArgs, step: int, total_steps: int) -> float:
    """The fraction of a layer's active weights an update at ``step`` mutates: ``α · γ^k`` with
    ``k = step // round(decay_every · total_steps)`` (step schedule), or a shared schedule."""
    if args.drop_schedule != "step":
        t_end = int(args.t_end_fraction * total_steps)
        return drop_fraction(step, args.alpha, t_end, args.drop_schedule)
    every = max(1, round(args.decay_every * total_steps))
    return args.alpha * args.mutation_decay ** (step // every)


def soft_extra(ratio: float, budget: int, size: int, margin: float) -> int:
    """Weights a soft grow half adds to a layer: the mutation count, clamped to the margin and to
    the free positions."""
    return max(0, min(math.floor(ratio * budget), math.floor(margin * size), size - budget))


def soft_grow_steps(args: MESTArgs, total_steps: int) -> list[int]:
    """The steps of the grow halves: the update schedule's steps whose drop half lies in the run."""
    t_end = int(args.t_end_fraction * total_steps)
    schedule = UpdateSchedule(args.delta_t, args.begin_step, t_end)
    last = total_steps - 1 - soft_steps_of(args)
    return [s for s in range(args.begin_step, min(t_end, last) + 1) if schedule.is_update_step(s)]


@register
class MEST(SET):
    """Drop the lowest ``|w| + λ|∇L|`` after the optimizer step, grow at random (seeded), with a
    step-decayed mutation ratio; ``memory_bound="soft"`` grows first and drops later."""

    name = "mest"
    Args = MESTArgs
    args: MESTArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The step of the pending drop half (soft bound, between the halves), else ``None``.
        self.drop_at: int | None = None
        #: Which half :meth:`new_masks` produced, for :meth:`validate_masks`.
        self._half: str | None = None
        super().__init__(*args, **kwargs)

    @property
    def soft(self) -> bool:
        """The soft memory bound: grow and drop are two mask updates ``soft_steps`` apart."""
        return self.args.memory_bound == "soft"

    def supported_structures(self) -> tuple[str, ...]:
        # The soft bound's grow half takes a layer above its budget, which an N:M layer at n/m
        # has no room for (SPEC §19).
        return tuple(s for s in self.structures if not (self.soft and s == "N:M"))

    @property
    def soft_steps(self) -> int:
        return soft_steps_of(self.args)

    # ------------------------------------------------------------------ MEST's differences
    def drop_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        score = self.params[index].detach().abs().float()
        if grad is None or self.args.grad_weight == 0:
            return score
        return score + self.args.grad_weight * grad.detach().abs().float()

    def drop_fraction(self, step: int) -> float:
        assert self.total_steps is not None
        return mutation_ratio(self.args, step, self.total_steps)

    @classmethod
    def mean_inference_flops(
        cls, profile: Any, plan: AllocationPlan, args: Any, total_steps: int
    ) -> float:
        """``f_S`` over the run; the soft bound adds, for the ``soft_steps`` steps after each grow
        half, the FLOPs of the weights grown above the budget."""
        base = super().mean_inference_flops(profile, plan, args, total_steps)
        if args.memory_bound != "soft":
            return base
        plan = cls.adjust_plan(plan)
        densities, raised_cost = plan.densities(), {}
        extra_total = 0.0
        for step in soft_grow_steps(args, total_steps):
            ratio = mutation_ratio(args, step, total_steps)
            if ratio not in raised_cost:
                raised = {
                    layer.name: densities[layer.name]
                    + soft_extra(ratio, layer.active, layer.size, args.margin) / layer.size
                    for layer in plan.masked
                }
                raised_cost[ratio] = profile.inference_flops(raised) - base
            extra_total += soft_steps_of(args) * raised_cost[ratio]
        return base + extra_total / total_steps

    # ------------------------------------------------------------- the soft memory bound
    def budget(self) -> dict[str, int]:
        """Each layer's active count outside the soft window: the plan's, or the installed
        masks' after :meth:`start_from_masks`."""
        return dict(self.start_counts or self.target_counts)

    def update_due(self, step: int) -> bool:
        if not self.soft:
            return super().update_due(step)
        if self.drop_at is not None:
            return step >= self.drop_at
        return super().update_due(step) and step + self.soft_steps < self._total()

    def count_rule(self) -> str | None:
        # Between the halves a layer holds more than its budget: the bound is checked in
        # validate_masks instead.
        return None if self.soft else super().count_rule()

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        if not self.soft:
            return super().new_masks(step, grads)
        if self.drop_at is not None:
            self._half, self.drop_at = "drop", None
            return self._drop_half(step, grads)
        if step + self.soft_steps >= self._total():  # a postponed grow whose drop would not come
            return Sparsifier.new_masks(self, step, grads)
        self._half, self.drop_at = "grow", step + self.soft_steps
        return self._grow_half(step, grads)

    def _grow_half(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Every layer grows its mutation count (clamped to the margin) at random positions."""
        ratio, new = self.drop_fraction(step), []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            mask = self.masks[name]
            count = soft_extra(ratio, self._active[i], p.numel(), self.args.margin)
            generator = seeded_generator(self.seed, step, "grow/" + name, p.device)
            scores = self.grow_scores(step, i, grads[i])
            new.append(mask | self.select(name, scores, count, generator, mask, mask))
        return new

    def _drop_half(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Every layer keeps its budget's worth of the highest ``|w| + λ|∇L|`` among all its
        active weights, the grown ones included."""
        budget, new = self.budget(), []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            generator = seeded_generator(self.seed, step, "drop/" + name, p.device)
            scores = self.drop_scores(step, i, grads[i])
            mask = self.masks[name]
            new.append(self.select(name, scores, budget[name], generator, excluded=~mask))
        return new

    def validate_masks(self, new: list[torch.Tensor]) -> None:
        half, self._half = self._half, None
        if half is None:  # not a soft half (hard bound, or masks installed by start_from_masks)
            return
        budget = self.budget()
        for name, mask in zip(self.names, new, strict=True):
            count, size, low = int(mask.sum()), mask.numel(), budget[name]
            high = low if half == "drop" else low + math.floor(self.args.margin * size)
            if not low <= count <= high:
                raise RuntimeError(
                    f"MEST broke its soft memory bound in {name}: {count} active weights after "
                    f"the {half} half, allowed {low} to {high} (budget {low}, margin "
                    f"{self.args.margin:g} of {size})."
                )

    def _total(self) -> int:
        assert self.total_steps is not None
        return self.total_steps

    def method_state(self) -> dict[str, Any]:
        return {"drop_at": self.drop_at}

    def load_method_state(self, state: dict[str, Any]) -> None:
        drop_at = state.get("drop_at")
        self.drop_at = None if drop_at is None else int(drop_at)
