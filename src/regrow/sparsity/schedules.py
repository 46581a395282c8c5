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


def gmp_active_count(step: int, size: int, final_active: int, begin: int, end: int) -> int:
    """Active weights of a layer at ``step`` under the cubic schedule.

    The layer goes from ``size`` to ``final_active`` weights; the pruned share follows
    :func:`gmp_sparsity` with ``s_f = 1``, so the final count is reached exactly at ``end``.
    """
    pruned = math.floor((size - final_active) * gmp_sparsity(step, 1.0, begin, end) + 1e-9)
    return size - pruned


def scaled_step(step: int, total_steps: int) -> int:
    """A step of the paper's CIFAR run mapped to a run of ``total_steps`` (×M runs scale too)."""
    return round(step * total_steps / PAPER_CIFAR_STEPS)
