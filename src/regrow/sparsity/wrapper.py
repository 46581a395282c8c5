"""The sparsifier inside ``optimizer.step()``: for loops and trainers that own the step.

A trainer calls ``optimizer.step()`` and nothing else between the backward pass and the next
batch, so a callback cannot skip the step on a mask-update batch, which RigL's rule asks for (the
batch's dense gradient is spent on the update). :func:`wrap_optimizer` returns an optimizer whose
``step()`` is the documented loop's two halves around the real step::

    if sparsifier.step():      # mask the gradients, or spend the batch on a mask update
        optimizer.step()       # the real step; the sparsifier's hook re-masks the weights

Everything else — ``param_groups``, ``state``, ``defaults``, ``state_dict``, ``zero_grad``, hooks —
is the wrapped optimizer's own, so LR schedulers, gradient scalers and checkpoints see it
unchanged. The wrapper keeps no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SparseOptimizer", "wrap_optimizer"]


class SparseOptimizer(torch.optim.Optimizer):
    """``optimizer`` with ``sparsifier.step()`` run inside its ``step()`` (module docstring).

    An instance of ``torch.optim.Optimizer`` (LR schedulers and gradient scalers check that) that
    shares the wrapped optimizer's groups and state; attributes it does not define are the wrapped
    optimizer's. ``step()`` returns the real step's result, or ``None`` on a batch spent on a mask
    update (no optimizer step taken, so no step counted).
    """

    # Optimizer.__init__ is not called: groups, state and hooks stay the wrapped optimizer's.
    def __init__(self, optimizer: torch.optim.Optimizer, sparsifier: Any) -> None:
        if isinstance(optimizer, SparseOptimizer):
            raise ValueError("optimizer is already a SparseOptimizer: wrap the optimizer once.")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer."
            )
        if getattr(sparsifier, "optimizer", None) is not optimizer:
            raise ValueError(
                "the sparsifier was built with another optimizer: build it with this one "
                "(Sparsifier(model, optimizer, ...)), then wrap_optimizer(optimizer, sparsifier)."
            )
        self.__dict__["optimizer"] = optimizer
        self.__dict__["sparsifier"] = sparsifier

    # The wrapped optimizer's own data, read and written through.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "sparsifier"):  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SparseOptimizer({type(self.sparsifier).__name__}, {self.optimizer!r})"

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """The sparsifier's step (mask the gradients, or a mask update), then the real step
        unless the batch went to the update."""
        if closure is not None:
            # The closure recomputes the loss and gradients; the sparsifier must see them.
            with torch.enable_grad():
                loss = closure()
            if self.sparsifier.step():
                self.optimizer.step()
            return loss
        if self.sparsifier.step():
            return self.optimizer.step()
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def register_step_pre_hook(self, hook: Callable[..., Any]) -> Any:
        return self.optimizer.register_step_pre_hook(hook)

    def register_step_post_hook(self, hook: Callable[..., Any]) -> Any:
        return self.optimizer.register_step_post_hook(hook)


def wrap_optimizer(optimizer: torch.optim.Optimizer, sparsifier: Any) -> SparseOptimizer:
    """``optimizer`` whose ``step()`` keeps ``sparsifier``'s semantics in any loop or trainer that
    calls ``optimizer.step()``: the gradients masked before the real step, and no step at all on
    a batch spent on a mask update (RigL, SNIP, SRigL). ``sparsifier`` must have been built with
    ``optimizer``. Example::

        sparsifier = regrow.RigL(model, optimizer, sparsity=0.9, total_steps=10_000)
        optimizer = regrow.wrap_optimizer(optimizer, sparsifier)
        for x, y in loader:  # any loop that calls optimizer.step()
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    """
    return SparseOptimizer(optimizer, sparsifier)
