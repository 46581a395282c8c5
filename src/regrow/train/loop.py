"""One flat training loop, using the library exactly as a user would (ARCHITECTURE: the harness).

``train(config)`` builds data, model, optimizer, LR schedule, sparsifier and FLOP counter from a
:class:`~regrow.train.config.RunConfig` (:func:`build`), loads a checkpoint into them on a resume
(:func:`restore`), then runs :func:`train_step` over passes of the data (:func:`train_epoch`) until
``epochs × multiplier`` epochs' worth of optimizer steps are done, and writes the summary
(:func:`summarize`). What the run directory holds, its states, and what each metric name means:
``docs/RUN_DIR.md``.

Checkpoints are written every ``checkpoint_every`` passes, at the end, at ``stop_at_step`` and on
SIGINT/SIGTERM. ``train(config, resume=True)`` continues bit-identically on the CPU: the data order
is a function of (seed, epoch), and model, optimizer, LR schedule, sparsifier, FLOP counter, RNG
states and the position inside the pass are restored. It writes into ``config.out_dir`` only
(``regrow train --resume DIR`` sets it to ``DIR``), holding the run directory's lock throughout;
resuming a finished run changes nothing and returns its summary.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DatasetSplits, TextData, load_dataset
from ..flops import TrainingFlopsCounter, profile_model
from ..models import get_model_spec
from ..sparsity import Sparsifier
from ..sparsity.schedules import PruningSchedule
from ..util.signals import handling_signals
from . import distributed
from .checkpoint import CheckpointError, resume_command
from .config import ConfigError, RunConfig, TrainConfig, to_yaml, with_absolute_paths
from .evaluation import evaluate_splits
from .init_masks import start_from_run
from .logging import MetricsLog, Progress, provenance
from .optim import build_optimizer, lr_schedule
from .rundir import DONE, MASK_UPDATE_EVENT, RunDir, RunDirError
from .step import (
    CompileError,
    Settings,
    TrainStep,
    build_step,
    learning_rate,
    select_device,
    tensor_learning_rates_,
)

#: Optimizer steps between loss checks and progress-bar updates: the one host synchronisation of
#: non-update steps, where the processes of a data-parallel run also agree on a requested stop.
LOG_EVERY = 50


class NonFiniteLossError(RuntimeError):
    """The training loss became inf/NaN; the last good checkpoint was kept."""


#: Why a run stopped before its end → the exit status of ``regrow train`` (128 + the signal).
STOP_STATUS = {"stop_at_step": 0, "SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set ``["signal"]`` to its number (a second SIGINT interrupts at once)."""
    requested: dict[str, int] = {"signal": 0}

    def handler(signum: int, frame: Any) -> None:
        if requested["signal"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested["signal"] = signum

    with handling_signals(handler):
        yield requested


#: ``train`` settings recorded in ``summary.json`` (with the run's method, plan, model, data, seed).
SUMMARY_TRAIN_KEYS = (
    "epochs", "multiplier", "batch_size", "optimizer", "lr", "lr_schedule", "lr_milestones",
    "lr_gamma", "min_lr_ratio", "warmup_epochs", "momentum", "nesterov", "betas", "eps",
    "weight_decay", "grad_clip", "label_smoothing",
)  # fmt: skip


@dataclass
class Run:
    """What :func:`build` makes: fixed for the life of the run."""

    config: RunConfig
    config_yaml: str  #: ``config`` as saved in every checkpoint (converted once)
    context: distributed.Context
    device: torch.device
    run_dir: RunDir
    data: DatasetSplits | TextData
    model: nn.Module
    network: nn.Module  #: ``model``, or DDP around it under torchrun (the forward pass only)
    optimizer: torch.optim.SGD | torch.optim.AdamW  #: train.optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR  #: train.lr_schedule, a function of the step
    sparsifier: Sparsifier
    flops: TrainingFlopsCounter
    loader: Any  #: the training DeviceLoader
    criterion: nn.Module
    log: MetricsLog
    width: float  #: the model's width multiplier (Small-Dense solves its own)
    dense_flops: float  #: f_D: forward FLOPs of one sample through the full-width dense model
    total_steps: int
    samples_1x: int  #: training samples of the 1× run (of ``train.epochs`` epochs)
    settings: Settings  #: bf16, channels_last, compile, … as resolved for the device
    step: TrainStep  #: one batch: eager, or compiled on non-update batches (train.compile)
    init_masks: dict[str, Any] | None = None  #: where the masks came from (sparsity.init_masks)

    @property
    def global_batch(self) -> int:
        return self.loader.global_batch_size

    def train_flops_ratio(self) -> float:
        """Training FLOPs so far ÷ dense training of the whole 1× run (docs/RUN_DIR.md)."""
        return self.flops.train_flops / (3.0 * self.dense_flops * self.samples_1x)


@dataclass
class LoopState:
    """Where the loop is. All but ``since`` goes into the checkpoint."""

    epoch: int = 0  #: the pass over the training data
    batch: int = 0  #: batches of this pass done
    loss: float = 0.0  #: loss × samples of this pass (after a pass or a stop: over every rank)
    correct: float = 0.0  #: correct predictions of this pass (likewise)
    seen: int = 0  #: samples of this pass, over every rank
    elapsed: float = 0.0  #: seconds trained in earlier sessions
    since: float = field(default_factory=time.perf_counter)  #: when this session's loop began

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.since

    def next_pass(self) -> None:
        self.epoch, self.batch, self.loss, self.correct, self.seen = self.epoch + 1, 0, 0.0, 0.0, 0

    def position(self) -> dict[str, Any]:
        sums = {"loss": self.loss, "correct": self.correct, "seen": self.seen}
        return {"epoch": self.epoch, "batch": self.batch, **sums, "elapsed": self.seconds()}


def train(config: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) one training run in ``config.out_dir``; returns the summary (also written
    to summary.json), or ``{"status": "stopped", "reason": …}`` after a requested stop (the reason
    a key of :data:`STOP_STATUS`). Resuming a finished run returns its summary, changing nothing.

    Launched by ``torchrun`` with several processes it trains data-parallel (``train.batch_size``
    per rank; rank 0 holds the lock and writes the run directory)."""
    config = with_absolute_paths(config)  # resolved once, as the run starts: saved absolute
    context, device = distributed.setup(select_device(config.train.device))
    try:
        run_dir = RunDir(config.out_dir)
        if resume and run_dir.state() == DONE:
            return already_finished(run_dir, config, context)
        with hold_lock(run_dir, context, device):
            return train_holding_lock(config, resume, run_dir, context, device)
    finally:
        distributed.teardown(context)


def already_finished(
    run_dir: RunDir, config: RunConfig, context: distributed.Context
) -> dict[str, Any]:
    """The summary of a finished run (after checking ``config`` is its own); writes nothing."""
    if run_dir.config_path.is_file():
        given = "the configuration given"
        run_dir.check_same_run(run_dir.config_path.read_text(), config, run_dir.path, given)
    if context.main:
        print(
            f"regrow: {run_dir.path} is already finished; nothing was changed (start another "
            "out_dir to train again).",
            file=sys.stderr,
        )
    summary = run_dir.summary()
    assert summary is not None
    return summary


@contextlib.contextmanager
def hold_lock(
    run_dir: RunDir, context: distributed.Context, device: torch.device
) -> Iterator[None]:
    """Hold the run directory's lock on rank 0 (the one writer) for the block; when rank 0 cannot
    take it, every rank raises (rank 0 the reason, the others a pointer to it)."""
    with contextlib.ExitStack() as stack:
        error: Exception | None = None
        if context.main:
            try:
                stack.enter_context(run_dir.lock())
            except RunDirError as caught:
                error = caught
        if distributed.any_rank(error is not None, device, context):
            raise error or RunDirError(f"rank 0 could not take the lock of {run_dir.path}.")
        yield


def train_holding_lock(
    config: RunConfig,
    resume: bool,
    run_dir: RunDir,
    context: distributed.Context,
    device: torch.device,
) -> dict[str, Any]:
    """:func:`train` once the run directory is this run's alone."""
    if context.main:
        removed = run_dir.remove_stale_temporaries()
        if removed:
            names = ", ".join(path.name for path in removed)
            print(f"regrow: removed temporaries of interrupted writes: {names}", file=sys.stderr)
    # Check the directory before building anything: resume this run, or start in a free one.
    if not resume:
        run_dir.check_can_start()
    saved = run_dir.load_checkpoint(config) if resume else None
    run = build(config, context, device, run_dir)
    state = restore(run, saved) if saved is not None else LoopState()
    distributed.barrier(context)  # every rank has looked before rank 0 writes
    if context.main:
        info = {**provenance(device, context.world_size), "settings": run.settings.as_dict()}
        sparsifier = run.sparsifier
        run_dir.begin(
            config, info, resume, state.epoch, sparsifier.step_count, sparsifier.last_update_step
        )
        if isinstance(run.data, TextData):  # what `regrow sample` decodes with
            run_dir.write_vocabulary({"vocabulary": run.data.vocabulary, **run.data.describe()})
    # From here a failure is the run's: record it (a later start or resume clears it).
    try:
        return loop(run, state)
    except Exception as error:
        if context.main:
            with contextlib.suppress(RunDirError):  # the disk may be full: keep the real error
                run_dir.record_failure(error, step=run.sparsifier.step_count, epoch=state.epoch)
        raise


def build(
    config: RunConfig, context: distributed.Context, device: torch.device, run_dir: RunDir
) -> Run:
    """Data, model, optimizer, LR schedule, sparsifier and FLOP counter of ``config``."""
    t, s, d = config.train, config.sparsity, config.data
    settings = resolve_settings(t, context, device)
    # Data and model (at the width the method trains: Small-Dense solves its own).
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    data = load_data(config)
    spec = get_model_spec(config.model.name)

    def make(width: float) -> nn.Module:
        return spec(num_classes=data.num_classes, width=width, **data.model_options())

    method = s.method_class()
    width = s.model_width(make, config.model.width)
    model = make(width).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Optimizer, the loader (this rank's shard), the LR schedule over every step, the sparsifier.
    optimizer = build_optimizer(model, config, settings)
    shard = {"rank": context.rank, "world_size": context.world_size}
    augment = d.augment and data.augment
    loader = data.train_loader(t.batch_size, config.seed, device, augment=augment, **shard)
    total_steps = round(t.epochs * t.multiplier) * len(loader)
    scheduler = lr_schedule(optimizer, t, total_steps, len(loader))
    # Masks from another run start from the weights as built (the sparsifier zeroes them).
    initial = {n: p.detach().clone() for n, p in model.named_parameters()} if s.init_masks else None
    sparsifier = method(
        model, optimizer, total_steps=total_steps, seed=config.seed, args=s.method_args(),
        init=s.init, **s.plan_keys(),
    )  # fmt: skip
    init_masks = start_from_run(config, run_dir, sparsifier, initial)
    # FLOPs relative to the full-width dense model (a Small-Dense run compares with width 1).
    dense_flops = profile_model(make(1.0), data.input_shape).dense_flops
    flops = TrainingFlopsCounter.from_model(model, data.input_shape, sparsifier, dense_flops)
    # Logging, DDP around the model, the loss; the 1× run's samples (train_flops_ratio's base).
    log = MetricsLog(run_dir, t.tensorboard and context.main)
    network = distributed.wrap(model, context, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    torch.manual_seed(config.seed + context.rank)  # dropout differs between ranks
    samples_1x = round(t.epochs) * len(loader) * loader.global_batch_size
    step = build_step(
        network, criterion, sparsifier, optimizer, settings, s.method, t.grad_clip, device
    )
    return Run(
        config=config, config_yaml=to_yaml(config), context=context, device=device,
        run_dir=run_dir, data=data, model=model, network=network, optimizer=optimizer,
        scheduler=scheduler, sparsifier=sparsifier, flops=flops, loader=loader,
        criterion=criterion, log=log, width=width, dense_flops=dense_flops,
        total_steps=total_steps, samples_1x=samples_1x, settings=settings, step=step,
        init_masks=init_masks,
    )  # fmt: skip


def load_data(config: RunConfig) -> DatasetSplits | TextData:
    """The data set of ``config``; a ``data.root`` that is a file, or lies under one, is a
    :class:`ConfigError` naming the key (not the bare "File exists" of the folder it made)."""
    d = config.data
    try:
        return load_dataset(
            d.name, d.root, d.download, d.validation_size, d.limit_train, config.seed,
            path=d.path, block_size=d.block_size,
        )  # fmt: skip
    except OSError:
        root = Path(d.root)
        blocking = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
        if blocking is None:
            raise
        where = "is a file" if blocking == root else f"lies under {blocking}, which is a file"
        raise ConfigError(
            f"data.root={d.root} {where}, not a directory: point data.root at the folder that "
            f"holds (or is to hold) the {d.name} data, or move the file away."
        ) from None


def resolve_settings(
    t: TrainConfig, context: distributed.Context, device: torch.device
) -> Settings:
    """bf16, channels_last, compile, …: ``auto`` resolved for ``device``, and applied."""
    settings = Settings.resolve(t, device)
    settings.apply()
    if settings.compile and context.distributed:
        raise CompileError(
            "train.compile=true is not supported with several processes (torchrun) yet: its "
            "backward runs inside the compiled graph, where DDP's gradient hooks cannot; train "
            "with train.compile=false."
        )
    return settings


def restore(run: Run, saved: dict[str, Any]) -> LoopState:
    """Load a checkpoint into the built objects; returns the loop's position."""
    position, rank = saved["position"], run.context.rank
    if position["global_batch"] != run.global_batch:
        raise CheckpointError(
            f"the checkpoint's global batch is {position['global_batch']}, this run's "
            f"{run.global_batch} (train.batch_size × {run.context.world_size} processes): keep "
            "batch_size × processes unchanged to resume."
        )
    # Every object's state, then the RNG (when the world size is the same) and the position.
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.sparsifier.load_state_dict(saved["sparsifier"])
    run.flops.load_state_dict(saved["flops"])
    if saved.get("init_masks"):  # where the masks came from, as recorded when the run started
        run.init_masks = saved["init_masks"]
    if run.settings.compile:  # the loaded groups hold the saved learning rates
        tensor_learning_rates_(run.optimizer, run.device)
    if len(saved["rng"]) == run.context.world_size:  # else a new world size: fresh dropout RNG
        torch.set_rng_state(saved["rng"][rank]["torch"])
        if run.device.type == "cuda" and saved["rng"][rank]["cuda"] is not None:
            torch.cuda.set_rng_state(saved["rng"][rank]["cuda"], run.device)
    sums = position.get("running", position)  # older checkpoints nested the sums
    state = LoopState(
        epoch=position["epoch"], batch=position["batch"], seen=sums["seen"],
        elapsed=position["elapsed"],
    )  # fmt: skip
    if run.context.main:  # the pass's sums so far (over every rank) continue on rank 0
        state.loss, state.correct = sums["loss"], sums["correct"]
    return state


def loop(run: Run, state: LoopState) -> dict[str, Any]:
    """Passes over the data until the run's optimizer steps are done; the summary."""
    t, sparsifier, main = run.config.train, run.sparsifier, run.context.main
    progress = Progress(
        run.run_dir.path.name, run.total_steps, sparsifier.step_count, t.progress and main
    )
    evaluation: dict[str, float] = {}
    state.since = time.perf_counter()
    with stop_on_signals() as stop:
        while sparsifier.step_count < run.total_steps:
            # One pass (or the rest of one); a requested stop checkpoints and returns.
            reason = train_epoch(run, state, stop, progress)
            if reason is not None:
                progress.close()
                return stopped(run, state, reason)
            # The pass's row (with an evaluation when due), then the next pass; a checkpoint.
            done = sparsifier.step_count >= run.total_steps
            row = metrics_row(run, state)
            if done or (state.epoch + 1) % t.eval_every == 0:
                evaluation = evaluate_splits(run.model, run.data, run.settings.bf16, run.context)
                row.update(evaluation)
            if main:
                run.log.write(row)
            progress.end_of_pass(
                state.epoch, row["step"], row["train_loss"], row["lr"], row["seconds"]
            )
            state.next_pass()
            if done or state.epoch % t.checkpoint_every == 0:
                save(run, state)
    progress.close()
    return summarize(
        run,
        state,
        evaluation or evaluate_splits(run.model, run.data, run.settings.bf16, run.context),
    )


def train_epoch(run: Run, state: LoopState, stop: dict[str, Any], progress: Progress) -> str | None:
    """The rest of pass ``state.epoch``; the reason if a stop was requested (``"SIGINT"``,
    ``"SIGTERM"``, ``"stop_at_step"``), else ``None``. Leaves the pass's sums, over every rank,
    in ``state``."""
    t, sparsifier = run.config.train, run.sparsifier
    loss_sum = torch.tensor(state.loss, device=run.device)  # device tensors: no host sync
    correct = torch.tensor(state.correct, device=run.device)
    reason = None
    for x, y in run.loader.batches(state.epoch, state.batch):
        batch_loss, batch_correct, stepped = train_step(run, x, y)
        state.batch, state.seen = state.batch + 1, state.seen + run.global_batch
        if sparsifier.last_batch.masks_changed and run.context.main:
            run.log.write(mask_update_row(run, state))
        loss_sum += batch_loss
        correct += batch_correct
        periodic = stepped and sparsifier.step_count % LOG_EVERY == 0
        if stepped:
            progress.advance()
            if periodic:  # the one host sync: loss check, progress
                loss = finite_loss(run, state, loss_sum) / state.seen
                lr = learning_rate(run.optimizer)
                progress.periodic(state.epoch, sparsifier.step_count, loss, lr, state.seconds())
        if sparsifier.step_count >= run.total_steps:
            break
        # stop_at_step falls on the same step on every rank. A signal may reach one rank only: one
        # process stops at once; several agree at the periodic check (no per-step sync).
        if stepped and sparsifier.step_count == t.stop_at_step:
            reason = "stop_at_step"
            break
        if not run.context.distributed:
            asked = stop["signal"]
        elif periodic:
            asked = distributed.max_over_ranks(stop["signal"], run.device, run.context)
        else:
            asked = 0
        if asked:
            reason = signal.Signals(asked).name
            break
    state.loss = finite_loss(run, state, loss_sum)
    state.correct = float(distributed.all_reduce_sum(correct.clone(), run.context))
    return reason


def stopped(run: Run, state: LoopState, reason: str) -> dict[str, Any]:
    """After a requested stop: the checkpoint, a line saying how to resume, the result."""
    path, step = save(run, state), run.sparsifier.step_count
    if run.context.main:
        said = (
            f"stop_at_step={run.config.train.stop_at_step}" if reason == "stop_at_step" else reason
        )
        print(
            f"regrow: stopped ({said}) at step {step}; checkpoint {path}. Resume: "
            f"{resume_command(run.run_dir.path)}",
            file=sys.stderr,
        )
    return {"status": "stopped", "reason": reason, "step": step, "checkpoint": str(path)}


def train_step(
    run: Run, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One batch (:class:`~regrow.train.step.TrainStep`: eager, or compiled), then the LR step
    and the batch's FLOPs. Returns loss × samples and the correct predictions (device tensors) and
    whether an optimizer step was taken (``False``: the batch went to a mask update)."""
    batch_loss, batch_correct, stepped = run.step(x, y)
    if stepped:
        run.scheduler.step()
    run.flops.count_batch(run.sparsifier, samples=run.global_batch)
    return batch_loss, batch_correct, stepped


def finite_loss(run: Run, state: LoopState, loss_sum: torch.Tensor) -> float:
    """``loss_sum`` summed over ranks (so every rank decides alike); raise if not finite."""
    value = float(distributed.all_reduce_sum(loss_sum.detach().clone(), run.context))
    if not math.isfinite(value):
        kept = (
            f"the last good checkpoint {run.run_dir.checkpoint_path} is kept"
            if run.run_dir.has_checkpoint()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"the training loss became {value} by step {run.sparsifier.step_count} (epoch "
            f"{state.epoch}); stopping, {kept}. Lower train.lr, or check the data."
        )
    return value


def metrics_row(run: Run, state: LoopState) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of the pass just finished (names: docs/RUN_DIR.md)."""
    seen = max(state.seen, 1)
    return {
        "epoch": state.epoch,
        "step": run.sparsifier.step_count,
        "train_loss": state.loss / seen,
        "train_accuracy": 100.0 * state.correct / seen,
        "lr": learning_rate(run.optimizer),
        "density": run.sparsifier.global_density(),
        "train_flops": run.flops.train_flops,
        "train_flops_ratio": run.train_flops_ratio(),
        "seconds": state.seconds(),
    }


def mask_update_row(run: Run, state: LoopState) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of the mask update this batch made (docs/RUN_DIR.md)."""
    sparsifier = run.sparsifier
    return {
        "event": MASK_UPDATE_EVENT,
        "epoch": state.epoch,
        "step": sparsifier.last_update_step,
        "density": sparsifier.global_density(),
        **(sparsifier.last_update_stats or {}),
    }


def save(run: Run, state: LoopState) -> Path:
    """Checkpoint what a resume needs (every rank's RNG state; rank 0 writes); returns its path."""
    cuda_rng = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None
    rng = distributed.gather_objects(
        {"torch": torch.get_rng_state(), "cuda": cuda_rng}, run.context
    )
    if run.context.main:
        run.run_dir.save_checkpoint(
            {
                "config": run.config_yaml,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "sparsifier": run.sparsifier.state_dict(),
                "flops": run.flops.state_dict(),
                "rng": rng,
                "position": {**state.position(), "global_batch": run.global_batch},
                "init_masks": run.init_masks,
            }
        )
    return run.run_dir.checkpoint_path


def resolved_method_args(sparsifier: Sparsifier) -> dict[str, Any]:
    """The method's arguments as the run used them: a pruning window left ``null`` (the paper's,
    scaled to the run) recorded as the steps its schedule chose."""
    args = sparsifier.args.as_dict()
    schedule = getattr(sparsifier, "schedule", None)
    if isinstance(schedule, PruningSchedule):
        used = {"prune_begin": schedule.begin, "prune_end": schedule.end}
        args |= {key: value for key, value in used.items() if args.get(key, 0) is None}
    return args


def summarize(run: Run, state: LoopState, evaluation: dict[str, float]) -> dict[str, Any]:
    """``summary.json``: every value that defines the run, then its results and provenance."""
    config, t, s = run.config, run.config.train, run.config.sparsity
    defining = {
        "method": s.method,
        "method_args": resolved_method_args(run.sparsifier),
        "target_sparsity": s.sparsity,
        **{k: v for k, v in s.plan_keys().items() if k != "sparsity"},
        "init": s.init,
        "layer_densities": run.sparsifier.plan.densities(),  # what the distribution resolved to
        "model": config.model.name,
        "model_width": run.width,
        "dataset": config.data.name,
        "seed": config.seed,
        "global_batch": run.global_batch,
        "total_steps": run.total_steps,
        **{k: getattr(t, k) for k in SUMMARY_TRAIN_KEYS},
        **({"init_masks": run.init_masks} if run.init_masks else {}),
        **(run.data.describe() if isinstance(run.data, TextData) else {}),
    }
    inference = profile_model(run.model, run.data.input_shape).report(run.sparsifier)
    results = {
        "steps": run.sparsifier.step_count,
        "data_passes": state.epoch,
        "sparsity": 1.0 - run.sparsifier.global_density(),
        "itop_rate": run.sparsifier.itop_rate(),
        **evaluation,
        "inference_flops": inference.inference_flops,
        "inference_flops_ratio": inference.inference_flops / run.dense_flops,
        "train_flops": run.flops.train_flops,
        "train_flops_ratio": run.train_flops_ratio(),
        "wall_seconds": state.seconds(),
    }
    info = provenance(run.device, run.context.world_size)
    summary = {"status": "finished", **defining, **results, **info}
    if run.context.main:
        run.run_dir.write_summary(summary)
    return summary
