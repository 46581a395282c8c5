"""When masks change, and by how much: pure functions of the optimizer step (SPEC §3, §5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

DROP_SCHEDULES = ("cosine", "constant", "linear")

#: The paper's CIFAR-10 run: 250 epochs of 50,000 images at batch 128 (SPEC §3).
PAPER_CIFAR_STEPS = 97_656
#: Zhu & Gupta pruning window of the paper's CIFAR runs, in steps of that run (SPEC §5).
PAPER_PRUNE_BEGIN, PAPER_PRUNE_END = 20_000, 75_000


def drop_fraction(step: int, alpha: float, t_end: int, schedule: str = "cosine") -> float:
    """Fraction of a layer's active weights replaced at ``step`` (SPEC §3).

    cosine: ``α/2 · (1 + cos(π t / T_end))`` (Evci et al. 2020, Eq. 1); constant: ``α``;
    linear: ``α · (1 - t / T_end)``.
    """
    progress = min(max(step / t_end, 0.0), 1.0) if t_end > 0 else 1.0
    if schedule == "cosine":
        return alpha / 2.0 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return alpha
    if schedule == "linear":
        return alpha * (1.0 - progress)
    raise ValueError(
        f"drop_schedule={schedule!r} is unknown: allowed values are "
        f"{', '.join(repr(s) for s in DROP_SCHEDULES)}."
    )


@dataclass(frozen=True)
class UpdateSchedule:
    """Mask updates every ``delta_t`` steps from ``begin`` while ``step <= end`` (SPEC §3)."""

    delta_t: int
    begin: int
    end: int

    def __post_init__(self) -> None:
        if self.delta_t < 1:
            raise ValueError(f"delta_t={self.delta_t!r}: allowed values are integers >= 1.")
        if self.begin < 0 or self.end < self.begin:
            raise ValueError(
                f"the update window begin={self.begin}, end={self.end} is empty or negative: "
                "allowed values are 0 <= begin <= end."
            )

    def is_update_step(self, step: int) -> bool:
        return self.begin <= step <= self.end and (step - self.begin) % self.delta_t == 0


def gmp_sparsity(step: int, final_sparsity: float, begin: int, end: int) -> float:
    """Zhu & Gupta (2017) gradual magnitude pruning: ``s_f · (1 − (1 − p)^3)``,
    ``p = (t − t0)/(t1 − t0)`` clipped to [0, 1] (SPEC §5)."""
    progress = 1.0 if end <= begin else min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


def scaled_step(step: int, total_steps: int) -> int:
    """A step of the paper's CIFAR run mapped to a run of ``total_steps`` (×M runs scale too)."""
    return round(step * total_steps / PAPER_CIFAR_STEPS)


@dataclass(frozen=True)
class PruningSchedule:
    """Zhu & Gupta gradual magnitude pruning (SPEC §5), the one schedule the Pruning method, the
    FLOP formulas and ``regrow flops`` share.

    Dense until ``begin``; after the optimizer step at ``begin + k · every`` (``≤ end``) and at
    ``end``, a layer of ``N`` weights with final budget ``K`` keeps
    ``N − round_down((N − K)(1 − (1 − p)^3))``, ``p = (t − begin)/(end − begin)``. The defaults are
    the paper's CIFAR run (97,656 steps, pruning from 20,000 to 75,000 every 1,000).
    """

    total_steps: int = PAPER_CIFAR_STEPS
    begin: int = PAPER_PRUNE_BEGIN
    end: int = PAPER_PRUNE_END
    every: int = 1000

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.every < 1 or not 0 <= self.begin <= self.end:
            raise ValueError(
                f"pruning schedule total_steps={self.total_steps}, prune_begin={self.begin}, "
                f"prune_end={self.end}, delta_t={self.every}: allowed values are total_steps >= 1, "
                "delta_t >= 1 and 0 <= prune_begin <= prune_end."
            )

    @classmethod
    def for_run(
        cls, total_steps: int, begin: int | None = None, end: int | None = None, every: int = 1000
    ) -> PruningSchedule:
        """The schedule of a run of ``total_steps``: a window not given is the paper's, scaled to
        the run's length (so a ×M run scales it too; SPEC §3, §5)."""
        return cls(
            total_steps=total_steps,
            begin=scaled_step(PAPER_PRUNE_BEGIN, total_steps) if begin is None else begin,
            end=scaled_step(PAPER_PRUNE_END, total_steps) if end is None else end,
            every=every,
        )

    def scaled(self, multiplier: float) -> PruningSchedule:
        """The schedule of a run ``multiplier`` times longer (t0, t1 × M; ``every`` unchanged)."""
        return PruningSchedule(
            total_steps=round(self.total_steps * multiplier),
            begin=round(self.begin * multiplier),
            end=round(self.end * multiplier),
            every=self.every,
        )

    def is_pruning_step(self, step: int) -> bool:
        on_grid = (step - self.begin) % self.every == 0
        return self.begin <= step <= self.end and (on_grid or step == self.end)

    def pruning_steps(self) -> list[int]:
        """The steps after whose optimizer step the masks are pruned."""
        steps = list(range(self.begin, self.end + 1, self.every))
        if steps[-1] != self.end:
            steps.append(self.end)
        return steps

    def progress(self, step: int) -> float:
        """Fraction ``1 − (1 − p)^3`` of the final pruning reached by a pruning at ``step``."""
        return gmp_sparsity(step, 1.0, self.begin, self.end)

    def active_count(self, step: int, size: int, final_active: int) -> int:
        """Active weights of a tensor of ``size`` after a pruning at ``step``; exactly
        ``final_active`` from ``end`` on. ``size`` may be any starting count (GraNet's ``N0``)."""
        return size - math.floor((size - final_active) * self.progress(step) + 1e-9)


def pruning_segments(
    schedule: PruningSchedule, before_step: bool = False
) -> list[tuple[int, float]]:
    """The run as ``(number of steps, pruning progress)`` pieces, in order, summing to
    ``total_steps``. Steps ``0 … t_0`` run dense; after a pruning at ``t_k`` the progress it set
    holds for steps ``t_k + 1 … t_{k+1}`` (a pruning happens after that step's optimizer step).
    ``before_step``: a pruning at ``t_k`` comes before that step's optimizer step (GraNet, whose
    update spends a batch first), so its progress holds from step ``t_k`` on."""
    segments: list[tuple[int, float]] = []
    start, progress = 0, 0.0  # the first step at the current progress
    for step in schedule.pruning_steps():
        first = step if before_step else step + 1
        if first >= schedule.total_steps:
            break
        segments.append((first - start, progress))
        start, progress = first, schedule.progress(step)
    segments.append((schedule.total_steps - start, progress))
    return [(count, value) for count, value in segments if count > 0]
