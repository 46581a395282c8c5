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
from . import distributed
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
def evaluate(
    model: nn.Module, loader: Any, bf16: bool, context: distributed.Context
) -> tuple[float, float]:
    """Mean loss and accuracy (%) over one pass of ``loader`` (each rank's share, summed)."""
    model.eval()
    totals = torch.zeros(3, device=loader.device)  # loss, correct, seen
    with torch.autocast(loader.device.type, torch.bfloat16, enabled=bf16):
        for x, y in loader.batches(0):
            logits = model(x)
            totals[0] += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
    model.train()
    loss, correct, seen = distributed.all_reduce_sum(totals, context).tolist()
    return loss / seen, 100.0 * correct / seen


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
    """Run (or resume) one training run; returns the summary (also written to summary.json).

    Launched by ``torchrun`` with several processes it trains data-parallel (``train.batch_size``
    per rank; rank 0 writes the run directory)."""
    context, device = distributed.setup(select_device(config.train.device))
    try:
        return _train(config, resume, context, device)
    finally:
        distributed.teardown(context)


def _train(
    config: RunConfig, resume: bool, context: distributed.Context, device: torch.device
) -> dict[str, Any]:
    run_dir, config_yaml, t, s = (
        Path(config.out_dir),
        to_yaml(config),
        config.train,
        config.sparsity,
    )
    state = load_checkpoint(run_dir, config_yaml) if resume else None
    if not resume and (run_dir / CHECKPOINT).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run ({CHECKPOINT}): continue it with "
            f"`regrow train --resume {run_dir}`, or choose another out_dir."
        )
    distributed.barrier(context)  # every rank has looked before rank 0 writes
    if context.main:
        if not resume:
            write_text(run_dir / "config.yaml", config_yaml)
        write_json(run_dir / "provenance.json", provenance(device, context.world_size))

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    data = load_dataset(
        config.data.name,
        config.data.root,
        config.data.download,
        config.data.validation_size,
        config.data.limit_train,
        config.seed,
    )
    spec = get_model_spec(config.model.name)
    method, method_args = s.method_class(), s.method_args()

    def build(width: float) -> nn.Module:
        return spec(num_classes=data.num_classes, width=width)

    width = method.model_width(build, config.model.width, method_args, **s.plan_keys())
    model = build(width).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    shard = {"rank": context.rank, "world_size": context.world_size}
    augment = config.data.augment and data.augment
    loader = data.train_loader(t.batch_size, config.seed, device, augment=augment, **shard)
    global_batch, steps_per_epoch = loader.global_batch_size, len(loader)
    total_steps = round(t.epochs * t.multiplier) * steps_per_epoch
    warmup = round(t.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, t.lr_milestones, t.lr_gamma)
    )
    sparsifier = method(
        model,
        optimizer,
        total_steps=total_steps,
        seed=config.seed,
        args=method_args,
        **s.plan_keys(),
    )
    # FLOPs relative to the full-width dense model (a Small-Dense run compares with width 1).
    reference = profile_model(spec(num_classes=data.num_classes), data.input_shape).dense_flops
    flops = TrainingFlopsCounter.from_model(model, data.input_shape, sparsifier, reference)
    log = MetricsLog(run_dir, t.tensorboard and context.main)
    network = distributed.wrap(model, context, device)  # forward through DDP; the rest on model
    torch.manual_seed(config.seed + context.rank)  # dropout differs between ranks

    epoch, batch_index, elapsed = 0, 0, 0.0
    running = {"loss": 0.0, "correct": 0.0, "seen": 0}
    if state is not None:
        if state["position"]["global_batch"] != global_batch:
            raise CheckpointError(
                f"the checkpoint's global batch is {state['position']['global_batch']}, this "
                f"run's {global_batch} (train.batch_size × {context.world_size} processes): keep "
                "batch_size × processes unchanged to resume."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sparsifier.load_state_dict(state["sparsifier"])
        flops.load_state_dict(state["flops"])
        if len(state["rng"]) == context.world_size:  # else a new world size: fresh dropout RNG
            torch.set_rng_state(state["rng"][context.rank]["torch"])
            if device.type == "cuda" and state["rng"][context.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(state["rng"][context.rank]["cuda"], device)
        epoch, batch_index = state["position"]["epoch"], state["position"]["batch"]
        running, elapsed = state["position"]["running"], state["position"]["elapsed"]
        if context.main:
            log.truncate_after(epoch - 1)

    def checkpoint() -> Path:
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        rng = distributed.gather_objects(
            {"torch": torch.get_rng_state(), "cuda": cuda_rng}, context
        )
        if context.main:
            position = {
                "epoch": epoch,
                "batch": batch_index,
                "running": running,
                "global_batch": global_batch,
                "elapsed": elapsed + time.perf_counter() - started,
            }
            save_checkpoint(
                run_dir,
                {
                    "config": config_yaml,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sparsifier": sparsifier.state_dict(),
                    "flops": flops.state_dict(),
                    "rng": rng,
                    "position": position,
                },
            )
        return run_dir / CHECKPOINT

    def check_finite(loss_sum: torch.Tensor) -> float:
        """The loss summed over ranks (so every rank decides alike); raise if not finite."""
        value = float(distributed.all_reduce_sum(loss_sum.detach().clone(), context))
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
        disable=not (t.progress and context.main and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
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
                    logits = network(x)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under DDP: gradients averaged over ranks here
                stepped = sparsifier.step()
                if stepped:
                    optimizer.step()
                    scheduler.step()
                    bar.update(1)
                flops.count_batch(sparsifier, samples=global_batch)
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                running["seen"] += global_batch
                if stepped and sparsifier.step_count % LOG_EVERY == 0:
                    bar.set_postfix(loss=f"{check_finite(loss_sum) / running['seen']:.3f}")
                if sparsifier.step_count >= total_steps:
                    break
                hit_stop = stepped and sparsifier.step_count == t.stop_at_step
                if distributed.any_rank(bool(stop["signal"]) or hit_stop, device, context):
                    check_finite(loss_sum)
                    running.update(loss=float(loss_sum), correct=float(correct))
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
            train_correct = float(distributed.all_reduce_sum(correct.clone(), context))
            row = {
                "epoch": epoch,
                "step": sparsifier.step_count,
                "train_loss": train_loss,
                "train_accuracy": 100.0 * train_correct / max(running["seen"], 1),
                "lr": optimizer.param_groups[0]["lr"],
                "density": sparsifier.global_density(),
                "train_flops": flops.train_flops,
                "train_flops_ratio": flops.ratio,
                "seconds": elapsed + time.perf_counter() - started,
            }
            if done or (epoch + 1) % t.eval_every == 0:
                splits = ["validation", "test"] if data.val_x is not None else ["test"]
                evaluation = {}
                for split in splits:
                    key = "val" if split == "validation" else split
                    loader_ = data.eval_loader(split, device=device, **shard)
                    evaluation[f"{key}_loss"], evaluation[f"{key}_accuracy"] = evaluate(
                        model, loader_, t.bf16, context
                    )
                row.update(evaluation)
            if context.main:
                log.write(row)
            epoch, batch_index, running = epoch + 1, 0, {"loss": 0.0, "correct": 0.0, "seen": 0}
            if done or epoch % t.checkpoint_every == 0:
                checkpoint()
    bar.close()

    inference = profile_model(model, data.input_shape).report(sparsifier)
    samples_1x = round(t.epochs) * steps_per_epoch * global_batch
    summary = {
        "status": "finished",
        "method": s.method,
        "distribution": s.distribution,
        "sparsity": 1.0 - sparsifier.global_density(),
        "target_sparsity": s.sparsity,
        "seed": config.seed,
        "model": config.model.name,
        "dataset": config.data.name,
        "method_args": method_args.as_dict(),
        "model_width": width,
        "multiplier": t.multiplier,
        "steps": sparsifier.step_count,
        "epochs": epoch,
        "global_batch": global_batch,
        **evaluation,
        "inference_flops": inference.inference_flops,
        "inference_flops_ratio": inference.inference_flops / reference,
        "train_flops": flops.train_flops,
        "train_flops_ratio": flops.train_flops / (3.0 * reference * samples_1x),
        "wall_seconds": elapsed + time.perf_counter() - started,
        **provenance(device, context.world_size),
    }
    if context.main:
        write_json(run_dir / "summary.json", summary)
    return summary
