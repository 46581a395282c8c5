"""One flat training loop, using the library exactly as a user would (ARCHITECTURE: the harness).

``train(config)`` builds data, model, optimizer, LR schedule and sparsifier from a
:class:`~regrow.train.config.RunConfig`, trains for ``epochs × multiplier`` epochs worth of
optimizer steps, and writes the run directory: ``config.yaml``, ``provenance.json``,
``metrics.jsonl`` (a row per epoch), ``checkpoint.pt`` (atomic; every ``checkpoint_every`` epochs,
at the end, at ``stop_at_step`` and on SIGINT/SIGTERM) and ``summary.json``. ``train(config,
resume=True)`` continues from the checkpoint bit-identically on the CPU: the data order is a
function of (seed, epoch), and model, optimizer, LR schedule, sparsifier, FLOP counter, RNG states
and the position inside the epoch are restored.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data import load_dataset
from ..flops import TrainingFlopsCounter, profile_model
from ..models import get_model_spec
from ..sparsity import get_method
from .checkpoint import (
    CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    write_json,
    write_text,
)
from .config import RunConfig, to_yaml
from .logging import MetricsLog, provenance

LOG_EVERY = 50  #: optimizer steps between loss checks and progress-bar updates (one host sync)


class NonFiniteLossError(RuntimeError):
    """The training loss became inf/NaN; the last good checkpoint was kept."""


class StopRequested(Exception):
    """SIGINT/SIGTERM or ``stop_at_step``: checkpoint at the next batch boundary and return."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}, but CUDA is not available: use auto or cpu.")
    return device


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weights only, not biases or norms (SPEC §8)."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    t = config.train
    groups = [
        {"params": weights, "weight_decay": t.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)


def lr_factor(step: int, total: int, warmup: int, milestones: list[float], gamma: float) -> float:
    """Linear warm-up over ``warmup`` steps, then ×gamma at each milestone (fractions of ``total``)."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * gamma ** sum(step >= round(m * total) for m in milestones)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, bf16: bool) -> tuple[float, float]:
    """Mean loss and accuracy (%) over one pass of ``loader``."""
    model.eval()
    loss, correct, seen = (
        torch.zeros((), device=loader.device),
        torch.zeros((), device=loader.device),
        0,
    )
    with torch.autocast(loader.device.type, torch.bfloat16, enabled=bf16):
        for x, y in loader.batches(0):
            logits = model(x)
            loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
    model.train()
    return float(loss) / seen, 100.0 * float(correct) / seen


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag (a second SIGINT interrupts at once)."""
    requested = {"signal": None}

    def handler(signum: int, frame: Any) -> None:
        if requested["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(config: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) one training run; returns the summary (also written to summary.json)."""
    run_dir = Path(config.out_dir)
    config_yaml = to_yaml(config)
    state = load_checkpoint(run_dir, config_yaml) if resume else None
    if not resume:
        if (run_dir / CHECKPOINT).exists():
            raise CheckpointError(
                f"{run_dir} already holds a run ({CHECKPOINT}): continue it with "
                f"`regrow train --resume {run_dir}`, or choose another out_dir."
            )
        write_text(run_dir / "config.yaml", config_yaml)
    device = select_device(config.train.device)
    write_json(run_dir / "provenance.json", provenance(device))
    t, s = config.train, config.sparsity

    torch.manual_seed(config.seed)
    data = load_dataset(
        config.data.name,
        config.data.root,
        config.data.download,
        config.data.validation_size,
        config.data.limit_train,
        config.seed,
    )
    spec = get_model_spec(config.model.name)
    model = spec(num_classes=data.num_classes, width=config.model.width).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    loader = data.train_loader(
        t.batch_size, seed=config.seed, device=device, augment=config.data.augment and data.augment
    )
    steps_per_epoch = len(loader)
    total_steps = round(t.epochs * t.multiplier) * steps_per_epoch
    warmup = round(t.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, t.lr_milestones, t.lr_gamma)
    )
    sparsifier = get_method(s.method)(
        model,
        optimizer,
        sparsity=s.sparsity,
        distribution=s.distribution,
        total_steps=total_steps,
        delta_t=s.delta_t,
        alpha=s.alpha,
        t_end=int(s.t_end_fraction * total_steps),
        dense_layers=s.dense_layers,
        seed=config.seed,
        power=s.power,
        drop_schedule=s.drop_schedule,
        reinit=s.reinit,
        redistribution=s.redistribution,
    )
    # FLOPs relative to the full-width dense model (a Small-Dense run compares with width 1).
    reference = profile_model(spec(num_classes=data.num_classes), data.input_shape).dense_flops
    flops = TrainingFlopsCounter.from_model(model, data.input_shape, sparsifier, reference)
    log = MetricsLog(run_dir, t.tensorboard)

    epoch, batch_index, elapsed = 0, 0, 0.0
    running = {"loss": 0.0, "correct": 0.0, "seen": 0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sparsifier.load_state_dict(state["sparsifier"])
        flops.load_state_dict(state["flops"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        epoch, batch_index = state["position"]["epoch"], state["position"]["batch"]
        running, elapsed = state["position"]["running"], state["position"]["elapsed"]
        log.truncate_after(epoch - 1)

    def checkpoint() -> Path:
        return save_checkpoint(
            run_dir,
            {
                "config": config_yaml,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sparsifier": sparsifier.state_dict(),
                "flops": flops.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                },
                "position": {
                    "epoch": epoch,
                    "batch": batch_index,
                    "running": running,
                    "elapsed": elapsed + time.perf_counter() - started,
                },
            },
        )

    def check_finite(loss_sum: torch.Tensor) -> float:
        value = float(loss_sum)
        if not math.isfinite(value):
            kept = (
                f"the last good checkpoint {run_dir / CHECKPOINT} is kept"
                if (run_dir / CHECKPOINT).exists()
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"the training loss became {value} by step {sparsifier.step_count} (epoch {epoch}); "
                f"stopping, {kept}. Lower train.lr, or check the data."
            )
        return value

    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    bar = tqdm(
        total=total_steps,
        initial=sparsifier.step_count,
        desc=run_dir.name,
        unit="step",
        disable=not (t.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    started, seen_update = time.perf_counter(), sparsifier.last_update_step
    evaluation: dict[str, float] = {}
    with stop_on_signals() as stop:
        while sparsifier.step_count < total_steps:
            loss_sum = torch.tensor(running["loss"], device=device)
            correct = torch.tensor(running["correct"], device=device)
            for x, y in loader.batches(epoch, batch_index):
                batch_index += 1
                if t.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, torch.bfloat16, enabled=t.bf16):
                    logits = model(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stepped = sparsifier.step()
                if stepped:
                    optimizer.step()
                    scheduler.step()
                    bar.update(1)
                changed = sparsifier.last_update_step != seen_update
                seen_update = sparsifier.last_update_step
                flops.step(
                    sparsifier if changed else None,
                    dense_backward=sparsifier.dense_gradients_every_step or not stepped,
                    samples=len(y),
                )
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                running["seen"] += len(y)
                if stepped and sparsifier.step_count % LOG_EVERY == 0:
                    bar.set_postfix(loss=f"{check_finite(loss_sum) / running['seen']:.3f}")
                if sparsifier.step_count >= total_steps:
                    break
                hit_stop = stepped and sparsifier.step_count == t.stop_at_step
                if stop["signal"] or hit_stop:
                    running.update(loss=check_finite(loss_sum), correct=float(correct))
                    path = checkpoint()
                    bar.close()
                    reason = stop["signal"] or f"stop_at_step={t.stop_at_step}"
                    print(
                        f"regrow: stopped ({reason}) at step {sparsifier.step_count}; "
                        f"checkpoint {path}. Resume: regrow train --resume {run_dir}",
                        file=sys.stderr,
                    )
                    return {
                        "status": "stopped",
                        "step": sparsifier.step_count,
                        "checkpoint": str(path),
                    }
            done = sparsifier.step_count >= total_steps
            train_loss = check_finite(loss_sum) / max(running["seen"], 1)
            row = {
                "epoch": epoch,
                "step": sparsifier.step_count,
                "train_loss": train_loss,
                "train_accuracy": 100.0 * float(correct) / max(running["seen"], 1),
                "lr": optimizer.param_groups[0]["lr"],
                "density": sparsifier.global_density(),
                "train_flops": flops.train_flops,
                "train_flops_ratio": flops.ratio,
                "seconds": elapsed + time.perf_counter() - started,
            }
            if done or (epoch + 1) % t.eval_every == 0:
                evaluation = {}
                if data.val_x is not None:
                    evaluation["val_loss"], evaluation["val_accuracy"] = evaluate(
                        model, data.eval_loader("validation", device=device), t.bf16
                    )
                evaluation["test_loss"], evaluation["test_accuracy"] = evaluate(
                    model, data.eval_loader("test", device=device), t.bf16
                )
                row.update(evaluation)
            log.write(row)
            epoch, batch_index, running = epoch + 1, 0, {"loss": 0.0, "correct": 0.0, "seen": 0}
            if done or epoch % t.checkpoint_every == 0:
                checkpoint()
    bar.close()

    inference = profile_model(model, data.input_shape).report(sparsifier)
    epochs_1x = round(t.epochs) * steps_per_epoch * t.batch_size
    summary = {
        "status": "finished",
        "method": s.method,
        "distribution": s.distribution,
        "sparsity": 1.0 - sparsifier.global_density(),
        "target_sparsity": s.sparsity,
        "seed": config.seed,
        "model": config.model.name,
        "dataset": config.data.name,
        "multiplier": t.multiplier,
        "steps": sparsifier.step_count,
        "epochs": epoch,
        **evaluation,
        "inference_flops": inference.inference_flops,
        "inference_flops_ratio": inference.inference_flops / reference,
        "train_flops": flops.train_flops,
        "train_flops_ratio": flops.train_flops / (3.0 * reference * epochs_1x),
        "wall_seconds": elapsed + time.perf_counter() - started,
        **provenance(device),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
