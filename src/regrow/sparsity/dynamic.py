"""Drop-and-grow methods: drop the smallest |w|, grow by a method's score (SPEC §3, §4, §6).

:class:`DynamicSparsifier` is the base of SET, RigL and SNFS: a subclass supplies
:meth:`~DynamicSparsifier.grow_scores` (and its traits); the schedule, the drop, the grow counts
with or without redistribution and the optional Kaiming re-initialisation of new connections live
here once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from .args import MethodArgs, arg, at_least, in_range
from .base import REINITS, Sparsifier, Traits
from .optim_state import momentum_like
from .redistribution import REDISTRIBUTIONS, redistribute
from .schedules import DROP_SCHEDULES, UpdateSchedule, drop_fraction
from .selection import seeded_generator


@dataclass(frozen=True)
class DynamicArgs(MethodArgs):
    """Arguments every drop-and-grow method shares (Evci et al. 2020, Section 3; SPEC §3, §6)."""

    delta_t: int = arg(100, "optimizer steps between mask updates (ΔT)", at_least(1))
    alpha: float = arg(0.3, "initial drop fraction α", in_range(0, 1, low_open=True))
    t_end_fraction: float = arg(
        0.75, "last mask update, as a fraction of the run (T_end)", in_range(0, 1)
    )
    begin_step: int = arg(0, "first step with a mask update", at_least(0))
    drop_schedule: str = arg("cosine", "how the drop fraction decays", choices=DROP_SCHEDULES)
    reinit: str = arg("zero", "value of a new connection (kaiming: He normal)", choices=REINITS)
    redistribution: str = arg(
        "none",
        "move regrown weights between layers by a statistic (docs/SPEC.md §6)",
        choices=REDISTRIBUTIONS,
    )


class DynamicSparsifier(Sparsifier, ABC):
    """Drop the smallest-magnitude weights, grow by a method's score (SPEC §3, §4, §6)."""

    Args = DynamicArgs
    traits = Traits(needs_total_steps=True, conserves_active_counts=True)
    args: DynamicArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.total_steps is not None
        a = self.args
        self.t_end = int(a.t_end_fraction * self.total_steps)
        try:
            self.schedule = UpdateSchedule(a.delta_t, a.begin_step, self.t_end)
        except ValueError as error:
            raise ValueError(
                f"{error} Here begin_step={a.begin_step} and T_end = t_end_fraction × total_steps "
                f"= {self.t_end}."
            ) from None
        # A window of length 0 (T_end = begin_step, e.g. t_end_fraction=0) asks for the one
        # update at begin_step on purpose; a positive window shorter than ΔT is a mistake.
        if self.t_end > a.begin_step and a.delta_t > self.t_end - a.begin_step:
            raise ValueError(
                f"delta_t={a.delta_t} is longer than the update window, steps {a.begin_step} to "
                f"T_end={self.t_end} (t_end_fraction {a.t_end_fraction} of {self.total_steps} "
                f"steps): only the update at step {a.begin_step} would happen. Allowed values are "
                f"delta_t <= {max(self.t_end - a.begin_step, 1)} here; lower delta_t or train "
                "longer."
            )
        units = {self.layer_structure(name).unit for name in self.names}
        if a.redistribution != "none" and len(units) > 1:
            raise ValueError(
                f"redistribution={a.redistribution!r} moves weights between layers, but under "
                f"structure={str(self.structure)!r} their units differ in size ({sorted(units)} "
                "weights), so no exchange keeps the total: use redistribution='none', or a "
                "structure whose unit is the same in every sparse layer (N:M, block:B)."
            )

    def update_due(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def count_rule(self) -> str | None:
        return "layer" if self.args.redistribution == "none" else "total"

    def initialize_grown(self, step: int, old: list[torch.Tensor], new: list[torch.Tensor]) -> None:
        if self.args.reinit != "kaiming":
            return
        for name, p, o, n in zip(self.names, self.params, old, new, strict=True):
            generator = seeded_generator(self.seed, step, "reinit/" + name, p.device)
            values = torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype)
            p.add_(values * math.sqrt(2.0 / p[0].numel()) * (n & ~o))

    def drop_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        """Score of every active position of layer ``index``; the lowest are dropped. Default:
        the weight's magnitude (every method of the paper)."""
        return self.params[index].abs()

    @abstractmethod
    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        """Score of every position of layer ``index``; the highest among the free ones grow."""

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.args.alpha, self.t_end, self.args.drop_schedule)

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        fraction = self.drop_fraction(step)
        kept = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            mask, active = self.masks[name], self._active[i]
            drop = self.round_count(name, math.floor(fraction * active))  # whole units
            generator = seeded_generator(self.seed, step, "drop/" + name, p.device)
            scores = self.drop_scores(step, i, grads[i])
            kept.append(self.select(name, scores, active - drop, generator, excluded=~mask))
        # What was dropped (whole units), so the grow restores the counts exactly.
        sizes = torch.stack([k.sum() for k in kept]).tolist() if kept else []
        drops = [active - size for active, size in zip(self._active, sizes, strict=True)]
        grow_counts = self._grow_counts(drops, kept, grads)
        new = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            generator = seeded_generator(self.seed, step, "grow/" + name, p.device)
            scores = self.grow_scores(step, i, grads[i])
            grown = self.select(name, scores, grow_counts[i], generator, kept[i], kept[i])
            new.append(kept[i] | grown)
        return new

    def _grow_counts(
        self, drops: list[int], kept: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> list[int]:
        redistribution = self.args.redistribution
        stepped = self.step_count > 0 or not self.traits.updates_before_step
        if redistribution == "none" or (redistribution == "momentum" and not stepped):
            # RigL's update at step 0 comes before any optimizer step, so there is no momentum
            # yet to redistribute by: that update keeps every layer's count.
            return drops
        stats = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            source = grads[i] if redistribution == "gradient" else momentum_like(self.optimizer, p)
            if source is None:
                raise ValueError(
                    f"redistribution={redistribution!r} needs a {redistribution} for {name}, "
                    "and there is none (an optimizer without momentum, or no gradient). Use "
                    "redistribution='gradient' or None."
                )
            mask = self.masks[name]
            stats.append(
                float(source.detach().float().abs().mul(mask).sum()) / max(self._active[i], 1)
            )
        # In units of the structure (equal in every layer, checked at construction); N:M caps a
        # layer at n/m of its weights.
        unit = self.layer_structure(self.names[0]).unit if self.names else 1
        capacities = [
            self.layer_structure(name).max_count() - int(k.sum())
            for name, k in zip(self.names, kept, strict=True)
        ]
        counts = redistribute(sum(drops) // unit, stats, [c // unit for c in capacities])
        return [count * unit for count in counts]
