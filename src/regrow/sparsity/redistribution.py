"""Splitting the regrown weights across layers by a per-layer statistic (SPEC §6). Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence

REDISTRIBUTIONS = ("none", "momentum", "gradient")


def check_redistribution(value: str | None) -> str:
    key = "none" if value is None else str(value).lower()
    if key not in REDISTRIBUTIONS:
        raise ValueError(
            f"redistribution={value!r} is unknown: allowed values are "
            f"{', '.join(repr(r) for r in REDISTRIBUTIONS)} (or None)."
        )
    return key


def redistribute(total: int, statistics: Sequence[float], capacities: Sequence[int]) -> list[int]:
    """Split ``total`` regrown weights in proportion to ``statistics``, capped by ``capacities``.

    Layers whose proportional share exceeds their free positions get all of them, and the rest is
    shared again among the others (water filling). Integer counts come from the floors, the
    remainder going to the largest fractional parts, so the counts add up to ``total`` exactly.
    A zero statistic everywhere falls back to proportional-to-capacity.
    """
    if total > sum(capacities):
        raise ValueError(f"cannot regrow {total} weights into {sum(capacities)} free positions")
    stats = [max(float(s), 0.0) if math.isfinite(s) else 0.0 for s in statistics]
    if sum(s for s, c in zip(stats, capacities, strict=True) if c > 0) <= 0:
        stats = [float(c) for c in capacities]
    share = [0.0] * len(stats)
    open_layers = {i for i, c in enumerate(capacities) if c > 0 and stats[i] > 0}
    remaining = float(total)
    while open_layers and remaining > 0:
        weight = sum(stats[i] for i in open_layers)
        full = {i for i in open_layers if remaining * stats[i] / weight >= capacities[i]}
        if not full:
            for i in open_layers:
                share[i] = remaining * stats[i] / weight
            break
        for i in full:
            share[i] = float(capacities[i])
            remaining -= capacities[i]
        open_layers -= full
    counts = [min(math.floor(s), c) for s, c in zip(share, capacities, strict=True)]
    order = sorted(range(len(counts)), key=lambda i: share[i] - math.floor(share[i]), reverse=True)
    missing = total - sum(counts)
    while missing > 0:
        progressed = False
        for i in order:
            if missing and counts[i] < capacities[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts
