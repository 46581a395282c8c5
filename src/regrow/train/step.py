"""The training step, eager (:class:`TrainStep`) or with the non-update step as one compiled
function (:class:`CompiledStep`), the device a run trains on (:func:`select_device`) and the
fastest correct settings per device (:class:`Settings`).

**Settings.** ``train.bf16``, ``train.channels_last`` and ``train.cudnn_benchmark`` default to
``null``, which means *what is fastest on this device*: on CUDA bf16 autocast, channels-last
tensors and cuDNN's autotuner; on the CPU fp32 (bf16 autocast is far slower than fp32 on most
CPUs) and the default layout. ``train.sgd_implementation=auto`` takes PyTorch's fused SGD kernel on
CUDA and its foreach kernels on the CPU; ``train.compile_mode=auto`` takes ``reduce-overhead``
(CUDA graphs) on CUDA and the default mode on the CPU. :class:`Settings` resolves them once; the
run's ``provenance.jsonl`` records the result.

**The compiled step** (``train.compile=true``, :class:`CompiledStep`): forward, loss, backward,
:meth:`~regrow.sparsity.Sparsifier.process_gradients` (the method's view of the dense gradients,
then gradient masking), the SGD update and :meth:`~regrow.sparsity.Sparsifier.mask_weights`, traced
by ``torch.compile`` into one graph (``fullgraph=True``). Two details make that one graph:

- ``Tensor.backward()`` is traced with dynamo's ``trace_autograd_ops`` (set only around the call);
- the SGD update calls PyTorch's own SGD arithmetic (``torch.optim.sgd.sgd``, the function
  ``SGD.step`` itself calls) on the optimizer's groups and momentum buffers, because
  ``Optimizer.step`` deliberately ends the graph before and after itself.

What changes between steps is kept out of the graph, so nothing is recompiled: the learning rate is
a 0-dim tensor that the LR schedule fills in place, and masks, weights and optimizer state are
changed in place by the eager mask updates. What is eager: batches spent on a before-step mask
update (RigL, SNIP, SRigL) and the host half of every step
(:meth:`~regrow.sparsity.Sparsifier.record_compiled_step`: after-step updates of SET, SNFS and
Pruning, the step count). The run's first optimizer step is eager as well: it creates the momentum
buffers the graph then updates in place.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
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
    sgd_implementation: str  #: ``fused``, ``foreach`` or ``for_loop``
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

    def sgd_keywords(self) -> dict[str, bool]:
        """The ``torch.optim.SGD`` keywords that pick the implementation."""
        return {
            "fused": {"fused": True, "foreach": False},
            "foreach": {"foreach": True},
            "for_loop": {"foreach": False},
        }[self.sgd_implementation]

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


class CompileError(ConfigError):
    """``train.compile=true`` cannot compile this run's step into one graph."""


class TrainStep:
    """One batch, eagerly: forward, loss, backward, ``sparsifier.step()`` (which masks the
    gradients, or spends the batch on a mask update) and, unless the batch went to an update, the
    optimizer step (its post-hook re-masks the weights and counts the step).

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
    ) -> None:
        self.network, self.criterion = network, criterion
        self.sparsifier, self.optimizer, self.settings = sparsifier, optimizer, settings

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss, in the run's layout and precision."""
        if self.settings.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.settings.bf16):
            logits = self.network(x)
        return logits, self.criterion(logits.float(), y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        self.optimizer.zero_grad(set_to_none=True)
        logits, loss = self.forward(x, y)
        loss.backward()  # under DDP: gradients averaged over ranks here
        stepped = self.sparsifier.step()  # masks the gradients, or updates the masks instead
        if stepped:
            self.optimizer.step()  # the sparsifier's post-hook re-masks the weights
        return loss.detach() * y.shape[0], (logits.argmax(1) == y).sum(), stepped


class CompiledStep(TrainStep):
    """:class:`TrainStep` whose non-update batches run as one ``torch.compile``'d graph (module
    docstring); a batch the graph cannot take (:meth:`ready` is false: the optimizer has no state
    yet, or the batch is a before-step mask update) runs eagerly."""

    def __init__(
        self,
        network: nn.Module,
        criterion: nn.Module,
        sparsifier: Any,
        optimizer: torch.optim.SGD,
        settings: Settings,
        method: str,
    ) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise CompileError(f"train.compile=true supports SGD, not {type(optimizer).__name__}.")
        super().__init__(network, criterion, sparsifier, optimizer, settings)
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
        return self.have_state and not self.sparsifier.eager_batch_due()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What is compiled: forward, loss, backward, gradient work, SGD update, re-masking."""
        logits, loss = self.forward(x, y)
        loss.backward()
        self.sparsifier.process_gradients()
        with torch.no_grad():
            sgd_update_(self.optimizer)
        self.sparsifier.mask_weights()
        return loss.detach() * y.shape[0], (logits.argmax(1) == y).sum()

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
