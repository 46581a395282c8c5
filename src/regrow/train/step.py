"""The training step, eager (:class:`TrainStep`) or with the non-update step as one compiled
function (:class:`CompiledStep`), the device a run trains on (:func:`select_device`) and the
fastest correct settings per device (:class:`Settings`).

**Settings.** ``train.bf16``, ``train.channels_last`` and ``train.cudnn_benchmark`` default to
``null``, which means *what is fastest on this device*: on CUDA bf16 autocast, channels-last
tensors and cuDNN's autotuner; on the CPU fp32 (bf16 autocast is far slower than fp32 on most
CPUs) and the default layout. ``train.sgd_implementation=auto`` takes PyTorch's fused SGD (or
AdamW) kernel on CUDA and its foreach kernels on the CPU; ``train.compile_mode=auto`` takes
``reduce-overhead`` (CUDA graphs) on CUDA and the default mode on the CPU. :class:`Settings`
resolves them once; the run's ``provenance.jsonl`` records the result.

**The compiled step** (``train.compile=true``, :class:`CompiledStep`): forward, loss, backward,
:meth:`~regrow.sparsity.Sparsifier.process_gradients` (the method's view of the dense gradients,
then gradient masking), gradient clipping (``train.grad_clip``), the optimizer update and
:meth:`~regrow.sparsity.Sparsifier.mask_weights`, traced by ``torch.compile`` into one graph
(``fullgraph=True``), for SGD and for AdamW alike. Three details make that one graph:

- ``Tensor.backward()`` is traced with dynamo's ``trace_autograd_ops`` (set only around the call);
- the update calls PyTorch's own arithmetic on the optimizer's groups and state, because
  ``Optimizer.step`` deliberately ends the graph before and after itself: for SGD
  ``torch.optim.sgd.sgd`` on the momentum buffers (:func:`sgd_update_`), for AdamW
  ``torch.optim.adam.adam`` (the function ``AdamW.step`` calls, with decoupled weight decay) on
  ``exp_avg``, ``exp_avg_sq`` and the ``step`` tensors (:func:`adam_update_`), in its foreach form
  with ``capturable=True``: the bias corrections are then tensor arithmetic on the ``step``
  tensors, which the graph increments in place, instead of Python floats read from them (a value
  the graph would be specialised on, so recompiled for at every step);
- clipping is ``torch.nn.utils.clip_grad_norm_`` (foreach norm and scale: no host read).

What changes between steps is kept out of the graph, so nothing is recompiled: the learning rate is
a 0-dim tensor that the LR schedule fills in place, and masks, weights and optimizer state are
changed in place by the eager mask updates. What is eager: batches spent on a before-step mask
update (RigL, SNIP, SRigL), the batches whose dense gradients a coming update averages
(``grad_accumulation`` > 1: :meth:`~regrow.sparsity.Sparsifier.eager_batch_due`) and the host half
of every step
(:meth:`~regrow.sparsity.Sparsifier.record_compiled_step`: after-step updates of SET, SNFS and
Pruning, the step count). The run's first optimizer step is eager as well: it creates the
optimizer state (momentum buffers; AdamW's moments and step counts) the graph then updates in
place. AdamW's eager step runs with the learning rates as floats (its foreach kernels refuse a
tensor one unless ``capturable``, which the CPU does not offer eagerly), and its ``step`` tensors
are then moved to the parameters' device, where the graph's arithmetic wants them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.optim.adam as torch_adam
import torch.optim.sgd as torch_sgd
from torch import nn

from .config import ConfigError, TrainConfig

#: What ``train.device`` may be: auto, cpu, cuda, cuda:N.
DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")


def select_device(name: str) -> torch.device:
    """The torch device of ``train.device``; :class:`ConfigError` naming the allowed values."""
    if not DEVICE_NAMES.fullmatch(name):
        raise ConfigError(
            f"train.device={name!r} is not allowed: allowed values are auto, cpu, cuda, cuda:N "
            "(N the index of a CUDA device)."
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}, but CUDA is not available: use auto or cpu.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={name!r}, but there are {torch.cuda.device_count()} CUDA devices: "
            f"allowed values are auto, cpu, cuda, cuda:0 … cuda:{torch.cuda.device_count() - 1}."
        )
    return device


@dataclass(frozen=True)
class Settings:
    """The performance settings a run uses, after ``auto``/``null`` are resolved for its device."""

    bf16: bool
    channels_last: bool
    compile: bool
    compile_mode: str  #: torch.compile's mode (``default`` when not compiling)
    sgd_implementation: str  #: SGD's or AdamW's: ``fused``, ``foreach`` or ``for_loop``
    cudnn_benchmark: bool

    @classmethod
    def resolve(cls, train: TrainConfig, device: torch.device) -> Settings:
        """``train``'s settings with every ``auto``/``null`` replaced by the device's fastest."""
        cuda = device.type == "cuda"

        def chosen(value: bool | None) -> bool:
            return cuda if value is None else bool(value)

        mode = train.compile_mode
        if mode == "auto":
            mode = "reduce-overhead" if cuda else "default"
        implementation = train.sgd_implementation
        if implementation == "auto":
            implementation = "fused" if cuda else "foreach"
        return cls(
            bf16=chosen(train.bf16),
            channels_last=chosen(train.channels_last),
            compile=train.compile,
            compile_mode=mode,
            sgd_implementation=implementation,
            cudnn_benchmark=cuda and chosen(train.cudnn_benchmark),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def optimizer_keywords(self) -> dict[str, bool]:
        """The keywords of ``torch.optim.SGD`` and ``torch.optim.AdamW`` (the same for both) that
        pick the implementation ``train.sgd_implementation`` names."""
        return {
            "fused": {"fused": True, "foreach": False},
            "foreach": {"foreach": True},
            "for_loop": {"foreach": False},
        }[self.sgd_implementation]

    sgd_keywords = optimizer_keywords  #: the name from before AdamW

    def apply(self) -> None:
        """Process-wide switches (cuDNN's autotuner)."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True


def tensor_learning_rates_(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make every group's learning rate a 0-dim tensor on ``device``, so the LR schedule changes it
    in place (``fill_``) instead of replacing a Python float the compiled graph would be
    specialised on."""
    for group in optimizer.param_groups:
        value = group["lr"]
        if not (torch.is_tensor(value) and value.device == device):
            group["lr"] = torch.tensor(float(value), device=device)


def learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a float (a host read when it is a device tensor)."""
    return float(optimizer.param_groups[0]["lr"])


def sgd_update_(optimizer: torch.optim.SGD) -> None:
    """One SGD step over every group, by PyTorch's own SGD arithmetic (``torch.optim.sgd.sgd``),
    in place on the parameters and the momentum buffers the optimizer holds. For a compiled graph:
    ``SGD.step`` would end the graph."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        torch_sgd.sgd(
            params,
            [p.grad for p in params],
            [optimizer.state[p].get("momentum_buffer") for p in params],
            foreach=True,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions of a batch, per sample: for text the fraction of each window's
    positions predicted right, so sums over samples stay comparable with a sample count."""
    hits = (logits.argmax(-1) == y).sum()
    return hits if y.dim() == 1 else hits / y[0].numel()


def adam_update_(optimizer: torch.optim.Adam) -> None:
    """One Adam/AdamW step over every group, by PyTorch's own arithmetic
    (``torch.optim.adam.adam``, with the group's decoupled weight decay: AdamW's), in place on the
    parameters, ``exp_avg``, ``exp_avg_sq`` and the ``step`` tensors. For a compiled graph: the
    foreach form with ``capturable=True`` keeps the bias corrections tensor arithmetic on the
    ``step`` tensors and takes a tensor learning rate (module docstring)."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        states = [optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        torch_adam.adam(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
            [s["step"] for s in states],
            foreach=True,
            capturable=True,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )


def optimizer_update_(optimizer: torch.optim.Optimizer) -> None:
    """:func:`sgd_update_` or :func:`adam_update_`, by the optimizer's kind."""
    if isinstance(optimizer, torch.optim.Adam):
        adam_update_(optimizer)
    else:
        sgd_update_(optimizer)


def clip_gradients_(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Scale the gradients of the optimizer's parameters so their global 2-norm is at most
    ``max_norm`` (``torch.nn.utils.clip_grad_norm_``; ``None``: leave them)."""
    if max_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)


@contextlib.contextmanager
def float_learning_rates(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Each group's learning rate as a float for the block, then the same tensor again (an eager
    AdamW step: its foreach kernels refuse a tensor learning rate)."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = float(group["lr"])
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr


def steps_on_parameter_devices_(optimizer: torch.optim.Optimizer) -> None:
    """Move Adam's ``step`` tensors to their parameters' devices (eager AdamW keeps them on the
    CPU unless fused), where the compiled graph's bias corrections run."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")) and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device)


class CompileError(ConfigError):
    """``train.compile=true`` cannot compile this run's step into one graph."""


class TrainStep:
    """One batch, eagerly: forward, loss, backward, ``sparsifier.step()`` (which masks the
    gradients, or spends the batch on a mask update) and, unless the batch went to an update, the
    optimizer step (its post-hook re-masks the weights and counts the step), after clipping the
    masked gradients' global norm to ``grad_clip`` (``train.grad_clip``; ``None``: no clipping). A
    batch spent on a mask update takes no optimizer step and so no clipping.

    The call returns the batch's loss × samples and correct predictions (device tensors: no host
    synchronisation) and whether an optimizer step was taken. The LR schedule and the FLOP
    counter are the caller's.
    """

    def __init__(
        self,
        network: nn.Module,
        criterion: nn.Module,
        sparsifier: Any,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
        grad_clip: float | None = None,
    ) -> None:
        self.network, self.criterion = network, criterion
        self.sparsifier, self.optimizer, self.settings = sparsifier, optimizer, settings
        self.grad_clip = grad_clip

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss, in the run's layout and precision."""
        if self.settings.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.settings.bf16):
            logits = self.network(x)
        # Text predicts every position: [batch, time, classes] against [batch, time] targets.
        return logits, self.criterion(logits.float().flatten(0, -2), y.flatten())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        self.optimizer.zero_grad(set_to_none=True)
        logits, loss = self.forward(x, y)
        loss.backward()  # under DDP: gradients averaged over ranks here
        stepped = self.sparsifier.step()  # masks the gradients, or updates the masks instead
        if stepped:
            self.update()
        return loss.detach() * y.shape[0], correct(logits, y), stepped

    def update(self) -> None:
        """Clip the (masked) gradients, then the optimizer step (the sparsifier's post-hook
        re-masks the weights)."""
        clip_gradients_(self.optimizer, self.grad_clip)
        self.optimizer.step()


class CompiledStep(TrainStep):
    """:class:`TrainStep` whose non-update batches run as one ``torch.compile``'d graph (module
    docstring); a batch the graph cannot take (:meth:`ready` is false: the optimizer has no state
    yet, or the batch is a before-step mask update or feeds one its dense gradient) runs
    eagerly."""

    def __init__(
        self,
        network: nn.Module,
        criterion: nn.Module,
        sparsifier: Any,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
        method: str,
        grad_clip: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.SGD | torch.optim.Adam):
            raise CompileError(
                "train.compile=true supports SGD and AdamW (or Adam), not "
                f"{type(optimizer).__name__}."
            )
        super().__init__(network, criterion, sparsifier, optimizer, settings, grad_clip)
        self.adam = isinstance(optimizer, torch.optim.Adam)
        self.method = method
        self.have_state = False
        # Dynamo caches per code object: the step of an earlier run in this process (another
        # model, optimizer and sparsifier) would count against its recompilation limit.
        torch.compiler.reset()
        self.compiled = torch.compile(self.step, mode=settings.compile_mode, fullgraph=True)

    def ready(self) -> bool:
        if not self.have_state:  # until the first optimizer step (then for good)
            groups = self.optimizer.param_groups
            self.have_state = all(p in self.optimizer.state for g in groups for p in g["params"])
            if self.have_state and self.adam:
                steps_on_parameter_devices_(self.optimizer)
        return self.have_state and not self.sparsifier.eager_batch_due()

    def update(self) -> None:
        """The eager optimizer step (the run's first): AdamW's with float learning rates."""
        with float_learning_rates(self.optimizer) if self.adam else contextlib.nullcontext():
            super().update()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What is compiled: forward, loss, backward, gradient work, clipping, the SGD or AdamW
        update, re-masking."""
        logits, loss = self.forward(x, y)
        loss.backward()
        self.sparsifier.process_gradients()
        with torch.no_grad():
            clip_gradients_(self.optimizer, self.grad_clip)
            optimizer_update_(self.optimizer)
        self.sparsifier.mask_weights()
        return loss.detach() * y.shape[0], correct(logits, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not self.ready():
            return super().__call__(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                result = self.compiled(x, y)
        except torch._dynamo.exc.Unsupported as error:
            reason = str(error).strip().splitlines()[0]
            raise CompileError(
                f"train.compile=true: the step of sparsity.method={self.method} does not compile "
                f"into one graph ({reason}); train with train.compile=false."
            ) from error
        self.sparsifier.record_compiled_step()
        return (*result, True)


def build_step(
    network: nn.Module,
    criterion: nn.Module,
    sparsifier: Any,
    optimizer: torch.optim.Optimizer,
    settings: Settings,
    method: str,
    grad_clip: float | None,
    device: torch.device,
) -> TrainStep:
    """The run's step: :class:`CompiledStep` (learning rates made device tensors first) when
    ``settings.compile``, else :class:`TrainStep`."""
    if settings.compile:
        tensor_learning_rates_(optimizer, device)
        return CompiledStep(network, criterion, sparsifier, optimizer, settings, method, grad_clip)
    return TrainStep(network, criterion, sparsifier, optimizer, settings, grad_clip)
