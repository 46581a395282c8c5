"""The sparsifier: owns the masks and enforces the contract of SPEC §4 in one place.

A method is one file: a small subclass that declares its hyper-parameters (an ``Args`` dataclass,
see :mod:`regrow.sparsity.args`) and its :class:`Traits`, and says *when* its masks change and
*what* the new masks are. This class does everything a method must never get wrong: keeping
inactive weights, their gradients and their optimizer state at exactly zero, starting new
connections at zero, leaving a connection that is dropped and regrown in one update untouched,
postponing an update whose gradients are not finite, counting optimizer steps, and saving/restoring
all of it.

Usage (after ``loss.backward()``)::

    if sparsifier.step():      # masks the gradients; False when this batch was used for a mask
        optimizer.step()       # update instead of an optimizer step (RigL, SNIP)

The step in two halves: :meth:`Sparsifier.step` before the optimizer step and
:meth:`Sparsifier.after_optimizer_step` after it. By default the second runs in a step post-hook on
the optimizer; with ``attach_hook=False`` the caller calls it (a compiled loop calls the tensor-only
pieces :meth:`~Sparsifier.mask_gradients` and :meth:`~Sparsifier.mask_weights` inside its compiled
function and :meth:`~Sparsifier.finish_step` outside). After each batch :attr:`Sparsifier.last_batch`
says what the FLOP counter needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from torch import nn

from . import masks as mask_utils
from .args import MethodArgs
from .arguments import check_objects, check_total_steps, method_args_of, whole_number
from .initialization import check_init, scale_to_sparse_fan_in_
from .layers import rows_view, transposed_parameters
from .optim_state import check_optimizer, zero_state_
from .persistence import Checkpointing
from .plan import AllocationPlan
from .registry import METHODS as METHODS  # re-exported: the registry is read through base
from .registry import register as register
from .registry import sparse_start_methods as sparse_start_methods
from .registry import unmasked_methods as unmasked_methods
from .selection import seeded_generator
from .starting import StartFromMasks
from .structure import STRUCTURES, LayerStructure, Structure, parse_structure

REINITS = ("zero", "kaiming")


def get_method(name: str) -> type[Sparsifier]:
    """The sparsifier class registered as ``name`` (case-insensitive), or ``package.module:Class``
    (imported; its module registers it or not, the class is used either way)."""
    text = str(name)
    if ":" in text:
        module_name, _, class_name = text.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"method={text!r} cannot be imported ({error}): give package.module:ClassName of "
                "a Sparsifier subclass importable from this Python environment."
            ) from None
        if not (isinstance(found, type) and issubclass(found, Sparsifier) and found.name):
            raise ValueError(
                f"method={text!r} is not a Sparsifier subclass with a `name`: subclass "
                "regrow.Sparsifier (or regrow.DynamicSparsifier) and decorate it with "
                "@regrow.register."
            )
        return found
    key = text.lower().replace("-", "_")
    if key not in METHODS:
        raise ValueError(
            f"method={name!r} is unknown: allowed values are {', '.join(sorted(METHODS))} "
            "(or package.module:ClassName of your own method)."
        )
    return METHODS[key]


@dataclass(frozen=True)
class Traits:
    """What a method is, declared once; the base class, the training-FLOP formula (SPEC §7) and
    the contract test read these instead of method names."""

    #: False: no tensor gets a mask (Dense, Small-Dense).
    masked: bool = True
    #: Masks start full instead of at the plan's densities (SNIP, Pruning).
    starts_dense: bool = False
    #: A mask update uses its batch instead of an optimizer step (RigL, SNIP).
    updates_before_step: bool = False
    #: Mask updates move connections without changing how many there are (dynamic methods).
    conserves_active_counts: bool = False
    #: When the backward pass computes the dense weight gradient: ``"never"``, ``"on_update"``
    #: (RigL's update batches: ``2 f_S + f_D`` there) or ``"always"`` (SNFS, every step).
    dense_backward: Literal["never", "on_update", "always"] = "never"
    #: Needs the run's ``total_steps`` for its schedule.
    needs_total_steps: bool = False


@dataclass(frozen=True)
class BatchReport:
    """What happened in the latest batch, for the FLOP counter and the loop."""

    optimizer_step: bool = True
    dense_backward: bool = False
    masks_changed: bool = False


class Sparsifier(StartFromMasks, Checkpointing):
    """Base of every method. See the module docstring for the training-loop contract.

    Args:
        model: the network; the tensors of the allocation plan are made sparse.
        optimizer: the optimizer over the model's parameters (every sparse one must be in it).
        sparsity: fraction of zero weights over the sparse layers, ``0 <= sparsity < 1``.
        distribution: ``"uniform"``, ``"er"`` or ``"erk"`` (SPEC §2).
        total_steps: optimizer steps of the whole run, a whole number (needed by methods with a
            schedule, ``>= 1``; ``2.7`` is refused, not truncated).
        dense_layers: module/parameter names (or globs) kept dense; ``None`` keeps the first
            layer dense (SPEC §1), ``[]`` makes every layer sparse.
        seed: seeds every mask decision (SPEC §9).
        power: ERK exponent (0 gives uniform).
        custom_densities: name → density for layers outside the budget.
        sparse_layers: names of the tensors to make sparse instead of the default choice.
        plan: an :class:`~regrow.sparsity.plan.AllocationPlan` to use instead of the five keys
            above.
        structure: ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``), ``"kernel"`` or ``"block:B"``:
            the masks' structure (SPEC §19, :mod:`regrow.sparsity.structure`); a method that
            cannot keep it (:attr:`structures`) refuses it. Taken from ``plan`` when one is given.
        init: ``"dense"`` keeps the model's initial weights; ``"sparse_fan_in"`` rescales each
            output neuron's active weights to the variance of its sparse fan-in once the first
            masks are chosen (:mod:`regrow.sparsity.initialization`; no effect on full rows).
        elementwise_optimizer: assert that an optimizer regrow does not know keeps only
            elementwise state.
        attach_hook: run :meth:`after_optimizer_step` in an optimizer step post-hook (default);
            ``False``: the caller runs it after every optimizer step.
        args: the method's own arguments (its ``Args`` dataclass, or a mapping); keyword
            arguments not listed above are added to them. A key the method does not have is a
            ``ValueError`` naming the method's arguments.
    """

    name: ClassVar[str] = ""
    #: The method's own hyper-parameters (a frozen dataclass, validated on construction).
    Args: ClassVar[type[MethodArgs]] = MethodArgs
    traits: ClassVar[Traits] = Traits()
    #: The structure families (:data:`~regrow.sparsity.structure.STRUCTURES`) the method keeps.
    structures: ClassVar[tuple[str, ...]] = STRUCTURES

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sparsity: float = 0.9,
        distribution: str = "erk",
        total_steps: int | None = None,
        *,
        dense_layers: Sequence[str] | None = None,
        seed: int = 0,
        power: float = 1.0,
        custom_densities: Mapping[str, float] | None = None,
        sparse_layers: Sequence[str] | None = None,
        plan: AllocationPlan | None = None,
        structure: str = "unstructured",
        init: str = "dense",
        elementwise_optimizer: bool = False,
        attach_hook: bool = True,
        args: MethodArgs | Mapping[str, Any] | None = None,
        **method_args: Any,
    ) -> None:
        kind = type(self).__name__
        self.args = self.Args.from_mapping({**method_args_of(args, kind), **method_args}, self.name)
        self.total_steps = check_total_steps(total_steps, self.traits.needs_total_steps, kind)
        check_objects(model, optimizer, plan, elementwise_optimizer, attach_hook)
        self.model, self.optimizer = model, optimizer
        self.seed = whole_number(seed, "seed", "integers (any integer seeds the masks)")
        self.init = check_init(init)
        plan = plan or AllocationPlan.build(
            model,
            sparsity,
            distribution,
            power,
            dense_layers,
            custom_densities,
            sparse_layers,
            masked=self.traits.masked,
            structure=structure,
        )
        self.structure = self._check_structure(structure, plan)
        # The model says which weights are stored [in, out] (Conv1D): their rows are columns.
        plan = plan.with_transposed(transposed_parameters(model))
        self.distribution_plan, self.plan = plan, self.adjust_plan(plan)
        self.sparsity, self.distribution = self.plan.sparsity, self.plan.distribution

        self.names = self.plan.names
        self._transposed = {layer.name for layer in self.plan.layers if layer.transposed}
        self._structures = {
            x.name: self.structure.for_layer(x.shape, x.transposed) for x in self.plan.masked
        }
        self.params = self._sparse_parameters(model)
        check_optimizer(
            optimizer, dict(zip(self.names, self.params, strict=True)), elementwise_optimizer
        )
        self.target_counts = self.plan.active_counts()
        #: The active counts the masks started from when :meth:`start_from_masks` installed
        #: another run's masks (``None``: the plan's), which the count rule is checked against
        #: when a state is loaded.
        self.start_counts: dict[str, int] | None = None

        self.step_count = 0
        self.last_update_step: int | None = None
        self.pending_update = False
        self.last_batch = BatchReport()
        self._stepped = False
        self._install_initial_masks()
        self._initialize_for_masks()
        self._hook = (
            optimizer.register_step_post_hook(self._after_optimizer_step_hook)
            if attach_hook
            else None
        )
        self.verify_masks_across_ranks("at construction")

    def _check_structure(self, structure: str, plan: AllocationPlan) -> Structure:
        """The plan's structure, which this method must keep (one ``ValueError`` line naming the
        method, the structure and the methods that keep it, otherwise)."""
        given, chosen = parse_structure(structure), parse_structure(plan.structure)
        if given.family != "unstructured" and given != chosen:
            raise ValueError(
                f"structure={structure!r} differs from the plan's structure {plan.structure!r}: "
                f"build the plan with structure={str(given)!r}, or leave structure out."
            )
        supported = self.supported_structures()
        if chosen.family not in supported:
            able = [name for name, cls in METHODS.items() if chosen.family in cls.structures]
            raise ValueError(
                f"{type(self).__name__} cannot keep structure={str(chosen)!r}: it supports "
                f"{', '.join(supported)} here; methods that support {chosen.family}: "
                f"{', '.join(able)}."
            )
        return chosen

    def supported_structures(self) -> tuple[str, ...]:
        """The structure families this method keeps with its arguments (default: the class's
        :attr:`structures`; a method whose arguments rule one out narrows it)."""
        return self.structures

    def _sparse_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The plan's tensors, checked to be parameters of ``model`` not yet masked."""
        all_params = dict(model.named_parameters())
        missing = [name for name in self.names if name not in all_params]
        if missing:
            raise ValueError(f"the plan names {missing}, which are not parameters of the model.")
        masked_already = [name for name in self.names if mask_utils.has_mask(model, name)]
        if masked_already:
            raise ValueError(
                f"the model already has masks for {masked_already[:3]}"
                f"{' …' if len(masked_already) > 3 else ''} from another sparsifier: build one "
                "sparsifier per model (to continue a run, build it on a fresh model and call "
                "load_state_dict)."
            )
        return [all_params[name] for name in self.names]

    @torch.no_grad()
    def _install_initial_masks(self) -> None:
        """Full masks (a method that starts dense) or random ones at the plan's counts; weights and
        optimizer state zeroed where inactive."""
        # The masks are held in four views, kept equal by ``_apply_masks`` (the one place that
        # changes them) and by ``load_state_dict``:
        #   self.masks        name -> bool tensor, registered on the model as ``<param>_mask``
        #                     buffers, so ``model.state_dict()`` carries them;
        #   self._mask_values the same masks in the parameter's dtype, for the foreach multiplies
        #                     of every step (no per-step cast, no host sync);
        #   self._active      the active count of each layer as a Python int, for the count rules
        #                     and the FLOP counter without reading the device;
        #   self._ever_active the union of every mask so far (in-time over-parameterisation).
        counts = self.initial_counts()
        initial = [
            torch.ones_like(p, dtype=torch.bool)
            if counts[name] == p.numel()
            else self.initial_mask(p, counts[name], name)
            for name, p in zip(self.names, self.params, strict=True)
        ]
        self.masks: dict[str, torch.Tensor] = dict(zip(self.names, initial, strict=True))
        mask_utils.register_masks(self.model, self.masks)
        self._mask_values = [m.to(p.dtype) for m, p in zip(initial, self.params, strict=True)]
        self._active = [int(m.sum()) for m in initial]
        self._ever_active = [m.clone() for m in initial]  # in-time over-parameterisation
        self.last_update_stats: dict[str, Any] | None = None
        mask_utils.foreach_mask_(self.params, self._mask_values)
        zero_state_(self.optimizer, zip(self.names, self.params, strict=True), initial)

    def _initialize_for_masks(self) -> None:
        """``init="sparse_fan_in"``: every active row to the variance of its sparse fan-in."""
        if self.init != "sparse_fan_in":
            return
        for name, p in zip(self.names, self.params, strict=True):
            scale_to_sparse_fan_in_(p, self.masks[name], name in self._transposed)

    def rows(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (the weight ``name``, its mask, gradient or scores) as ``[out, fan_in]``, one
        row per output neuron: the columns of a weight stored ``[in, out]`` (``Conv1D``)."""
        return rows_view(tensor, name in self._transposed)

    # ----------------------------------------------------------------- what a method supplies
    @classmethod
    def model_width(cls, build: Any, width: float, args: MethodArgs, **plan_keys: Any) -> float:
        """The width multiplier of the model this method trains, given ``build(width)`` of the
        model family and the shared allocation keys. Every method but Small-Dense keeps
        ``width``."""
        return width

    @classmethod
    def adjust_plan(cls, plan: AllocationPlan) -> AllocationPlan:
        """The plan this method trains at, from the distribution's (default: unchanged; SRigL
        rounds each layer to a constant fan-in)."""
        return plan

    @classmethod
    def mean_inference_flops(
        cls, profile: Any, plan: AllocationPlan, args: MethodArgs, total_steps: int
    ) -> float:
        """``f_S`` of the training-FLOP formula (SPEC §7): the forward FLOPs per sample averaged
        over the run. Default: at the (adjusted) plan's densities; Pruning averages over its
        schedule."""
        return profile.inference_flops(cls.adjust_plan(plan))

    def initial_counts(self) -> dict[str, int]:
        """Active weights of each layer before the first mask update: every weight (a method that
        :attr:`Traits.starts_dense`) or the plan's budget (default). A method that starts between
        the two (GraNet from a sparser initial density) overrides this."""
        if self.traits.starts_dense:
            return {name: p.numel() for name, p in zip(self.names, self.params, strict=True)}
        return dict(self.target_counts)

    def update_due(self, step: int) -> bool:
        """Whether the masks change at ``step`` (before the optimizer step if the method
        :attr:`Traits.updates_before_step`, else right after it). Static methods: never."""
        return False

    def new_masks(self, step: int, grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The masks after an update at ``step``; the base class applies them. Default: unchanged."""
        return [mask.clone() for mask in self.masks.values()]

    def observe_gradients(self, grads: list[torch.Tensor | None]) -> None:
        """Called with the dense gradients on every :meth:`step` (SNFS keeps an average)."""

    def initialize_grown(self, step: int, old: list[torch.Tensor], new: list[torch.Tensor]) -> None:
        """Give new connections (``new & ~old``) a value; default: they stay at zero."""

    def count_rule(self) -> str | None:
        """What a mask update must conserve: ``"layer"`` (every layer's active count),
        ``"total"`` (their sum: redistribution), ``"fan_in"`` (every active row of a layer holds
        ``B // a`` weights, ``B`` its budget and ``a`` its active rows: a constant fan-in, SRigL)
        or ``None`` (nothing: pruning, SNIP)."""
        return "layer" if self.traits.conserves_active_counts else None

    def validate_masks(self, new: list[torch.Tensor]) -> None:
        """A method's own checks of the masks it produced (raise ``RuntimeError``); the base class
        has already checked dtype, shape and the count rule."""

    def method_state(self) -> dict[str, Any]:
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`method_state` returned."""

    # --------------------------------------------------------------------- the training loop
    def update_batch_due(self) -> bool:
        """Whether the current batch goes to a mask update instead of an optimizer step (host
        arithmetic only, no tensor work)."""
        step = self.step_count
        return (
            self.traits.updates_before_step
            and self.update_due(step)
            and self.last_update_step != step
        )

    def eager_batch_due(self) -> bool:
        """Whether the current batch must run eagerly through :meth:`step`, not in a compiled
        step: a before-step mask update, or a batch whose dense gradients the method collects
        (RigL's ``grad_accumulation`` window). Host arithmetic only."""
        return self.update_batch_due()

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
        if self.update_batch_due():
            grads = [p.grad for p in self.params]
            if grads and all(g is None for g in grads):
                raise RuntimeError(
                    f"{type(self).__name__}.step() at step {self.step_count} is a mask update, "
                    "which needs this batch's gradients, but there are no gradients (no sparse "
                    "parameter has a .grad): call loss.backward() first, then sparsifier.step()."
                )
            self.observe_gradients(grads)
            step, changed = self.step_count, False
            if self._finite(grads):
                self._apply_masks(self.new_masks(step, grads), step)
                self.last_update_step, changed = step, True
            self.mask_gradients()
            self.last_batch = BatchReport(False, True, changed)
            return False
        self.process_gradients()
        self._stepped = True
        self.last_batch = self._optimizer_step_report()
        return True

    def process_gradients(self) -> None:
        """The tensor work of :meth:`step` on a batch that takes an optimizer step: let the method
        observe the dense gradients, then mask them. No host synchronisation and no Python state
        that changes between steps, so a compiled step can run it (``train.compile``)."""
        self.observe_gradients([p.grad for p in self.params])
        self.mask_gradients()

    def record_compiled_step(self) -> None:
        """The host half of a batch whose :meth:`process_gradients`, optimizer step and
        :meth:`mask_weights` ran inside a compiled function: the batch report, then
        :meth:`finish_step` (an after-step update when due, the step count). Only for batches
        that need not run eagerly (:meth:`eager_batch_due` is ``False``)."""
        if self.eager_batch_due():
            raise RuntimeError(
                f"the batch at step {self.step_count} is a mask update of "
                f"{type(self).__name__} or collects its gradients: run it eagerly through "
                "step(), not in a compiled step."
            )
        self.last_batch = self._optimizer_step_report()
        self.finish_step()

    def _optimizer_step_report(self) -> BatchReport:
        return BatchReport(True, self.traits.dense_backward == "always", False)

    def mask_gradients(self) -> None:
        """Zero the gradients of inactive weights (tensor work only: one foreach kernel)."""
        self._mask_gradients([p.grad for p in self.params])

    @torch.no_grad()
    def mask_weights(self) -> None:
        """Zero the inactive weights (tensor work only: one foreach kernel)."""
        mask_utils.foreach_mask_(self.params, self._mask_values)

    def after_optimizer_step(self) -> None:
        """Call after every optimizer step (the default hook does): re-mask the weights (weight
        decay and momentum would otherwise revive them), then :meth:`finish_step`."""
        self.mask_weights()
        self.finish_step()

    def finish_step(self) -> None:
        """The host-side end of an optimizer step: a mask update due after it, the step count."""
        step = self.step_count
        if not self.traits.updates_before_step and (self.pending_update or self.update_due(step)):
            grads = [p.grad for p in self.params]
            if self._finite(grads):
                self._apply_masks(self.new_masks(step, grads), step)
                self.last_update_step, self.pending_update = step, False
                self.last_batch = BatchReport(True, self.last_batch.dense_backward, True)
            else:
                self.pending_update = True
        self.step_count += 1

    def _after_optimizer_step_hook(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        if not self._stepped:
            raise RuntimeError(
                f"optimizer.step() ran without {type(self).__name__}.step() before it: call "
                "`if sparsifier.step(): optimizer.step()` after every backward, so gradients are "
                "masked and mask updates happen on schedule."
            )
        self._stepped = False
        self.after_optimizer_step()

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
            self.initialize_grown(step, old, new)
            # Topology statistics, read with one host synchronisation (updates may sync).
            counts = (
                torch.stack(
                    [
                        torch.stack([(n & ~o).sum(), (o & ~n).sum(), n.sum()])
                        for o, n in zip(old, new, strict=True)
                    ]
                ).tolist()
                if new
                else []
            )
            grown, dropped = sum(c[0] for c in counts), sum(c[1] for c in counts)
            before = sum(self._active)
            for i, (name, mask) in enumerate(zip(self.names, new, strict=True)):
                self.masks[name].copy_(mask)
                self._mask_values[i].copy_(mask)
                self._ever_active[i] |= mask
                self._active[i] = int(counts[i][2])
        self.last_update_stats = {
            "changed_fraction": max(grown, dropped) / before if before else 0.0,
            "grown": grown,
            "dropped": dropped,
            "itop_rate": self.itop_rate(),
            "layer_density": self.densities(),
        }
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
        rule = self.count_rule()
        if rule == "fan_in":
            for name, mask in zip(self.names, new, strict=True):
                rows = self.rows(name, mask).sum(dim=1)
                active = rows[rows > 0]
                fan_in = self.target_counts[name] // max(active.numel(), 1)
                if not bool((active == fan_in).all()):
                    raise RuntimeError(
                        f"{type(self).__name__} broke the constant fan-in of {name}: its active "
                        f"rows hold {sorted(set(active.tolist()))} weights, not all "
                        f"{fan_in} (budget {self.target_counts[name]} over {active.numel()} rows)."
                    )
        broken = self._broken_structure(new)
        if broken:
            raise RuntimeError(
                f"{type(self).__name__} produced masks that break structure "
                f"{str(self.structure)!r} in {', '.join(broken)} (docs/SPEC.md §19)."
            )
        if rule in (None, "fan_in"):
            self.validate_masks(new)
            return
        counts = [int(mask.sum()) for mask in new]
        if rule == "layer":
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
        self.validate_masks(new)

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

    def initial_mask(self, param: torch.Tensor, count: int, name: str) -> torch.Tensor:
        """The mask a method that does not start dense begins with: ``count`` seeded random
        positions in the plan's structure (override for a method's own, e.g. a constant fan-in)."""
        generator = seeded_generator(self.seed, -1, name, param.device)
        scores = torch.rand(param.shape, generator=generator, device=param.device)
        return self.select(name, scores, count, generator)

    # ------------------------------------------------------------------------ structure
    def layer_structure(self, name: str) -> LayerStructure:
        """The structure of layer ``name`` (its unit, N:M groups; SPEC §19)."""
        return self._structures[name]

    def select(
        self,
        name: str,
        scores: torch.Tensor,
        count: int,
        generator: torch.Generator,
        excluded: torch.Tensor | None = None,
        occupied: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``count`` highest ``scores`` of layer ``name`` as a mask of the plan's structure,
        ``excluded`` never chosen, ``occupied`` (the positions a grow adds to) counted in an N:M
        group's bound. Unstructured: exactly :func:`~regrow.sparsity.selection.topk_mask`. Every
        selection of a method that keeps structures goes through here."""
        return self._structures[name].select(scores, count, generator, excluded, occupied)

    def round_count(self, name: str, count: int) -> int:
        """``count`` rounded down to what layer ``name``'s structure holds exactly (whole units)."""
        return self._structures[name].round_count(count)

    def _broken_structure(self, masks: Sequence[torch.Tensor]) -> list[str]:
        """The layers whose mask does not satisfy the plan's structure."""
        return [
            name
            for name, mask in zip(self.names, masks, strict=True)
            if not self._structures[name].check(mask)
        ]

    # ------------------------------------------------------------------------ inspection
    def itop_rate(self) -> float:
        """The in-time over-parameterisation rate (Liu et al., ICML 2021): the fraction of the
        sparse layers' weights that have been active at some point of training so far."""
        if not self._ever_active:
            return 1.0
        ever = int(torch.stack([m.sum() for m in self._ever_active]).sum())
        return ever / sum(m.numel() for m in self._ever_active)

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
            + (
                f"structure={str(self.structure)!r}, "
                if self.structure.family != "unstructured"
                else ""
            )
            + f"step={self.step_count})"
        ]
        for j, row in enumerate(rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
            lines.append("  ".join(cells).rstrip())
            if j in (0, len(rows) - 2):
                lines.append("-" * (sum(widths) + 8))
        return "\n".join(lines)

    def remove(self) -> None:
        """Detach the optimizer hook (the masks stay registered on the model)."""
        if self._hook is not None:
            self._hook.remove()
