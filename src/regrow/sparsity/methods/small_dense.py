"""Small-Dense: a dense model narrowed until it has as many parameters as the sparse model keeps
(Evci et al. 2020, Section 4; SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..args import MethodArgs
from ..base import Sparsifier, Traits, register
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
        from ...flops.matching import kept_parameter_count, small_dense_width

        with torch.device("meta"):
            full = build(width)
        target = kept_parameter_count(full, AllocationPlan.build(full, **plan_keys))
        return small_dense_width(build, target, high=width)
