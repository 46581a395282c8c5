"""The Hugging Face ``Trainer`` with a regrow sparsifier: one callback (docs/INTEGRATIONS.md).

::

    from regrow.integrations.transformers import RegrowCallback, strip_masks

    trainer = Trainer(model, args, train_dataset=train, callbacks=[
        RegrowCallback("rigl", sparsity=0.9, distribution="erk", delta_t=100)])
    trainer.train()
    strip_masks(trainer.model).save_pretrained("plain")   # no ``<param>_mask`` buffers

What the callback does, and where:

- **Building.** When training begins (``on_train_begin``: the Trainer has created its optimizer,
  wrapped it with accelerate and loaded the checkpoint it resumes from), the callback builds the
  sparsifier on the Trainer's model and its innermost torch optimizer; ``total_steps`` is the
  Trainer's ``state.max_steps`` (``max_steps``, or epochs × optimizer steps per epoch) unless given.
- **Semantics.** It puts :func:`regrow.wrap_optimizer`'s :class:`~regrow.SparseOptimizer` in
  place of that torch optimizer inside the accelerate wrapper the Trainer steps
  (``AcceleratedOptimizer.optimizer``), so the Trainer's own ``optimizer.step()`` is the
  documented loop ``if sparsifier.step(): optimizer.step()``: gradients masked before the step,
  weights re-masked after it, no step at all on a batch spent on a mask update (RigL). The
  Trainer, its LR scheduler and its checkpoints keep the same accelerate wrapper, whose groups and
  state are still the torch optimizer's; the scheduler steps on every batch, as in the loop.
- **Accumulation and clipping.** The Trainer steps once per ``gradient_accumulation_steps``
  batches, after clipping to ``max_grad_norm``: the sparsifier, and so RigL's grow score, sees the
  accumulated, clipped gradient. The clipping norm is the dense gradient's (inactive weights'
  gradients are masked inside the step, after clipping), as in a loop that clips before
  ``sparsifier.step()``.
- **Checkpoints.** ``on_save`` writes the sparsifier's ``state_dict()`` to ``regrow_sparsifier.pt``
  in the checkpoint folder the Trainer has just written. On ``trainer.train(
  resume_from_checkpoint=...)`` the callback reads it back, from ``args.resume_from_checkpoint``
  when that names a folder, else from ``{output_dir}/checkpoint-{global_step}`` (where the Trainer
  saves and where ``resume_from_checkpoint=True`` looks), and keeps the weights and optimizer state
  the Trainer loaded. The masks are buffers of the model, so every saved model carries them; a
  fresh model has no such buffers yet when the Trainer loads the checkpoint into it, so the Trainer
  logs them as unexpected keys (the masks come from ``regrow_sparsifier.pt``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as error:  # pragma: no cover - only without the extra
    raise ImportError(
        f"regrow.integrations.transformers needs transformers and accelerate ({error}): "
        "pip install 'regrow[transformers]'"
    ) from error

from ..sparsity import SparseOptimizer, Sparsifier, get_method, wrap_optimizer
from ..sparsity.arguments import method_args_of
from ..sparsity.masks import strip_masks
from ..sparsity.optim_state import zero_state_

__all__ = ["STATE_FILE", "RegrowCallback", "strip_masks"]

#: The sparsifier's state in each checkpoint folder.
STATE_FILE = "regrow_sparsifier.pt"

#: The keywords every method takes besides its own arguments (``Sparsifier.__init__``'s).
SHARED_ARGS: tuple[str, ...] = tuple(
    name
    for name, p in inspect.signature(Sparsifier.__init__).parameters.items()
    if name not in ("self", "model", "optimizer", "args", "attach_hook")
    and p.kind is not inspect.Parameter.VAR_KEYWORD
)

logger = logging.getLogger(__name__)


class RegrowCallback(TrainerCallback):
    """Sparse training inside a Hugging Face ``Trainer`` (module docstring).

    Args:
        method: a method's name (``"rigl"``, ``"set"``, … as :func:`regrow.get_method` takes) or
            a :class:`~regrow.Sparsifier` subclass.
        **kwargs: the sparsifier's shared arguments (``sparsity``, ``distribution``,
            ``total_steps``, ``dense_layers``, ``seed``, …) and the method's own (``delta_t``,
            ``alpha``, … or ``args=``), checked here: an argument the method does not have is a
            ``ValueError`` now, not when training begins. ``total_steps`` defaults to the
            Trainer's ``state.max_steps``.

    After training begins, :attr:`sparsifier` is the sparsifier (its masks, densities, state).
    One callback per Trainer.
    """

    def __init__(self, method: str | type[Sparsifier], /, **kwargs: Any) -> None:
        if isinstance(method, type) and issubclass(method, Sparsifier):
            self.method = method
        else:
            self.method = get_method(method)
        if "attach_hook" in kwargs:
            raise ValueError(
                "attach_hook is not an argument of RegrowCallback: the sparsifier re-masks the "
                "weights in its optimizer hook after every Trainer step."
            )
        own = {k: v for k, v in kwargs.items() if k not in (*SHARED_ARGS, "args")}
        given = method_args_of(kwargs.get("args"), self.method.__name__)
        #: The method's own arguments, validated.
        self.method_args = self.method.Args.from_mapping({**given, **own}, self.method.name)
        #: The shared arguments, passed to the sparsifier as given.
        self.shared_args = {k: v for k, v in kwargs.items() if k in SHARED_ARGS}
        #: The sparsifier, built when training begins.
        self.sparsifier: Sparsifier | None = None

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.shared_args.items())
        return f"RegrowCallback({self.method.name!r}{', ' if given else ''}{given})"

    # -------------------------------------------------------------------- Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Build the sparsifier (or restore it on resume) and put it inside the Trainer's step."""
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        holder, inner = _innermost(optimizer)
        if isinstance(inner, SparseOptimizer):
            if inner.sparsifier is not self.sparsifier:
                raise RuntimeError(
                    "the Trainer's optimizer already runs another sparsifier: give a Trainer one "
                    "RegrowCallback."
                )
        elif self.sparsifier is not None:
            raise RuntimeError(
                f"this RegrowCallback already sparsifies another model and optimizer "
                f"({type(self.sparsifier).__name__}): give each Trainer its own callback."
            )
        saved = self._saved_state(args, state, model) if state.global_step > 0 else None
        if self.sparsifier is None:
            self.sparsifier = self._build(model, inner, state, saved)
            _install(holder, self.sparsifier)
        elif saved is not None:  # a second train() of this Trainer, resuming
            self.sparsifier.load_state_dict(saved)
            _enforce_masks(self.sparsifier)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the sparsifier's state into the checkpoint folder the Trainer has just written."""
        if self.sparsifier is None or not args.should_save:
            return
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if not os.path.isdir(folder):
            logger.warning(
                "regrow: no checkpoint folder %s to save the sparsifier's state in (a "
                "hyper-parameter search saves elsewhere): this checkpoint cannot be resumed "
                "with its masks.",
                folder,
            )
            return
        path = os.path.join(folder, STATE_FILE)
        saved = {"global_step": state.global_step, "sparsifier": self.sparsifier.state_dict()}
        torch.save(saved, path + ".tmp")
        os.replace(path + ".tmp", path)

    # ------------------------------------------------------------------------ helpers
    def _build(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: Any, saved: Any
    ) -> Sparsifier:
        """The sparsifier on ``model`` and ``optimizer``; on resume, with ``saved`` loaded and the
        weights and optimizer state the Trainer loaded kept (building it zeroes them outside its
        initial masks)."""
        shared = dict(self.shared_args)
        if shared.get("total_steps") is None:
            shared["total_steps"] = state.max_steps
        kept = _snapshot(model, optimizer, saved["masks"]) if saved is not None else []
        sparsifier = self.method(model, optimizer, args=self.method_args, **shared)
        if saved is not None:
            sparsifier.load_state_dict(saved)
            _restore(kept, optimizer)
            _enforce_masks(sparsifier)
        return sparsifier

    def _saved_state(self, args: Any, state: Any, model: nn.Module) -> dict[str, Any]:
        """The sparsifier's state saved at this global step (a resumed run)."""
        folders = []
        if isinstance(args.resume_from_checkpoint, str):
            folders.append(args.resume_from_checkpoint)
        folders.append(checkpoint_folder(args.output_dir, state.global_step))
        device = next(model.parameters()).device
        for folder in folders:
            path = os.path.join(folder, STATE_FILE)
            if os.path.isfile(path):
                saved = torch.load(path, map_location=device, weights_only=True)
                if saved.get("global_step") == state.global_step:
                    return saved["sparsifier"]
        raise FileNotFoundError(
            f"the Trainer resumes at global step {state.global_step}, but no {STATE_FILE} of "
            f"that step is in {' or '.join(folders)}: resume from a checkpoint saved with "
            "RegrowCallback, and name its folder in TrainingArguments(resume_from_checkpoint=...) "
            "when it is not in output_dir."
        )


def checkpoint_folder(output_dir: str, global_step: int) -> str:
    """The folder the Trainer writes the checkpoint of ``global_step`` to."""
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{global_step}")


def _innermost(optimizer: Any) -> tuple[Any, torch.optim.Optimizer]:
    """The innermost torch optimizer the Trainer's optimizer wraps (a :class:`SparseOptimizer`
    when the callback has installed one) and the wrapper that holds it."""
    holder, inner = None, optimizer
    while not isinstance(inner, SparseOptimizer):
        nested = getattr(inner, "__dict__", {}).get("optimizer")
        if not isinstance(nested, torch.optim.Optimizer):
            break
        holder, inner = inner, nested
    if holder is None:
        raise RuntimeError(
            f"the Trainer's optimizer is a {type(optimizer).__name__}, not accelerate's wrapper "
            "of a torch optimizer: RegrowCallback runs inside the optimizer step of a Trainer "
            "that prepares its optimizer with accelerate (DeepSpeed and FSDP are not supported)."
        )
    return holder, inner


def _install(holder: Any, sparsifier: Sparsifier) -> None:
    """Put the sparse optimizer where ``holder`` (accelerate's wrapper) keeps its optimizer."""
    holder.optimizer = wrap_optimizer(sparsifier.optimizer, sparsifier)
    if getattr(holder, "scaler", None) is not None and hasattr(
        holder, "_optimizer_original_step_method"
    ):
        # accelerate's GradScaler path swaps the inner optimizer's ``step`` for a patched one
        # around ``scaler.step``, from methods it bound at construction: bind them anew.
        from accelerate.optimizer import patch_optimizer_step

        holder._optimizer_original_step_method = holder.optimizer.step
        holder._optimizer_patched_step_method = patch_optimizer_step(holder, holder.optimizer.step)


@torch.no_grad()
def _snapshot(
    model: nn.Module, optimizer: torch.optim.Optimizer, names: Iterable[str]
) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """Copies (on the CPU) of the named parameters and their optimizer-state tensors."""
    params = dict(model.named_parameters())
    kept = []
    for name in names:
        if name in params:
            param = params[name]
            state = {
                key: value.to("cpu", copy=True)
                for key, value in optimizer.state.get(param, {}).items()
                if torch.is_tensor(value)
            }
            kept.append((param, param.detach().to("cpu", copy=True), state))
    return kept


@torch.no_grad()
def _restore(
    kept: list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
) -> None:
    for param, value, state in kept:
        param.copy_(value)
        for key, saved in state.items():
            optimizer.state[param][key].copy_(saved)


def _enforce_masks(sparsifier: Sparsifier) -> None:
    """Inactive weights and their optimizer state zero under the sparsifier's current masks."""
    sparsifier.mask_weights()
    masks: Mapping[str, torch.Tensor] = sparsifier.masks
    zero_state_(
        sparsifier.optimizer,
        zip(sparsifier.names, sparsifier.params, strict=True),
        [masks[name] for name in sparsifier.names],
    )
