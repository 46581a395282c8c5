"""Sparse training in PyTorch Lightning: :class:`RegrowCallback`, for a module with one optimizer.

::

    import lightning.pytorch as pl
    from regrow.integrations.lightning import RegrowCallback

    trainer = pl.Trainer(max_epochs=10, callbacks=[RegrowCallback("rigl", sparsity=0.9, delta_t=100)])
    trainer.fit(module, train_loader)
    trainer.fit(module, train_loader, ckpt_path="last.ckpt")   # resume: bit-identical

The callback is the documented loop (``loss.backward(); if sparsifier.step(): optimizer.step()``)
inside Lightning's own step, so a run trains as that loop would with the same seed, data order and
optimizer:

- **When it is built.** In ``on_fit_start``: after ``configure_optimizers`` (the trainer's one
  optimizer exists), after the model was moved to its device (and wrapped by DDP), before the
  first batch. ``total_steps``, when not given, is ``trainer.estimated_stepping_batches``.
- **Where the step goes.** The trainer's optimizer is replaced (``trainer.strategy.optimizers``)
  by a :class:`~regrow.sparsity.wrapper.SparseOptimizer` around it, which Lightning's
  ``LightningOptimizer`` steps. Groups and state are the wrapped optimizer's, so LR schedulers
  from ``configure_optimizers`` (whose ``.optimizer`` is the wrapped one) and the optimizer state
  in the checkpoint are unchanged. On a batch spent on a mask update (RigL, SNIP, SRigL) the
  wrapped optimizer does not step; Lightning still counts the batch in ``global_step`` and steps
  step-interval schedulers, as the documented loop's ``scheduler.step()`` per batch does.
- **Order within a step.** Lightning runs the closure (forward, backward), then the callbacks'
  ``on_before_optimizer_step``, the module's, then gradient clipping, then the optimizer step.
  The sparsifier steps in this callback's ``on_before_optimizer_step``: the method sees the dense
  gradient, accumulated over ``accumulate_grad_batches`` and not yet clipped, then the gradients
  are masked, so ``gradient_clip_val`` clips the masked gradients' norm (regrow's own harness
  does the same) and the wrapped optimizer steps or not.
- **Checkpoints.** The masks are buffers of the model (``<param>_mask``) and so in the
  checkpoint's ``state_dict``; the sparsifier's state (step count, schedule position, masks,
  method state) and the run's ``total_steps`` are this callback's state. ``trainer.fit(...,
  ckpt_path=...)`` restores the model before the optimizer exists, so before the sparsifier: the
  callback takes the mask entries out of that load (so strict loading accepts the checkpoint),
  builds the sparsifier in ``on_fit_start``, loads its state and puts the checkpoint's weights
  back.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from ..sparsity import masks as mask_utils
from ..sparsity.arguments import method_args_of
from ..sparsity.base import Sparsifier, get_method
from ..sparsity.plan import candidate_shapes
from ..sparsity.wrapper import SparseOptimizer

__all__ = ["RegrowCallback"]

#: The keyword arguments every method takes (besides ``total_steps`` and ``args``).
SHARED_ARGUMENTS = (
    "power",
    "dense_layers",
    "custom_densities",
    "sparse_layers",
    "seed",
    "plan",
    "elementwise_optimizer",
)


class _LightningSparseOptimizer(SparseOptimizer):
    """A :class:`SparseOptimizer` whose sparsifier step runs in the callback's
    ``on_before_optimizer_step`` (inside Lightning's closure, before clipping), so ``step`` only
    takes the decision made there. Stepped without that hook, it runs the sparsifier itself."""

    def __init__(self, optimizer: torch.optim.Optimizer, sparsifier: Sparsifier) -> None:
        super().__init__(optimizer, sparsifier)
        self.__dict__["decision"] = None

    def sparsify(self) -> None:
        """The sparsifier's step for this batch (mask the gradients, or a mask update); what it
        decides is kept for :meth:`step`."""
        self.__dict__["decision"] = self._sparsifier_step()

    def _sparsifier_step(self) -> bool:
        # A batch without any gradient (training_step returned None: Lightning skips it) is
        # neither an update nor a step.
        if all(p.grad is None for p in self.sparsifier.params):
            return False
        return self.sparsifier.step()

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decision = self.__dict__["decision"]
        self.__dict__["decision"] = None
        if decision is None:
            decision = self._sparsifier_step()
        if not decision:
            return loss
        result = self.optimizer.step()
        return loss if closure is not None else result


def _module_default_dense_layers(module: torch.nn.Module, sparse_layers: Any) -> list[str] | None:
    """A submodule's own ``default_dense_layers`` (CharGPT's output head) under its name in
    ``module``, for a LightningModule that wraps such a model; ``None`` when ``module`` names its
    own or no submodule does (the plan's default then applies)."""
    if getattr(module, "default_dense_layers", None) is not None:
        return None
    owners: list[str] = []
    for name, sub in module.named_modules():
        if not name or any(name.startswith(f"{o}.") for o in owners):
            continue
        if getattr(sub, "default_dense_layers", None) is not None:
            owners.append(name)
    if not owners:
        return None
    candidates = list(candidate_shapes(module, sparse_layers))
    entries = []
    for owner in owners:
        for entry in module.get_submodule(owner).default_dense_layers:
            pattern = f"{owner}.{entry}"
            # As the plan does for a model's own choice: an entry naming no candidate (a head
            # tied to the embedding) is dropped.
            if any(
                c.startswith(f"{pattern}.") or c == pattern or fnmatch.fnmatchcase(c, pattern)
                for c in candidates
            ):
                entries.append(pattern)
    return entries or None


class RegrowCallback(Callback):
    """Train a ``LightningModule`` sparse with a regrow method (module docstring).

    Args:
        method: a registered method name (``"rigl"``, ``"set"``, …, see ``regrow.METHODS``) or
            ``"package.module:ClassName"``.
        sparsity, distribution: as for every method.
        total_steps: optimizer steps of the run; default ``trainer.estimated_stepping_batches``
            (which counts ``accumulate_grad_batches``, ``max_steps`` and ``limit_train_batches``).
            A resumed run keeps the value it started with unless given here.
        **kwargs: the other shared arguments (``seed``, ``dense_layers``, ``power``,
            ``custom_densities``, ``sparse_layers``, ``plan``, ``elementwise_optimizer``) and the
            method's own (``delta_t``, ``alpha``, …) or ``args=``. With ``dense_layers`` not
            given, a model wrapped in the module that names its own ``default_dense_layers``
            (``regrow.models.CharGPT``) keeps those dense, as it would unwrapped.

    After ``on_fit_start``, :attr:`sparsifier` is the method's sparsifier over the module and
    :attr:`optimizer` the wrapper the trainer steps.
    """

    def __init__(
        self,
        method: str,
        sparsity: float = 0.9,
        distribution: str = "erk",
        total_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.method: type[Sparsifier] = get_method(method)
        if "attach_hook" in kwargs:
            raise ValueError(
                "attach_hook: RegrowCallback needs the sparsifier's optimizer hook (it re-masks "
                "the weights after every optimizer step); leave it out."
            )
        shared = {k: kwargs.pop(k) for k in SHARED_ARGUMENTS if k in kwargs}
        own = {**method_args_of(kwargs.pop("args", None), self.method.__name__), **kwargs}
        self.method.Args.from_mapping(own, self.method.name)  # ValueError now, not at fit
        self.shared: dict[str, Any] = {"sparsity": sparsity, "distribution": distribution}
        self.shared.update(shared)
        self.method_args = own
        self.total_steps = total_steps
        self.sparsifier: Sparsifier | None = None
        self.optimizer: _LightningSparseOptimizer | None = None
        self._run_total_steps: int | None = None
        self._pending: dict[str, Any] | None = None  # callback state loaded before the build
        self._checkpoint_masks: dict[str, torch.Tensor] = {}
        self._load_hook: Any = None

    # ------------------------------------------------------------------------- building
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if sum(isinstance(c, RegrowCallback) for c in trainer.callbacks) > 1:
            raise ValueError("the trainer has several RegrowCallbacks: a model takes one method.")
        # trainer.fit(ckpt_path=...) loads the model's state before on_fit_start builds the
        # sparsifier, so before the model has mask buffers: take the masks out of that load.
        self._checkpoint_masks = {}
        self._remove_load_hook()
        self._load_hook = pl_module.register_load_state_dict_pre_hook(self._take_masks)

    def _take_masks(
        self, module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
    ) -> None:
        params = dict(module.named_parameters())
        for key in list(state_dict):
            name = key[len(prefix) :]
            if not (key.startswith(prefix) and name.endswith(mask_utils.MASK_SUFFIX)):
                continue
            param = name[: -len(mask_utils.MASK_SUFFIX)]
            if param in params and not mask_utils.has_mask(module, param):
                self._checkpoint_masks[param] = state_dict.pop(key)

    def _remove_load_hook(self) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_load_hook()
        if self.sparsifier is not None:
            raise RuntimeError(
                "this RegrowCallback has already built a sparsifier: use a new RegrowCallback for "
                "each trainer.fit (continue a run with trainer.fit(..., ckpt_path=...))."
            )
        optimizers = trainer.strategy.optimizers
        if len(optimizers) != 1:
            raise ValueError(
                f"configure_optimizers returned {len(optimizers)} optimizers: RegrowCallback "
                "trains a module with one optimizer."
            )
        if self._checkpoint_masks and self._pending is None:
            raise ValueError(
                "the checkpoint's model has masks but no RegrowCallback state (saved without the "
                "callback, or weights only): resume from a full checkpoint of a run with it."
            )
        kept = {
            name: param.detach().clone()
            for name, param in pl_module.named_parameters()
            if name in self._checkpoint_masks
        }
        self._run_total_steps = self._resolve_total_steps(trainer)
        self.sparsifier = self._build(pl_module, optimizers[0])
        if self._pending is not None:
            self.sparsifier.load_state_dict(self._pending["sparsifier"])
            self._pending = None
            self._restore_weights(kept)
        self.optimizer = _LightningSparseOptimizer(optimizers[0], self.sparsifier)
        trainer.strategy.optimizers = [self.optimizer]

    def _build(self, pl_module: pl.LightningModule, optimizer: Any) -> Sparsifier:
        if isinstance(optimizer, SparseOptimizer):
            raise ValueError(
                "configure_optimizers returned a SparseOptimizer: return the plain optimizer, "
                "RegrowCallback wraps it."
            )
        shared = dict(self.shared)
        if "dense_layers" not in shared and "plan" not in shared:
            shared["dense_layers"] = _module_default_dense_layers(
                pl_module, shared.get("sparse_layers")
            )
        return self.method(
            pl_module,
            optimizer,
            total_steps=self._run_total_steps,
            **shared,
            args=self.method_args,
        )

    def _resolve_total_steps(self, trainer: pl.Trainer) -> int | None:
        """The explicit ``total_steps``, else a resumed run's own, else the trainer's estimate
        (only computed for a method that needs it)."""
        if self.total_steps is not None:
            return self.total_steps
        saved = None if self._pending is None else self._pending.get("total_steps")
        if saved is not None:
            return int(saved)
        if not self.method.traits.needs_total_steps:
            return None
        estimate = trainer.estimated_stepping_batches
        if estimate == float("inf") or int(estimate) < 1:
            raise ValueError(
                f"{self.method.__name__} needs total_steps, and the trainer cannot estimate its "
                f"optimizer steps ({estimate}): pass RegrowCallback(..., total_steps=N)."
            )
        return int(estimate)

    @torch.no_grad()
    def _restore_weights(self, kept: Mapping[str, torch.Tensor]) -> None:
        """The checkpoint's weights, which building the sparsifier zeroed outside its initial
        masks (they are already zero outside the loaded masks)."""
        assert self.sparsifier is not None
        missing = [name for name in self.sparsifier.names if name not in kept]
        if missing:
            raise ValueError(
                f"the checkpoint's model has no masks for {missing}: it was saved by a run that "
                "made other layers sparse."
            )
        for name, param in zip(self.sparsifier.names, self.sparsifier.params, strict=True):
            param.copy_(kept[name])
        self.sparsifier.mask_weights()

    # ------------------------------------------------------------------------- the step
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.optimizer is not None and optimizer is self.optimizer:
            self.optimizer.sparsify()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_load_hook()

    # ------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.sparsifier is None:
            return dict(self._pending or {})
        return {
            "method": self.sparsifier.name,
            "total_steps": self._run_total_steps,
            "sparsifier": self.sparsifier.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.sparsifier is None:  # trainer.fit(ckpt_path=...): loaded in on_fit_start
            self._pending = dict(state_dict)
            return
        self.sparsifier.load_state_dict(state_dict["sparsifier"])
        self._run_total_steps = state_dict.get("total_steps", self._run_total_steps)
