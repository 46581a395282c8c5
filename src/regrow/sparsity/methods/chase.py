"""Chase: RigL with one global drop and grow and gradual channel removal (Yin et al., "Dynamic
Sparsity Is Channel-Level Sparsity Learner", NeurIPS 2023; SPEC §16).

Owns the set of removed channels (output rows of the sparse layers, read through
:meth:`~regrow.sparsity.Sparsifier.rows`, so a ``Conv1D``'s columns). Invariants: the sparse
layers together hold the budget's total of active weights after every update (count rule
``"total"``; each layer's count moves); a removed channel's row is empty from its removal on and
is never regrown; the output layer never loses a channel and every layer keeps at least
``max(1, floor(β (1 − S_c) out))`` channels.

The update (RigL's schedule and batch: before the optimizer step, with the dense gradient):

1. *Channel removal* (at every ``channel_every``-th mask update up to the removal window's end):
   the channels with the smallest unmasked mean magnitude, ``UMM = Σ|w| / fan_in`` over the
   channel's whole row (inactive weights count as zeros, as the reference's ``--mag_wise``), ranked
   over all eligible layers together, are removed until ``floor(S_c · N · r(p))`` of the ``N``
   eligible channels are, ``r`` the cubic or linear ramp over the window.
2. *Drop* ``floor(f · n)`` of the ``n`` active weights by the smallest ``|w|`` over all layers
   together (one threshold), besides every weight of a removed channel.
3. *Grow* as many as the total lacks by the largest ``|∇L|`` over all layers together (raw
   values, no per-layer normalisation, as the reference's ``global_gradients``), removed channels
   excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..args import MethodArgs, arg, at_least, in_range
from ..base import register
from ..gradient_growth import GradientGrowthArgs, GradientGrowthSparsifier
from ..layers import fan_in_shape, from_rows
from ..plan import AllocationPlan
from ..schedules import gmp_sparsity
from ..selection import seeded_generator, topk_mask

CHANNEL_SCHEDULES = ("cubic", "linear")


@dataclass(frozen=True)
class ChaseArgs(GradientGrowthArgs):
    """RigL's arguments plus the channel-removal schedule."""

    channel_sparsity: float = arg(
        0.5,
        "S_c: fraction of the eligible channels (rows of every sparse layer but the output "
        "layer) removed by the end of the removal window (0.5: the reference's CIFAR scripts; "
        "0: global RigL without channel removal)",
        in_range(0, 1, high_open=True),
    )
    channel_schedule: str = arg(
        "cubic",
        "ramp of the removed channels over the window: cubic (Zhu & Gupta, the reference's "
        "--gpm_filter_pune) or linear",
        choices=CHANNEL_SCHEDULES,
    )
    channel_every: int = arg(
        1, "mask updates between channel removals (1: at every mask update)", at_least(1)
    )
    channel_end_fraction: float | None = arg(
        None,
        "last channel removal, as a fraction of the run (None: T_end, the last mask update; the "
        "reference stops at 130 of 160 epochs)",
        in_range(0, 1),
    )
    min_channel_fraction: float = arg(
        0.5,
        "β: every layer keeps at least max(1, floor(β (1 − S_c) out)) channels (0.5: the "
        "reference's default and ResNet-50 script; its VGG-19 script uses 0.2)",
        in_range(0, 1),
    )

    def check(self) -> None:
        super().check()
        if self.redistribution != "none":
            raise ValueError(
                f"redistribution={self.redistribution!r} is not available for chase: its global "
                "drop and grow already move weights between layers. Allowed value: 'none'."
            )
        end = self.channel_end_fraction
        if end is not None and end > self.t_end_fraction:
            raise ValueError(
                f"channel_end_fraction={end} is after the last mask update (t_end_fraction="
                f"{self.t_end_fraction}): channels are removed at mask updates, so allowed values "
                f"are 0 <= channel_end_fraction <= {self.t_end_fraction} (or None)."
            )


@register
class Chase(GradientGrowthSparsifier):
    """Global RigL with gradual channel removal (see the module docstring).

    Inspection: :meth:`removed_channels` (name → removed rows), :meth:`scheduled_removed` (how
    many channels are removed after a removal at a step) and :attr:`channel_steps` (the first and
    last removal step).
    """

    name = "chase"
    # Its drop and grow rank single weights over all layers at once (SPEC §19).
    structures = ("unstructured",)
    Args = ChaseArgs
    args: ChaseArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.total_steps is not None
        a = self.args
        output = self.plan.output_layer
        #: The layers that can lose channels: every sparse layer but the output layer.
        self.eligible = [name for name in self.names if name != output]
        self.removed = {
            name: torch.zeros(self.rows(name, p).shape[0], dtype=torch.bool, device=p.device)
            for name, p in zip(self.names, self.params, strict=True)
        }
        self.min_channels = {
            name: max(1, math.floor(a.min_channel_fraction * (1 - a.channel_sparsity) * out))
            for name, out in ((n, r.numel()) for n, r in self.removed.items())
        }
        self.channel_end = (
            self.t_end
            if a.channel_end_fraction is None
            else int(a.channel_end_fraction * self.total_steps)
        )
        self.channel_steps = self._first_and_last_removal()
        self._check_room()

    # ------------------------------------------------------------------- the channel schedule
    def _first_and_last_removal(self) -> tuple[int, int] | None:
        """The first and last step with a channel removal (``None``: the window has none)."""
        a = self.args
        if self.channel_end < a.begin_step:
            if a.channel_sparsity > 0:
                raise ValueError(
                    f"channel_end_fraction={a.channel_end_fraction} ends channel removal at step "
                    f"{self.channel_end}, before the first mask update (begin_step="
                    f"{a.begin_step}): allowed values end it at or after begin_step, or "
                    "channel_sparsity=0."
                )
            return None
        updates = (self.channel_end - a.begin_step) // a.delta_t
        last = a.begin_step + (updates // a.channel_every) * a.channel_every * a.delta_t
        return a.begin_step, last

    def channel_removal_due(self, step: int) -> bool:
        """Whether the mask update at ``step`` removes channels."""
        a = self.args
        if self.channel_steps is None or not self.update_due(step) or step > self.channel_end:
            return False
        return ((step - a.begin_step) // a.delta_t) % a.channel_every == 0

    def channel_capacity(self) -> int:
        """How many channels can be removed at most: each eligible layer down to its minimum."""
        return sum(self.removed[n].numel() - self.min_channels[n] for n in self.eligible)

    def scheduled_removed(self, step: int) -> int:
        """Removed channels after a channel removal at ``step``: ``floor(S_c · N · r(p))`` (at
        most :meth:`channel_capacity`), ``p`` the position of ``step`` between the first and last
        removal, ``r(p) = 1 − (1 − p)^3`` (cubic) or ``p`` (linear)."""
        if self.channel_steps is None:
            return 0
        first, last = self.channel_steps
        if self.args.channel_schedule == "cubic":
            ramp = gmp_sparsity(step, 1.0, first, last)
        else:
            ramp = 1.0 if last <= first else min(max((step - first) / (last - first), 0.0), 1.0)
        eligible = sum(self.removed[n].numel() for n in self.eligible)
        wanted = math.floor(self.args.channel_sparsity * eligible * ramp + 1e-9)
        return min(wanted, self.channel_capacity())

    def _check_room(self) -> None:
        """The budget must fit in the channels left after the most position-costly removal."""
        final = self.scheduled_removed(self.channel_steps[1]) if self.channel_steps else 0
        fan_ins = sorted(
            (fan_in_shape(self.masks[n].shape, n in self._transposed)[1], n) for n in self.eligible
        )
        freed, left = 0, final
        for fan_in, name in reversed(fan_ins):  # the widest rows first: the worst case
            rows = min(left, self.removed[name].numel() - self.min_channels[name])
            freed, left = freed + rows * fan_in, left - rows
        positions, budget = sum(p.numel() for p in self.params), sum(self._active)
        if positions - freed < budget:
            raise ValueError(
                f"channel_sparsity={self.args.channel_sparsity} can remove channels holding "
                f"{freed} of the sparse layers' {positions} weights, leaving fewer positions than "
                f"the {budget} active weights of the budget (sparsity {self.sparsity:g}): allowed "
                "values leave room for the budget; lower channel_sparsity or raise sparsity."
            )

    # ------------------------------------------------------------------------ the update
    @classmethod
    def mean_inference_flops(
        cls, profile: Any, plan: AllocationPlan, args: MethodArgs, total_steps: int
    ) -> float:
        raise ValueError(
            "training FLOPs of chase depend on where its global drop and grow and its channel "
            "removal put each layer: they are measured during training (train_flops in "
            "summary.json), not known in closed form. Use rigl for a closed form."
        )

    def count_rule(self) -> str | None:
        return "total"

    def _removed_positions(self, name: str) -> torch.Tensor:
        """Bool mask of the weight ``name``: every position of a removed channel."""
        rows = self.removed[name]
        _, fan_in = fan_in_shape(self.masks[name].shape, name in self._transposed)
        full = rows.unsqueeze(1).expand(rows.numel(), fan_in)
        return from_rows(full, self.masks[name].shape, name in self._transposed)

    @torch.no_grad()
    def _remove_channels(self, step: int) -> None:
        """Remove the channels of smallest UMM, ranked over the eligible layers together, up to
        :meth:`scheduled_removed`; a layer at its minimum gives no more (the reference's
        residual loop, as one selection)."""
        missing = self.scheduled_removed(step) - sum(int(r.sum()) for r in self.removed.values())
        if missing <= 0:
            return
        scores, candidates = [], []
        for name in self.eligible:
            weight = self.params[self.names.index(name)]
            umm = self.rows(name, weight.detach().abs()).float().mean(dim=1)
            removed = self.removed[name]
            room = removed.numel() - int(removed.sum()) - self.min_channels[name]
            generator = seeded_generator(self.seed, step, "channels/" + name, weight.device)
            # Only a layer's `room` weakest channels can go: the global choice is among them.
            candidates.append(topk_mask(-umm, max(room, 0), generator, excluded=removed))
            scores.append(-umm)
        generator = seeded_generator(self.seed, step, "channels/global", scores[0].device)
        chosen = topk_mask(torch.cat(scores), missing, generator, excluded=~torch.cat(candidates))
        sizes = [self.removed[name].numel() for name in self.eligible]
        for name, piece in zip(self.eligible, chosen.split(sizes), strict=True):
            self.removed[name] |= piece

    def masks_from_gradients(
        self, step: int, grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        if self.channel_removal_due(step):
            self._remove_channels(step)
        closed = torch.cat([self._removed_positions(n).reshape(-1) for n in self.names])
        active = torch.cat([self.masks[n].reshape(-1) for n in self.names]) & ~closed
        total = sum(self._active)
        drop = math.floor(self.drop_fraction(step) * total)
        magnitudes = torch.cat([p.detach().abs().reshape(-1).float() for p in self.params])
        generator = seeded_generator(self.seed, step, "drop/global", magnitudes.device)
        keep = max(int(active.sum()) - drop, 0)
        kept = topk_mask(magnitudes, keep, generator, excluded=~active)
        scores = torch.cat(
            [self.grow_scores(step, i, g).reshape(-1).float() for i, g in enumerate(grads)]
        )
        generator = seeded_generator(self.seed, step, "grow/global", magnitudes.device)
        grown = topk_mask(scores, total - keep, generator, excluded=kept | closed)
        new = kept | grown
        return [
            piece.view(p.shape)
            for piece, p in zip(
                new.split([p.numel() for p in self.params]), self.params, strict=True
            )
        ]

    def validate_masks(self, new: list[torch.Tensor]) -> None:
        """No removed channel holds a weight; no layer falls below its minimum of channels."""
        for name, mask in zip(self.names, new, strict=True):
            removed = self.removed[name]
            if bool(self.rows(name, mask)[removed].any()):
                raise RuntimeError(f"Chase regrew weights in removed channels of {name}.")
            if removed.numel() - int(removed.sum()) < self.min_channels[name]:
                raise RuntimeError(f"Chase removed too many channels of {name}.")

    # ----------------------------------------------------------------- inspection, persistence
    def removed_channels(self) -> dict[str, list[int]]:
        """Each sparse layer's removed channels (row indices; column indices of a weight stored
        ``[in, out]``), in the order of the plan."""
        return {name: torch.nonzero(r).flatten().tolist() for name, r in self.removed.items()}

    def method_state(self) -> dict[str, Any]:
        state = super().method_state()
        state["removed_channels"] = {name: r.clone() for name, r in self.removed.items()}
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        saved = state.get("removed_channels")
        if not isinstance(saved, dict):
            raise ValueError("the saved state has no removed_channels: it is not a chase state.")
        for name, removed in self.removed.items():
            value = saved.get(name)
            if not isinstance(value, torch.Tensor) or value.shape != removed.shape:
                raise ValueError(
                    f"the saved removed_channels has no bool vector of {removed.numel()} channels "
                    f"for {name}: the state does not belong to this sparsifier."
                )
        super().load_method_state(state)
        for name, removed in self.removed.items():
            removed.copy_(saved[name].to(removed.device, torch.bool))
