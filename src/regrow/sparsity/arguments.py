"""The checks of what a :class:`~regrow.sparsity.base.Sparsifier` is built from: each bad argument
is one ``ValueError`` naming the argument, its value and the allowed values."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .args import MethodArgs
from .plan import AllocationPlan


def whole_number(value: Any, name: str, allowed: str) -> int:
    """``value`` as an int if it is a whole number (an int, or a float such as ``100.0``);
    ``ValueError`` naming ``name`` for anything else (``2.7``, a string, a bool, inf, NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        whole = False
    else:
        whole = math.isfinite(float(value)) and float(value).is_integer()
    if not whole:
        raise ValueError(
            f"{name}={value!r} is not {'a whole number' if name == 'total_steps' else 'an integer'}"
            f": allowed values are {allowed}; pass an int."
        )
    return int(value)


def check_total_steps(total_steps: Any, needed: bool, kind: str) -> int | None:
    """``total_steps`` as an int: a whole number, >= 1 for a method with a schedule (``needed``),
    >= 0 or ``None`` for the others; ``ValueError`` naming the value otherwise."""
    if needed:
        low, allowed = 1, "integers >= 1"
        why = f"{kind} needs the number of optimizer steps of the run"
    else:
        low, allowed, why = 0, "None or integers >= 0", "the number of optimizer steps"
    if total_steps is None:
        if low:
            raise ValueError(
                f"total_steps=None: {why} for its schedule; allowed values are {allowed}."
            )
        return None
    steps = whole_number(total_steps, "total_steps", f"{allowed} ({why})")
    if steps < low:
        raise ValueError(
            f"total_steps={total_steps!r} is out of range: allowed values are {allowed} ({why})."
        )
    return steps


def method_args_of(args: Any, kind: str) -> dict[str, Any]:
    """``args=`` (``None``, a mapping, or the method's ``Args``) as a plain mapping."""
    if args is not None and not isinstance(args, MethodArgs | Mapping):
        raise ValueError(
            f"args={args!r} is not a mapping: allowed values are None, a mapping of argument "
            f"name to value, or a {kind}.Args."
        )
    return args.as_dict() if isinstance(args, MethodArgs) else dict(args or {})


def check_objects(
    model: Any, optimizer: Any, plan: Any, elementwise_optimizer: Any, attach_hook: Any
) -> None:
    """The model, the optimizer, an explicit plan and the two flags are of the right kinds."""
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model={model!r} is not a torch.nn.Module: pass the model whose layers to make sparse."
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"optimizer={optimizer!r} is not a torch.optim.Optimizer: pass the optimizer that "
            "steps the model's parameters."
        )
    for flag, value in (
        ("elementwise_optimizer", elementwise_optimizer),
        ("attach_hook", attach_hook),
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{flag}={value!r} is not a bool: allowed values are True, False.")
    if plan is not None and not isinstance(plan, AllocationPlan):
        raise ValueError(
            f"plan={plan!r} is not an AllocationPlan: allowed values are None (build one from "
            "sparsity, distribution, power, dense_layers, custom_densities, sparse_layers) or "
            "regrow.AllocationPlan.build(...)."
        )
