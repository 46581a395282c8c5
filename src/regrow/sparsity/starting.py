"""Starting a sparsifier from given masks (a lottery ticket, RigL re-initialised from its final
topology): the masks are installed through the contract's one path (SPEC §4.3) and the method's
count rule applies from them on. A mixin of :class:`~regrow.sparsity.base.Sparsifier`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .registry import sparse_start_methods
from .selection import seeded_generator


class StartFromMasks:
    """``start_from_masks`` and its checks, on a :class:`~regrow.sparsity.base.Sparsifier`."""

    # The attributes and methods of the Sparsifier this mixin is part of.
    names: list[str]
    params: list[Any]
    masks: dict[str, torch.Tensor]
    traits: Any

    #: How :meth:`start_from_masks` uses the masks it is given.
    START_MODES = ("exact", "shuffle_within_layers")

    @torch.no_grad()
    def start_from_masks(
        self,
        masks: Mapping[str, torch.Tensor],
        mode: str = "exact",
        *,
        seed: int | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Start training (at step 0) from given masks instead of this method's initial ones:
        the masks of another run (a lottery ticket, RigL re-initialised from its final topology).

        Args:
            masks: parameter name → bool mask, one for every sparse tensor of this sparsifier
                and no other, each of its tensor's shape.
            mode: ``"exact"`` installs them as given; ``"shuffle_within_layers"`` permutes each
                layer's mask with a generator seeded by (``seed``, layer): every layer keeps its
                active count, the positions change.
            seed: seeds the shuffle (default: the sparsifier's seed).
            weights: parameter name → the values to start from where a mask is active (e.g. the
                model's initial parameters, copied before this sparsifier was built, which zeroed
                them outside its own initial masks); default: the parameters' current values.
                Needed with ``init="sparse_fan_in"``, which rescales them to the new masks.

        The masks are installed through the same path as a mask update (SPEC §4.3), so weights
        and optimizer state are zero wherever a connection is inactive. Afterwards the method
        runs as usual from these masks (a dynamic method conserves their per-layer counts).
        ``ValueError`` names the first layer whose name or shape differs.
        """
        self._check_start_masks(masks, mode)
        if self.init == "sparse_fan_in" and weights is None:
            raise ValueError(
                "init='sparse_fan_in' rescales the initial weights to the masks' fan-ins, and "
                "the current ones were already rescaled to this sparsifier's own masks: pass "
                "weights= (the model's parameters copied before the sparsifier was built)."
            )
        base_seed = self.seed if seed is None else int(seed)
        new = []
        for name, param in zip(self.names, self.params, strict=True):
            mask = masks[name].to(param.device)
            if mode == "shuffle_within_layers":
                generator = seeded_generator(base_seed, -1, f"shuffle/{name}", param.device)
                order = torch.randperm(mask.numel(), generator=generator, device=param.device)
                mask = mask.reshape(-1)[order].view(mask.shape)
            new.append(mask.clone())
        if weights is not None:
            for name, param in zip(self.names, self.params, strict=True):
                if name not in weights or tuple(weights[name].shape) != tuple(param.shape):
                    raise ValueError(
                        f"weights: no tensor of shape {tuple(param.shape)} for {name}."
                    )
                param.copy_(weights[name])
        # Every connection counts as active before the install, so each weight survives exactly
        # where its new mask is active; the count rule applies from these masks on.
        before, started = list(self._active), self.start_counts
        for i, mask in enumerate(new):
            self.masks[self.names[i]].fill_(True)
            self._active[i] = int(mask.sum())
        try:
            self._apply_masks(new, 0)
        except RuntimeError as error:  # the method's own structure (e.g. SRigL's fan-in)
            for i, name in enumerate(self.names):  # nothing changed: the checks come first
                self.masks[name].copy_(self._mask_values[i].bool())
            self._active[:] = before
            self.start_counts = started
            self.mask_weights()
            raise ValueError(f"these masks do not suit {type(self).__name__}: {error}") from None
        self.start_counts = self.active_counts()
        self._initialize_for_masks()

    def _check_start_masks(self, masks: Mapping[str, torch.Tensor], mode: str) -> None:
        """What :meth:`start_from_masks` refuses, each as one ``ValueError`` naming the layer."""
        kind = type(self).__name__
        if not isinstance(masks, Mapping):
            raise ValueError(
                f"masks={masks!r} is not a mapping: pass parameter name -> bool mask, e.g. "
                "torch.load(checkpoint)['sparsifier']['masks']."
            )
        if not self.traits.masked or self.traits.starts_dense:
            why = "trains without masks" if not self.traits.masked else "starts dense"
            raise ValueError(
                f"{kind} {why}, so it cannot start from given masks: use a method that starts "
                f"from sparse masks ({', '.join(sparse_start_methods())})."
            )
        if self.step_count != 0 or self.last_update_step is not None:
            raise ValueError(
                f"start_from_masks is for step 0, but this {kind} is at step {self.step_count}: "
                "call it right after building the sparsifier, before training."
            )
        if mode not in self.START_MODES:
            raise ValueError(f"mode={mode!r}: allowed values are {', '.join(self.START_MODES)}.")
        for name in self.names:
            if name not in masks:
                raise ValueError(
                    f"layer {name} ({'x'.join(map(str, self.masks[name].shape))}) has no mask in "
                    f"the masks given, which are for layers {sorted(masks)}."
                )
            given = tuple(masks[name].shape)
            if given != tuple(self.masks[name].shape):
                raise ValueError(
                    f"layer {name}: the mask given has shape {given}, this sparsifier's "
                    f"parameter {tuple(self.masks[name].shape)}."
                )
            if masks[name].dtype != torch.bool:
                raise ValueError(f"layer {name}: the mask given is {masks[name].dtype}, not bool.")
        extra = [name for name in masks if name not in self.masks]
        if extra:
            raise ValueError(
                f"layer {extra[0]} has a mask in the masks given but is not a sparse tensor of "
                f"this {kind} (its sparse tensors: {self.names})."
            )
