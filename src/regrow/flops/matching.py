"""Matching budgets: the Small-Dense width for a parameter budget, and the sparsity at which one
distribution costs the same inference FLOPs as another (Evci et al. 2020, Section 4; SPEC §5, §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..sparsity.distributions import (
    active_counts,
    check_distribution,
    check_sparsity,
    layer_densities,
)
from .counter import Densities, FlopProfile, resolve_densities

__all__ = [
    "flops_at_sparsity",
    "kept_parameter_count",
    "matching_sparsity",
    "parameter_count",
    "small_dense_width",
]

#: Highest sparsity :func:`matching_sparsity` searches (``layer_densities`` needs ``S < 1``).
MAX_SEARCH_SPARSITY = 1.0 - 1e-9


def parameter_count(model: nn.Module) -> int:
    """Every parameter of ``model`` (a shared tensor once), biases and BN parameters included."""
    return sum(p.numel() for p in model.parameters())


def kept_parameter_count(model: nn.Module, densities: Densities) -> int:
    """Non-zero parameters of the sparse model: ``round_down(d_l · N_l)`` weights of each sparse
    tensor (SPEC §2) plus every other parameter (dense layers, biases, BN) in full.

    This is the budget a Small-Dense model matches (SPEC §5: its parameter count equals the sparse
    model's non-zeros), counted the same way on both sides: all parameters, not just conv/linear
    weights.
    """
    values = resolve_densities(densities)
    params = dict(model.named_parameters())
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ValueError(f"densities name {unknown}, which are not parameters of the model.")
    shapes = {name: tuple(params[name].shape) for name in values}
    kept = active_counts(shapes, values)
    return sum(kept.get(name, p.numel()) for name, p in params.items())


def small_dense_width(
    build: Callable[[float], nn.Module],
    target_params: int,
    low: float = 1e-3,
    high: float = 1.0,
    tolerance: float = 1e-6,
) -> float:
    """The width multiplier ``w`` at which the dense model ``build(w)`` has ``target_params``
    parameters (Small-Dense, SPEC §5), by bisection.

    The count is a step function of ``w`` (channel counts are rounded), so the result is the width
    whose count is nearest the target among the two sides of the crossing. ``build`` is called on
    the meta device (nothing is allocated). ``high`` is doubled while the model is still too small
    (a target above the dense count gives ``w > 1``).
    """
    if not target_params >= 1:
        raise ValueError(f"target_params={target_params!r}: allowed values are integers >= 1.")
    if not 0 < low < high:
        raise ValueError(f"low={low!r}, high={high!r}: allowed values are 0 < low < high.")

    def count(width: float) -> int:
        with torch.device("meta"):
            return parameter_count(build(width))

    if count(low) >= target_params:
        return low
    while count(high) < target_params:
        if high > 1e4:
            raise ValueError(f"no width up to {high} reaches {target_params} parameters.")
        low, high = high, high * 2.0
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if count(middle) < target_params:
            low = middle
        else:
            high = middle
    return min((low, high), key=lambda w: (abs(count(w) - target_params), w))


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
