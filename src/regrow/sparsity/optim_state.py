"""Optimizer state at positions whose connection changes (SPEC §4, step 3).

A new connection must start with zero state, and an inactive position must hold zero state. That is
only meaningful for optimizers whose per-parameter state is elementwise (each entry belongs to one
weight). Those are listed here; any other optimizer is refused at construction, because zeroing a
factored or preconditioner state would silently be wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: torch.optim classes whose state tensors are either shaped like the parameter (elementwise)
#: or scalars (step counters), and whose step keeps the state of an inactive weight (zero weight,
#: zero gradient) exactly zero, so the contract holds without re-masking state every step. Left
#: out on purpose: Rprop (zeroing its per-weight step size would freeze a new connection for ever)
#: and Adamax (its step writes ``eps`` into ``exp_inf`` at every position, active or not).
ELEMENTWISE_OPTIMIZERS: tuple[str, ...] = (
    "SGD",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "ASGD",
)


def check_optimizer(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], elementwise: bool
) -> None:
    """Raise ``ValueError`` unless ``optimizer`` can be handled and holds every sparse parameter.

    ``elementwise=True`` is the user's word that an optimizer not in the list keeps only
    elementwise or scalar state.
    """
    kind = type(optimizer).__name__
    known = any(cls.__name__ in ELEMENTWISE_OPTIMIZERS for cls in type(optimizer).__mro__)
    if not (known or elementwise):
        raise ValueError(
            f"optimizer {kind} is not one regrow knows to keep elementwise state that stays zero "
            f"at inactive weights. Supported: {', '.join(ELEMENTWISE_OPTIMIZERS)}. If every "
            f"state tensor of {kind} is shaped like its parameter or is a scalar, pass "
            "elementwise_optimizer=True (inactive state is then zeroed at every mask update)."
        )
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params.items() if id(p) not in in_optimizer]
    if missing:
        raise ValueError(
            f"sparse parameters {missing} are not in the optimizer: allowed values are parameters "
            "the optimizer updates. Build the optimizer over model.parameters(), or keep these "
            "layers dense with dense_layers=[...]."
        )


def state_tensors(
    optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, name: str
) -> list[torch.Tensor]:
    """The optimizer-state tensors of ``param`` that are shaped like it.

    Scalars (``step``) are skipped; any other shape is a ``ValueError`` (a layout regrow cannot
    mask correctly).
    """
    tensors = []
    for key, value in optimizer.state.get(param, {}).items():
        if not torch.is_tensor(value) or (value.numel() == 1 and param.numel() != 1):
            continue
        if value.shape != param.shape:
            raise ValueError(
                f"optimizer state {key!r} of {name} has shape {tuple(value.shape)}, not the "
                f"parameter's {tuple(param.shape)}: regrow cannot zero it at new connections."
            )
        tensors.append(value)
    return tensors


def momentum_like(
    optimizer: torch.optim.Optimizer, param: torch.nn.Parameter
) -> torch.Tensor | None:
    """The first-moment buffer of ``param`` (SGD ``momentum_buffer``, Adam ``exp_avg``), if any."""
    state = optimizer.state.get(param, {})
    for key in ("momentum_buffer", "exp_avg"):
        if torch.is_tensor(state.get(key)):
            return state[key]
    return None


def zero_state_(
    optimizer: torch.optim.Optimizer,
    params: Iterable[tuple[str, torch.nn.Parameter]],
    keep: Iterable[torch.Tensor],
) -> None:
    """Multiply every elementwise state tensor of each parameter by its 0/1 ``keep`` mask."""
    tensors, masks = [], []
    for (name, param), mask in zip(params, keep, strict=True):
        for tensor in state_tensors(optimizer, param, name):
            tensors.append(tensor)
            masks.append(mask.to(tensor.dtype))
    if tensors:
        torch._foreach_mul_(tensors, masks)
