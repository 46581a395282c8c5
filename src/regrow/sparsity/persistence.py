"""Saving and restoring a sparsifier (SPEC §9): masks, step counter, schedule position and method
state, and the checks that refuse a state which does not belong to the sparsifier it is loaded
into (its method, layers, shapes, allocation and the method's count rule). A mixin of
:class:`~regrow.sparsity.base.Sparsifier`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .registry import METHODS


class Checkpointing:
    """``state_dict`` / ``load_state_dict`` of a :class:`~regrow.sparsity.base.Sparsifier`."""

    # The attributes of the Sparsifier this mixin is part of.
    name: str
    names: list[str]
    masks: dict[str, torch.Tensor]
    target_counts: dict[str, int]
    traits: Any

    def state_dict(self) -> dict[str, Any]:
        """Masks, step counter, schedule position and method state (SPEC §9)."""
        return {
            "method": self.name,
            "step_count": self.step_count,
            "last_update_step": self.last_update_step,
            "pending_update": self.pending_update,
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
            "ever_active": dict(
                zip(self.names, (m.clone() for m in self._ever_active), strict=True)
            ),
            "method_state": self.method_state(),
            "target_counts": dict(self.target_counts),
            "start_counts": None if self.start_counts is None else dict(self.start_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into this sparsifier (built on the same model layout and
        allocation). ``ValueError``, with nothing loaded, for a state of another method, other
        layers or shapes, or masks whose active counts contradict this sparsifier's allocation
        (see :meth:`_check_saved_counts`)."""
        if state.get("method") != self.name:
            raise ValueError(
                f"this state is from method {state.get('method')!r}, not {self.name!r}: load it into "
                f"a {METHODS[state['method']].__name__ if state.get('method') in METHODS else 'matching'} sparsifier."
            )
        saved = state["masks"]
        if sorted(saved) != sorted(self.names):
            raise ValueError(
                f"the saved masks are for layers {sorted(saved)}, this sparsifier has {sorted(self.names)}."
            )
        for name in self.names:
            mask = saved[name]
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"saved mask {name} is {kind}, not a bool tensor.")
            if tuple(mask.shape) != tuple(self.masks[name].shape):
                raise ValueError(
                    f"saved mask {name} has shape {tuple(mask.shape)}, the parameter {tuple(self.masks[name].shape)}."
                )
        broken = self._broken_structure([saved[name] for name in self.names])
        if broken:
            raise ValueError(
                f"saved masks of {', '.join(broken)} break this {type(self).__name__}'s structure "
                f"{str(self.structure)!r}: load the state into a sparsifier built with the "
                "structure it was saved with."
            )
        self._check_saved_counts(state)
        for i, name in enumerate(self.names):
            mask = saved[name]
            self.masks[name].copy_(mask)
            self._mask_values[i].copy_(mask)
            self._active[i] = int(mask.sum())
            # Older checkpoints did not keep the union of masks: it starts from the current ones.
            self._ever_active[i].copy_(state.get("ever_active", saved)[name])
        self.start_counts = state.get("start_counts")
        self.step_count = int(state["step_count"])
        self.last_update_step = state["last_update_step"]
        self.pending_update = bool(state["pending_update"])
        self.load_method_state(state["method_state"])
        self.verify_masks_across_ranks("after load_state_dict")

    def _check_saved_counts(self, state: Mapping[str, Any]) -> None:
        """The saved masks' active counts must be what this sparsifier's allocation and the
        method's declared rule allow (``ValueError`` naming the layer and both counts):

        - the state's own allocation (``target_counts``) must be this sparsifier's;
        - before the first mask update every mask holds its start count: a method that starts
          dense its :meth:`initial_counts` (full, unless it starts below), another the plan's or
          that of the masks :meth:`start_from_masks` installed;
        - after it, the method's :meth:`count_rule`: ``"layer"`` every layer's start count,
          ``"total"`` (redistribution) their sum, ``"fan_in"`` a constant fan-in within each
          layer's budget; ``None`` (Pruning, SNIP) nothing beyond the allocation.

        A state saved before these counts were recorded (no ``start_counts`` key) is checked only
        for what holds whatever masks it started from: full masks before the first update of a
        method that starts dense, and SRigL's constant fan-in.
        """
        kind = type(self).__name__
        self._check_saved_allocation(state.get("target_counts"))
        counts = {name: int(state["masks"][name].sum()) for name in self.names}
        sizes = {name: self.masks[name].numel() for name in self.names}
        if "start_counts" not in state:
            start = None
        else:
            start = {k: int(v) for k, v in (state["start_counts"] or self.initial_counts()).items()}

        def refuse(name: str, expected: str) -> None:
            raise ValueError(
                f"saved mask {name} has {counts[name]} active weights of {sizes[name]}, but this "
                f"{kind}'s allocation (sparsity {self.sparsity:g}, {self.distribution}) gives it "
                f"{expected}: the state does not belong to this sparsifier; load the one saved "
                "with it, or build the sparsifier with the settings the state was saved with."
            )

        if state.get("last_update_step") is None:  # no update yet (a postponed one changed nothing)
            # A method that starts dense never starts from given masks, so its own initial counts
            # (full, or GraNet's at a lower initial density) hold even without start_counts.
            initial = self.initial_counts() if self.traits.starts_dense else {}
            for name in initial:
                if counts[name] != initial[name]:
                    full = initial[name] == sizes[name]
                    why = f"full: {kind} starts dense" if full else f"{kind}'s initial count"
                    refuse(name, f"{initial[name]} ({why})")
            for name in self.names:
                if start and counts[name] != start[name]:
                    refuse(name, f"{start[name]}")
            return
        rule = self.count_rule()
        if rule == "fan_in":
            for name in self.names:
                active = self.rows(name, state["masks"][name]).sum(dim=1)
                active = active[active > 0]
                fan_in = self.target_counts[name] // max(active.numel(), 1)
                if not bool((active == fan_in).all()):
                    refuse(
                        name, f"a constant fan-in within its budget of {self.target_counts[name]}"
                    )
        elif start is None:
            return
        elif rule == "layer":
            for name in self.names:
                if counts[name] != start[name]:
                    refuse(name, f"{start[name]} ({kind} keeps every layer's count)")
        elif rule == "total" and sum(counts.values()) != sum(start.values()):
            name = next(n for n in self.names if counts[n] != start[n])
            refuse(
                name,
                f"a share of {sum(start.values())} weights over all layers, which these masks "
                f"sum to {sum(counts.values())}",
            )

    def _check_saved_allocation(self, saved_targets: Mapping[str, Any] | None) -> None:
        """A state's own allocation (``target_counts``, when it has one) must be this one's."""
        for name in self.names if saved_targets is not None else []:
            if int(saved_targets.get(name, -1)) != self.target_counts[name]:
                raise ValueError(
                    f"this state was saved by a sparsifier whose allocation gives layer {name} "
                    f"{saved_targets.get(name)} active weights, but this {type(self).__name__}'s "
                    f"allocation gives it {self.target_counts[name]}: load it into a sparsifier "
                    "built with the same sparsity, distribution, power, dense_layers and "
                    "custom_densities."
                )
