"""The sparsifier: owns the masks and enforces the contract of SPEC §4 in one place.

A method is a small subclass that says *when* its masks change and *what* the new masks are; this
class does everything a method must never get wrong: keeping inactive weights, their gradients and
their optimizer state at exactly zero, starting new connections at zero, leaving a connection that is
dropped and regrown in one update untouched, postponing an update whose gradients are not finite,
counting optimizer steps, and saving/restoring all of it.

Usage (after ``loss.backward()``)::

    if sparsifier.step():      # masks the gradients; False when this batch was used for a mask
        optimizer.step()       # update instead of an optimizer step (RigL, SNIP)

The weights are re-masked after every optimizer step by a step post-hook on the optimizer.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from . import masks as mask_utils
from .distributions import active_counts, check_distribution, check_sparsity, layer_densities
from .optim_state import check_optimizer, momentum_like, zero_state_
from .redistribution import check_redistribution, redistribute
from .schedules import DROP_SCHEDULES, UpdateSchedule, drop_fraction

REINITS = ("zero", "kaiming")

#: Every registered method, by lower-case name. Filled by :func:`register`.
METHODS: dict[str, type[Sparsifier]] = {}


def register(cls: type[Sparsifier]) -> type[Sparsifier]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Sparsifier]:
    """The sparsifier class registered as ``name`` (case-insensitive)."""
    key = str(name).lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(
            f"method={name!r} is unknown: allowed values are {', '.join(sorted(METHODS))}."
        )
    return METHODS[key]


def seeded_generator(seed: int, step: int, layer: str, device: torch.device) -> torch.Generator:
    """A generator seeded by (seed, step, layer) alone: the same on every rank and after a resume
    (SPEC §9), independent of the global RNG."""
    digest = hashlib.blake2b(f"{seed}/{step}/{layer}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


def topk_mask(
    scores: torch.Tensor, k: int, generator: torch.Generator, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of the ``k`` highest ``scores`` (compared in float32), ``excluded`` never chosen.

    Exact ties are broken by a seeded random permutation rather than by added noise, so values that
    differ are never reordered and the choice among equal values is reproducible and unbiased.
    """
    flat = scores.detach().reshape(-1).float()
    if excluded is not None:
        flat = flat.masked_fill(excluded.reshape(-1), -math.inf)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.randperm(flat.numel(), generator=generator, device=flat.device)
        chosen[order[torch.topk(flat[order], k, sorted=False).indices]] = True
    return chosen.view(scores.shape)


class Sparsifier:
    """Base of every method. See the module docstring for the training-loop contract.

    Args:
        model: the network; the weights of its conv and linear layers are made sparse.
        optimizer: the optimizer over the model's parameters (every sparse one must be in it).
        sparsity: fraction of zero weights over the sparse layers, ``0 <= sparsity < 1``.
        distribution: ``"uniform"``, ``"er"`` or ``"erk"`` (SPEC §2).
        total_steps: optimizer steps of the whole run (needed by methods with a schedule).
        delta_t: optimizer steps between mask updates (``None``: the method's default, 100; 1,000
            for Pruning).
        alpha: initial drop fraction (dynamic methods).
        t_end: last step with a mask update; ``None`` is 75% of ``total_steps``.
        dense_layers: module/parameter names (or globs) kept dense; ``None`` keeps the first
            layer dense (SPEC §1), ``[]`` makes every layer sparse.
        seed: seeds every mask decision (SPEC §9).
        power: ERK exponent (0 gives uniform).
        custom_densities: name → density for layers outside the budget.
        sparse_layers: names of the tensors to make sparse instead of every conv/linear weight.
        begin_step: first step with a mask update.
        drop_schedule: ``"cosine"`` (default), ``"constant"`` or ``"linear"``.
        reinit: value of a new connection: ``"zero"`` (default) or ``"kaiming"`` (He normal).
        redistribution: ``None``/``"none"``, ``"momentum"`` or ``"gradient"`` (SPEC §6).
        elementwise_optimizer: assert that an optimizer regrow does not know keeps only
            elementwise state.
    """

    name: ClassVar[str] = ""
    #: Masks start full (SNIP, Pruning) instead of at the distribution's densities.
    starts_dense: ClassVar[bool] = False
    #: The update uses the batch instead of an optimizer step (RigL, SNIP).
    updates_before_step: ClassVar[bool] = False
    default_delta_t: ClassVar[int] = 100
    #: Mask updates move connections without changing how many there are (dynamic methods).
    conserves_active_counts: ClassVar[bool] = False
    #: The backward pass needs the dense weight gradient on every step (SNFS), not only on
    #: update iterations: the FLOP counter charges 2 f_S + f_D for it (SPEC §7).
    dense_gradients_every_step: ClassVar[bool] = False
    #: False for Dense: no tensor is made sparse.
    has_masks: ClassVar[bool] = True
    #: Needs ``total_steps`` for its schedule.
    needs_total_steps: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sparsity: float = 0.9,
        distribution: str = "erk",
        total_steps: int | None = None,
        delta_t: int | None = None,
        alpha: float = 0.3,
        t_end: int | None = None,
        dense_layers: Sequence[str] | None = None,
        seed: int = 0,
        *,
        power: float = 1.0,
        custom_densities: dict[str, float] | None = None,
        sparse_layers: Sequence[str] | None = None,
        begin_step: int = 0,
        drop_schedule: str = "cosine",
        reinit: str = "zero",
        redistribution: str | None = None,
        elementwise_optimizer: bool = False,
    ) -> None:
        self.sparsity = check_sparsity(sparsity) if self.has_masks else 0.0
        self.distribution = check_distribution(distribution)
        if self.needs_total_steps and (total_steps is None or int(total_steps) < 1):
            raise ValueError(
                f"total_steps={total_steps!r}: {type(self).__name__} needs the number of optimizer "
                "steps of the run (an integer >= 1) for its schedule."
            )
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha={alpha!r}: allowed values are 0 < alpha <= 1.")
        if drop_schedule not in DROP_SCHEDULES:
            raise ValueError(
                f"drop_schedule={drop_schedule!r} is unknown: allowed values are {DROP_SCHEDULES}."
            )
        if reinit not in REINITS:
            raise ValueError(f"reinit={reinit!r} is unknown: allowed values are {REINITS}.")
        self.model, self.optimizer = model, optimizer
        self.total_steps = None if total_steps is None else int(total_steps)
        self.delta_t = self.default_delta_t if delta_t is None else int(delta_t)
        self.alpha, self.seed = float(alpha), int(seed)
        self.t_end = (
            int(t_end)
            if t_end is not None
            else (int(0.75 * self.total_steps) if self.total_steps else 0)
        )
        self.begin_step, self.drop_schedule, self.reinit = int(begin_step), drop_schedule, reinit
        self.redistribution = check_redistribution(redistribution)

        all_params = dict(model.named_parameters())
        self.names = (
            mask_utils.sparse_parameter_names(model, dense_layers, sparse_layers)
            if self.has_masks
            else []
        )
        self.params = [all_params[name] for name in self.names]
        check_optimizer(
            optimizer, dict(zip(self.names, self.params, strict=True)), elementwise_optimizer
        )
        shapes = {name: tuple(p.shape) for name, p in zip(self.names, self.params, strict=True)}
        self.target_densities = layer_densities(
            shapes, self.sparsity, self.distribution, power, custom_densities
        )
        self.target_counts = active_counts(shapes, self.target_densities)

        self.step_count = 0
        self.last_update_step: int | None = None
        self.pending_update = False
        self._stepped = False
        with torch.no_grad():
            initial = [
                torch.ones_like(p, dtype=torch.bool)
                if self.starts_dense
                else self._random_mask(p, self.target_counts[name], name)
                for name, p in zip(self.names, self.params, strict=True)
            ]
        self.masks: dict[str, torch.Tensor] = dict(zip(self.names, initial, strict=True))
        mask_utils.register_masks(model, self.masks)
        self._mask_values = [m.to(p.dtype) for m, p in zip(initial, self.params, strict=True)]
        self._active = [int(m.sum()) for m in initial]
        with torch.no_grad():
            mask_utils.foreach_mask_(self.params, self._mask_values)
            zero_state_(optimizer, zip(self.names, self.params, strict=True), initial)
        self._hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        self.verify_masks_across_ranks("at construction")

    # ----------------------------------------------------------------- what a method supplies
    def update_due(self, step: int) -> bool:
        """Whether the masks change at ``step`` (before the optimizer step if
        :attr:`updates_before_step`, else right after it). Static methods: never."""
        return False

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The masks after an update at ``step``; the base class applies them. Default: unchanged."""
        return [mask.clone() for mask in self.masks.values()]

    def observe_gradients(self, grads: list[torch.Tensor | None]) -> None:
        """Called with the dense gradients on every :meth:`step` (SNFS keeps an average)."""

    def method_state(self) -> dict[str, Any]:
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`method_state` returned."""

    # --------------------------------------------------------------------- the training loop
    def step(self) -> bool:
        """Call after ``backward()``. Masks the gradients and returns ``True`` when the caller
        should take an optimizer step; ``False`` when this batch was spent on a mask update (or
        such an update was postponed because its gradients are not finite)."""
        if self.params and (self.params[0].device, self.params[0].dtype) != (
            self._mask_values[0].device,
            self._mask_values[0].dtype,
        ):
            raise RuntimeError(
                f"the model is {self.params[0].dtype} on {self.params[0].device} but the masks "
                f"were built for {self._mask_values[0].dtype} on {self._mask_values[0].device}: "
                f"move or cast the model before building the {type(self).__name__} sparsifier."
            )
        grads = [p.grad for p in self.params]
        self.observe_gradients(grads)
        step = self.step_count
        if self.updates_before_step and self.update_due(step) and self.last_update_step != step:
            if self._finite(grads):
                self._apply_masks(self.new_masks(step, grads), step)
                self.last_update_step = step
            self._mask_gradients(grads)
            return False
        self._mask_gradients(grads)
        self._stepped = True
        return True

    def _after_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        if not self._stepped:
            raise RuntimeError(
                f"optimizer.step() ran without {type(self).__name__}.step() before it: call "
                "`if sparsifier.step(): optimizer.step()` after every backward, so gradients are "
                "masked and mask updates happen on schedule."
            )
        self._stepped = False
        with torch.no_grad():
            mask_utils.foreach_mask_(self.params, self._mask_values)
        step = self.step_count
        if not self.updates_before_step and (self.pending_update or self.update_due(step)):
            grads = [p.grad for p in self.params]
            if self._finite(grads):
                self._apply_masks(self.new_masks(step, grads), step)
                self.last_update_step, self.pending_update = step, False
            else:
                self.pending_update = True
        self.step_count += 1

    def _mask_gradients(self, grads: list[torch.Tensor | None]) -> None:
        pairs = [(g, m) for g, m in zip(grads, self._mask_values, strict=True) if g is not None]
        if pairs:
            mask_utils.foreach_mask_(*zip(*pairs, strict=True))

    @staticmethod
    def _finite(grads: list[torch.Tensor | None]) -> bool:
        """All gradients finite (one host synchronisation; only called on update steps)."""
        flags = [g.isfinite().all() for g in grads if g is not None]
        return bool(torch.stack(flags).all()) if flags else True

    # ------------------------------------------------------------ the contract, in one place
    def _apply_masks(self, new: list[torch.Tensor], step: int) -> None:
        """Install ``new`` masks (SPEC §4.3): weights and optimizer state survive only where a
        connection was active before and after; new connections start at zero (or ``reinit``)."""
        self._check_new_masks(new)
        with torch.no_grad():
            old = [self.masks[name] for name in self.names]
            keep = [o & n for o, n in zip(old, new, strict=True)]
            mask_utils.foreach_mask_(
                self.params, [k.to(p.dtype) for k, p in zip(keep, self.params, strict=True)]
            )
            zero_state_(self.optimizer, zip(self.names, self.params, strict=True), keep)
            if self.reinit == "kaiming":
                for name, p, o, n in zip(self.names, self.params, old, new, strict=True):
                    grown = n & ~o
                    fan_in = p[0].numel()
                    values = torch.randn(
                        p.shape,
                        generator=seeded_generator(self.seed, step, "reinit/" + name, p.device),
                        device=p.device,
                        dtype=p.dtype,
                    )
                    p.add_(values * math.sqrt(2.0 / fan_in) * grown)
            for i, (name, mask) in enumerate(zip(self.names, new, strict=True)):
                self.masks[name].copy_(mask)
                self._mask_values[i].copy_(mask)
                self._active[i] = int(mask.sum())
        self.verify_masks_across_ranks(f"after the update at step {step}")

    def _check_new_masks(self, new: list[torch.Tensor]) -> None:
        """A method's masks must be boolean, shaped like their tensors, and (dynamic methods)
        keep every layer's active count — or, with redistribution, the total (SPEC §4.4, §6)."""
        for name, mask in zip(self.names, new, strict=True):
            if mask.dtype != torch.bool or mask.shape != self.masks[name].shape:
                raise RuntimeError(
                    f"{type(self).__name__} produced a {mask.dtype} mask of shape "
                    f"{tuple(mask.shape)} for {name}, not a bool mask of {tuple(self.masks[name].shape)}."
                )
        if not self.conserves_active_counts:
            return
        counts = [int(mask.sum()) for mask in new]
        if self.redistribution == "none":
            changed = [
                f"{name}: {before} -> {after}"
                for name, before, after in zip(self.names, self._active, counts, strict=True)
                if before != after
            ]
        else:
            changed = (
                []
                if sum(counts) == sum(self._active)
                else [f"total: {sum(self._active)} -> {sum(counts)}"]
            )
        if changed:
            raise RuntimeError(
                f"{type(self).__name__} changed active counts in a mask update ({', '.join(changed)}); "
                "a dynamic method must move connections, not add or remove them."
            )

    def mask_checksums(self) -> torch.Tensor:
        """Per layer ``(active count, position-weighted sum)`` as int64 ``[layers, 2]``: equal on
        two ranks only if their masks are (up to a hash collision)."""
        rows = []
        for mask in self.masks.values():
            positions = torch.nonzero(mask.reshape(-1)).squeeze(1)
            hashed = (positions * 1_000_003 + 12_345) % 2_147_483_647
            rows.append(torch.stack([positions.new_tensor(positions.numel()), hashed.sum()]))
        return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.long)

    def verify_masks_across_ranks(self, when: str = "") -> None:
        """Under ``torch.distributed``, check that every rank holds the same masks (SPEC §9).

        Two all-reduces (max and min) of :meth:`mask_checksums`; run after every mask update and
        at construction. Raises ``RuntimeError`` naming the layers that differ. A no-op when no
        process group is initialised.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        if not self.names:
            return
        local = self.mask_checksums()
        high, low = local.clone(), local.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        differs = (high != low).any(dim=1).tolist()
        if any(differs):
            layers = [name for name, bad in zip(self.names, differs, strict=True) if bad]
            raise RuntimeError(
                f"masks differ across ranks {when or 'now'} in layers {layers} (rank "
                f"{dist.get_rank()}): every rank must build the sparsifier with the same seed, "
                "model and configuration, and update from all-reduced gradients."
            )

    def _random_mask(self, param: torch.Tensor, count: int, name: str) -> torch.Tensor:
        generator = seeded_generator(self.seed, -1, name, param.device)
        scores = torch.rand(param.shape, generator=generator, device=param.device)
        return topk_mask(scores, count, generator)

    # ------------------------------------------------------------------------ inspection
    def densities(self) -> dict[str, float]:
        """Current density of each sparse tensor (active / total)."""
        return {
            name: active / p.numel()
            for name, p, active in zip(self.names, self.params, self._active, strict=True)
        }

    def active_counts(self) -> dict[str, int]:
        return dict(zip(self.names, self._active, strict=True))

    def global_density(self) -> float:
        total = sum(p.numel() for p in self.params)
        return sum(self._active) / total if total else 1.0

    def __str__(self) -> str:
        rows = [("layer", "shape", "density", "active", "size")]
        for name, p, active in zip(self.names, self.params, self._active, strict=True):
            rows.append(
                (
                    name,
                    "x".join(map(str, p.shape)),
                    f"{active / p.numel():.4f}",
                    f"{active:,}",
                    f"{p.numel():,}",
                )
            )
        total = sum(p.numel() for p in self.params)
        rows.append(
            ("total", "", f"{self.global_density():.4f}", f"{sum(self._active):,}", f"{total:,}")
        )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            f"{type(self).__name__}(sparsity={self.sparsity}, distribution={self.distribution!r}, "
            f"step={self.step_count})"
        ]
        for j, row in enumerate(rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
            lines.append("  ".join(cells).rstrip())
            if j in (0, len(rows) - 2):
                lines.append("-" * (sum(widths) + 8))
        return "\n".join(lines)

    # ----------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Masks, step counter, schedule position and method state (SPEC §9)."""
        return {
            "method": self.name,
            "step_count": self.step_count,
            "last_update_step": self.last_update_step,
            "pending_update": self.pending_update,
            "masks": {name: mask.clone() for name, mask in self.masks.items()},
            "method_state": self.method_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into this sparsifier (built on the same model layout)."""
        if state.get("method") != self.name:
            raise ValueError(
                f"this state is from method {state.get('method')!r}, not {self.name!r}: load it into "
                f"a {get_method(state['method']).__name__ if state.get('method') in METHODS else 'matching'} sparsifier."
            )
        saved = state["masks"]
        if sorted(saved) != sorted(self.names):
            raise ValueError(
                f"the saved masks are for layers {sorted(saved)}, this sparsifier has {sorted(self.names)}."
            )
        for i, name in enumerate(self.names):
            mask = saved[name]
            if tuple(mask.shape) != tuple(self.masks[name].shape):
                raise ValueError(
                    f"saved mask {name} has shape {tuple(mask.shape)}, the parameter {tuple(self.masks[name].shape)}."
                )
            self.masks[name].copy_(mask)
            self._mask_values[i].copy_(mask)
            self._active[i] = int(mask.sum())
        self.step_count = int(state["step_count"])
        self.last_update_step = state["last_update_step"]
        self.pending_update = bool(state["pending_update"])
        self.load_method_state(state["method_state"])
        self.verify_masks_across_ranks("after load_state_dict")

    def remove(self) -> None:
        """Detach the optimizer hook (the masks stay registered on the model)."""
        self._hook.remove()


class DynamicSparsifier(Sparsifier, ABC):
    """Drop the smallest-magnitude weights, grow by a method's score (SPEC §3, §4, §6)."""

    needs_total_steps = True
    conserves_active_counts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = UpdateSchedule(self.delta_t, self.begin_step, self.t_end)

    def update_due(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    @abstractmethod
    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        """Score of every position of layer ``index``; the highest among the free ones grow."""

    def drop_fraction(self, step: int) -> float:
        return drop_fraction(step, self.alpha, self.t_end, self.drop_schedule)

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        fraction = self.drop_fraction(step)
        kept, drops = [], []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            mask, active = self.masks[name], self._active[i]
            drop = math.floor(fraction * active)
            generator = seeded_generator(self.seed, step, "drop/" + name, p.device)
            kept.append(topk_mask(p.abs(), active - drop, generator, excluded=~mask))
            drops.append(drop)
        grow_counts = self._grow_counts(drops, kept, grads)
        new = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            generator = seeded_generator(self.seed, step, "grow/" + name, p.device)
            scores = self.grow_scores(step, i, grads[i])
            new.append(kept[i] | topk_mask(scores, grow_counts[i], generator, excluded=kept[i]))
        return new

    def _grow_counts(
        self, drops: list[int], kept: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> list[int]:
        if self.redistribution == "none":
            return drops
        stats = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            source = (
                grads[i] if self.redistribution == "gradient" else momentum_like(self.optimizer, p)
            )
            if source is None:
                raise ValueError(
                    f"redistribution={self.redistribution!r} needs a {self.redistribution} for {name}, "
                    "and there is none (an optimizer without momentum, or no gradient). Use "
                    "redistribution='gradient' or None."
                )
            mask = self.masks[name]
            stats.append(
                float(source.detach().float().abs().mul(mask).sum()) / max(self._active[i], 1)
            )
        capacities = [p.numel() - int(k.sum()) for p, k in zip(self.params, kept, strict=True)]
        return redistribute(sum(drops), stats, capacities)
