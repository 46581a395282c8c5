"""Matching budgets: the Small-Dense width for a parameter budget, and the sparsity at which one
distribution costs the same inference FLOPs as another (Evci et al. 2020, Section 4; SPEC §5, §7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..sparsity.distributions import (
    check_distribution,
    check_sparsity,
    layer_densities,
)
from ..sparsity.methods.small_dense import (
    kept_parameter_count,
    parameter_count,
    small_dense_width,
)
from .counter import FlopProfile

__all__ = [
    "flops_at_sparsity",
    "kept_parameter_count",
    "matching_sparsity",
    "parameter_count",
    "small_dense_width",
]

#: Highest sparsity :func:`matching_sparsity` searches (``layer_densities`` needs ``S < 1``).
MAX_SEARCH_SPARSITY = 1.0 - 1e-9


def flops_at_sparsity(
    profile: FlopProfile,
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    distribution: str,
    power: float = 1.0,
    custom: Mapping[str, float] | None = None,
) -> float:
    """Inference FLOPs when the tensors in ``shapes`` get ``layer_densities(shapes, sparsity,
    distribution, power, custom)`` and every other layer is dense."""
    return profile.inference_flops(layer_densities(shapes, sparsity, distribution, power, custom))


def matching_sparsity(
    profile: FlopProfile,
    shapes: Mapping[str, Sequence[int]],
    target_flops: float,
    distribution: str,
    power: float = 1.0,
    custom: Mapping[str, float] | None = None,
    tolerance: float = 1e-12,
) -> float:
    """The global sparsity at which ``distribution`` costs ``target_flops`` inference FLOPs.

    E.g. the ERK sparsity whose FLOPs equal uniform 0.8's::

        target = flops_at_sparsity(profile, shapes, 0.8, "uniform")
        s = matching_sparsity(profile, shapes, target, "erk")

    FLOPs fall monotonically with the sparsity, so this bisects on [0, 1). Raises ``ValueError``
    naming the reachable range when the target is above the dense cost or below what the
    distribution costs as its sparsity approaches 1 (the dense layers and the per-output terms).
    """
    distribution = check_distribution(distribution)
    target = float(target_flops)

    def flops(sparsity: float) -> float:
        return flops_at_sparsity(profile, shapes, sparsity, distribution, power, custom)

    highest, lowest = flops(0.0), flops(MAX_SEARCH_SPARSITY)
    slack = 1e-9 * highest
    if not (lowest - slack <= target <= highest + slack) or math.isnan(target):
        raise ValueError(
            f"distribution {distribution!r} cannot reach {target:.6g} inference FLOPs: its FLOPs "
            f"range from {highest:.6g} (sparsity 0) down to {lowest:.6g} (sparsity -> 1, "
            f"{lowest / profile.dense_flops:.4g}x dense); allowed targets lie in that range."
        )
    if target >= highest:
        return 0.0
    low, high = 0.0, MAX_SEARCH_SPARSITY
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if flops(middle) > target:
            low = middle
        else:
            high = middle
    return check_sparsity(0.5 * (low + high))
