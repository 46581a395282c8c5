"""The drop-and-grow methods that grow by the dense gradient (RigL, SRigL; SPEC §3, §4).

Their update spends a batch (:attr:`~regrow.sparsity.base.Traits.updates_before_step`) and grows
the positions of largest ``|∇L|``: by default the update batch's dense gradient, as in the paper.
With ``grad_accumulation = N > 1`` the grow score is ``|mean|`` of the dense gradients of the update
batch and the ``N − 1`` ordinary batches right before it (the *window*), as the reference code of
RigL and SRigL offers for small batches:

- A window batch is an ordinary batch: its optimizer step takes the masked gradients as any other.
  :meth:`~GradientGrowthSparsifier.step` only adds its dense gradients (the backward pass computes
  them; the masks are applied by multiplication afterwards) to a float32 buffer before masking.
- The buffer exists only inside a window: the first window batch creates it, the update consumes
  and frees it. With ``N = 1`` there is no window, no buffer and no extra work.
- A window batch whose gradients are not finite is left out of the mean (counted on the device: no
  host synchronisation). An update postponed because its batch is not finite keeps the buffer.
- The buffer is part of :meth:`~regrow.sparsity.Sparsifier.state_dict`: a run stopped inside a
  window resumes bit-identically.
- Window batches run eagerly (:meth:`~GradientGrowthSparsifier.eager_batch_due`), never in a
  compiled step, and their backward pass counts as dense for the training FLOPs
  (:attr:`~regrow.sparsity.base.BatchReport.dense_backward`).

SNFS is not one of these: it grows by an average of dense gradients over every batch already
(its ``decay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .args import arg, at_least
from .base import BatchReport, Traits
from .dynamic import DynamicArgs, DynamicSparsifier


@dataclass(frozen=True)
class GradientGrowthArgs(DynamicArgs):
    """The drop-and-grow arguments plus the number of batches the grow gradient averages."""

    grad_accumulation: int = arg(
        1,
        "dense gradients of the last N batches (the update batch and the N-1 before it) averaged "
        "for the grow score; 1 is the paper's single batch",
        at_least(1),
    )

    def check(self) -> None:
        super().check()
        if self.grad_accumulation > self.delta_t + 1:
            raise ValueError(
                f"grad_accumulation={self.grad_accumulation} is more batches than reach an "
                f"update: with delta_t={self.delta_t} an update follows {self.delta_t} ordinary "
                f"batches, so allowed values are 1 <= grad_accumulation <= {self.delta_t + 1}."
            )


class GradientGrowthSparsifier(DynamicSparsifier):
    """Drop the smallest ``|w|`` and grow the largest ``|∇L|`` on a batch spent on the update,
    the gradient averaged over ``grad_accumulation`` batches (module docstring). Subclasses with
    their own structure override :meth:`masks_from_gradients`, not :meth:`new_masks`."""

    Args = GradientGrowthArgs
    traits = Traits(
        needs_total_steps=True,
        conserves_active_counts=True,
        updates_before_step=True,
        dense_backward="on_update",
    )
    args: GradientGrowthArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The window's sum of dense gradients (float32, one per sparse tensor) and the number of
        #: finite batches in it (a 0-dim float32 device tensor); ``None`` outside a window.
        self.window_sum: list[torch.Tensor] | None = None
        self.window_batches: torch.Tensor | None = None

    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        param = self.params[index]
        return torch.zeros_like(param) if grad is None else grad.abs()

    # ----------------------------------------------------------------------- the window
    def window_batch_due(self) -> bool:
        """Whether the current batch is an ordinary batch among the ``grad_accumulation − 1``
        right before an update (host arithmetic only)."""
        extra = self.args.grad_accumulation - 1
        if extra == 0 or self.update_batch_due():
            return False
        return any(self.update_due(self.step_count + k) for k in range(1, extra + 1))

    def eager_batch_due(self) -> bool:
        return self.update_batch_due() or self.window_batch_due()

    def step(self) -> bool:
        if not self.window_batch_due():
            return super().step()
        self._accumulate([p.grad for p in self.params])
        stepped = super().step()
        self.last_batch = BatchReport(stepped, True, self.last_batch.masks_changed)
        return stepped

    @torch.no_grad()
    def _accumulate(self, grads: list[torch.Tensor | None]) -> None:
        """Add a window batch's dense gradients to the buffer, unless one is not finite."""
        if not self.params:
            return
        dense = [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)
        ]
        if self.window_sum is None:
            self.window_sum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
            self.window_batches = self.window_sum[0].new_zeros(())
        assert self.window_batches is not None
        finite = torch.stack([g.isfinite().all() for g in dense]).all()
        torch._foreach_add_(self.window_sum, [torch.where(finite, g.float(), 0.0) for g in dense])
        self.window_batches.add_(finite.float())

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The masks from the update batch's gradients, averaged with the window's (which are
        consumed)."""
        if self.window_sum is not None:
            assert self.window_batches is not None
            count = self.window_batches + 1.0
            grads = [
                (total if g is None else total + g.float()) / count
                for total, g in zip(self.window_sum, grads, strict=True)
            ]
            self.window_sum = self.window_batches = None
        return self.masks_from_gradients(step, grads)

    def masks_from_gradients(
        self, step: int, grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """The new masks given the grow gradients (the batch's, or the window's mean)."""
        return super().new_masks(step, grads)

    # ----------------------------------------------------------------------- persistence
    def method_state(self) -> dict[str, Any]:
        state = super().method_state()
        if self.args.grad_accumulation > 1:
            window = None
            if self.window_sum is not None and self.window_batches is not None:
                sums = {n: s.clone() for n, s in zip(self.names, self.window_sum, strict=True)}
                window = {"sum": sums, "batches": self.window_batches.clone()}
            state["gradient_window"] = window
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        super().load_method_state(state)
        window = state.get("gradient_window") if self.args.grad_accumulation > 1 else None
        self.window_sum = self.window_batches = None
        if window is None:
            return
        sums = window["sum"]
        for name, p in zip(self.names, self.params, strict=True):
            if name not in sums or tuple(sums[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"the saved gradient window has no sum of shape {tuple(p.shape)} for {name}: "
                    "the state does not belong to this sparsifier."
                )
        device = self.params[0].device
        self.window_sum = [sums[n].to(device, torch.float32).clone() for n in self.names]
        self.window_batches = window["batches"].to(device, torch.float32).clone()
