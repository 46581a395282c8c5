"""Eager against compiled training steps per method, measured side by side in one run.

    python benchmarks/step_speed.py [--model wrn22_2] [--batch-size 128] [--steps 100]
        [--rounds 3] [--methods dense,static,rigl,snfs] [--sparsity 0.8] [--delta-t 100]
        [--device auto]

For each method, two copies of one model (same initialisation, same batches) train with the
harness's own steps: :class:`regrow.train.step.TrainStep` (eager) and
:class:`regrow.train.step.CompiledStep` (``train.compile=true``), with the device's default
settings (bf16 and channels-last on CUDA, fp32 on the CPU). After a warm-up (compilation), the
rounds alternate over every (method, step) pair, each timing ``--steps`` consecutive batches —
with ΔT = ``--delta-t`` these include the mask updates, run eagerly, so a RigL block is the cost
amortised over ΔT. Prints the median milliseconds per batch, compiled ÷ eager per method, and each
method's compiled step ÷ compiled Dense (the cost of sparse bookkeeping under compilation).

Denormal floats are flushed to zero on the CPU (see ``benchmarks/step_overhead.py``: denormal
arithmetic is data-dependent and much slower on x86, which would blur the comparison).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import regrow
from regrow.models import get_model_spec
from regrow.train.config import TrainConfig
from regrow.train.step import CompiledStep, Settings, TrainStep, tensor_learning_rates_

INPUTS = {"digits_mlp": ((64,), 10), "wrn22_2": ((3, 32, 32), 10), "resnet50": ((3, 32, 32), 100)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    method: str, base: nn.Module, compiled: bool, args: argparse.Namespace, device: torch.device
) -> TrainStep:
    """A fresh copy of ``base`` with its optimizer and sparsifier, in a step of either kind."""
    model = copy.deepcopy(base)
    settings = Settings.resolve(TrainConfig(compile=compiled), device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": 5e-4}, {"params": others, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, nesterov=True, **settings.sgd_keywords(),
    )  # fmt: skip
    cls = regrow.get_method(method)
    own = {"delta_t": args.delta_t} if "delta_t" in cls.Args.names() else {}
    # A very long run keeps every measured step inside the update window (T_end = 75%).
    sparsifier = cls(
        model, optimizer, sparsity=args.sparsity, distribution="erk", total_steps=10**7, **own
    )
    criterion = nn.CrossEntropyLoss()
    if not compiled:
        return TrainStep(model, criterion, sparsifier, optimizer, settings)
    tensor_learning_rates_(optimizer, device)
    return CompiledStep(model, criterion, sparsifier, optimizer, settings, method)


def time_block(step: TrainStep, batches: list, steps: int, device: torch.device) -> float:
    """Seconds per batch over ``steps`` consecutive batches."""
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        step(x, y)
    sync(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="wrn22_2", choices=sorted(INPUTS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="batches per timed block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--methods", default="dense,static,rigl,snfs")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--delta-t", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    shape, classes = INPUTS[args.model]
    torch.manual_seed(0)
    base = get_model_spec(args.model)(num_classes=classes).to(device)
    generator = torch.Generator(device).manual_seed(1)
    batches = [
        (
            torch.randn((args.batch_size, *shape), generator=generator, device=device),
            torch.randint(0, classes, (args.batch_size,), generator=generator, device=device),
        )
        for _ in range(8)
    ]
    methods = args.methods.split(",")
    steps = {
        (method, kind): make_step(method, base, kind == "compiled", args, device)
        for method in methods
        for kind in ("eager", "compiled")
    }
    compile_seconds = {}
    for key, step in steps.items():  # warm-up: the first optimizer step, compilation
        start = time.perf_counter()
        time_block(step, batches, args.warmup, device)
        compile_seconds[key] = time.perf_counter() - start
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(time_block(step, batches, args.steps, device))
    median = {key: statistics.median(values) for key, values in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    threads = torch.get_num_threads()
    print(
        f"device: {name} ({threads} threads); {args.model}, batch {args.batch_size}, sparsity "
        f"{args.sparsity} (ERK), ΔT {args.delta_t}; median of {args.rounds} rounds of "
        f"{args.steps} batches"
    )
    print("| method | eager ms | compiled ms | compiled ÷ eager | compiled ÷ compiled dense |")
    print("|---|---|---|---|---|")
    dense = median.get(("dense", "compiled"))
    for method in methods:
        eager, compiled = median[(method, "eager")], median[(method, "compiled")]
        versus = f"{compiled / dense:.3f}" if dense else "-"
        print(
            f"| {method} | {1e3 * eager:.2f} | {1e3 * compiled:.2f} | {compiled / eager:.3f} "
            f"| {versus} |"
        )
    warm = ", ".join(f"{m}/{k} {s:.1f}s" for (m, k), s in compile_seconds.items())
    print(f"warm-up ({args.warmup} batches, compilation included): {warm}")


if __name__ == "__main__":
    main()
