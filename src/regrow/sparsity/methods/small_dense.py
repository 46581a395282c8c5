"""Small-Dense: a dense model narrowed until it has as many parameters as the sparse model keeps
(Evci et al. 2020, Section 4; SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..args import MethodArgs
from ..base import Sparsifier, Traits, register
from ..distributions import Densities, active_counts, resolve_densities
from ..plan import AllocationPlan


@register
class SmallDense(Sparsifier):
    """No masks; the harness builds the model at :meth:`model_width`, the width whose parameter
    count matches the non-zeros of the same model at ``sparsity`` and ``distribution`` (every
    parameter counted: active sparse weights plus dense layers, biases and norms)."""

    name = "small_dense"
    traits = Traits(masked=False)

    @classmethod
    def model_width(
        cls, build: Callable[[float], nn.Module], width: float, args: MethodArgs, **plan_keys: Any
    ) -> float:
        with torch.device("meta"):
            full = build(width)
        target = kept_parameter_count(full, AllocationPlan.build(full, **plan_keys))
        return small_dense_width(build, target, high=width)


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
