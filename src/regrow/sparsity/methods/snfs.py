"""SNFS: grow where the running average of the dense gradient is largest
(Dettmers & Zettlemoyer 2019, as compared in the RigL paper; SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..args import arg, in_range
from ..base import Traits, register
from ..dynamic import DynamicArgs, DynamicSparsifier


@dataclass(frozen=True)
class SNFSArgs(DynamicArgs):
    decay: float = arg(0.9, "decay of the dense-gradient average", in_range(0, 1, high_open=True))


@register
class SNFS(DynamicSparsifier):
    """Drop the smallest |w| after the optimizer step; grow the largest |EMA of dense gradients|.

    The average (``decay``, default 0.9) is updated on every :meth:`step` with the dense
    gradients, before they are masked. It lives in one flat float32 buffer, so the update is two
    kernels with no host synchronisation; a step whose gradients are not finite leaves it unchanged.
    """

    name = "snfs"
    Args = SNFSArgs
    traits = Traits(needs_total_steps=True, conserves_active_counts=True, dense_backward="always")
    args: SNFSArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sizes = [p.numel() for p in self.params]
        device = self.params[0].device if self.params else None
        self.gradient_average = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        self._views = [
            view.view(p.shape)
            for view, p in zip(self.gradient_average.split(sizes), self.params, strict=True)
        ]

    def observe_gradients(self, grads: list[torch.Tensor | None]) -> None:
        if not self.params:
            return
        flat = torch.cat(
            [
                torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float()
                for g, p in zip(grads, self.params, strict=True)
            ]
        )
        target = torch.where(flat.isfinite().all(), flat, self.gradient_average)
        self.gradient_average.lerp_(target, 1.0 - self.args.decay)

    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        return self._views[index].abs()

    def method_state(self) -> dict[str, Any]:
        return {"gradient_average": self.gradient_average.clone()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.gradient_average.copy_(state["gradient_average"])
