"""Overhead of RigL over dense training, per training step, measured side by side in one run.

    python benchmarks/step_overhead.py [--model wrn22_2] [--batch-size 32] [--rounds 8]
        [--steps-per-round 4] [--sparsity 0.9] [--device cpu]

Two identical models (same initialisation, same data) train in alternating rounds: one dense, one
with RigL (ERK, 90% sparsity by default). The masked model still computes with dense kernels (the
masks zero weights, they do not skip work), so the ratio is the cost of the sparsity bookkeeping:
masking gradients and weights, and the mask updates. Prints the median time of an ordinary step
for each, their ratio, and the cost of a mask-update iteration amortised over ΔT steps.

Denormal floats are flushed to zero by default: on x86 CPUs denormal arithmetic is many times
slower, dense training produces more of them than a 90%-zero model, and that data-dependent effect
(which made RigL look ~6% *faster* than dense here) would hide the bookkeeping cost this measures.
``--keep-denormals`` measures without flushing.
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="wrn22_2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--delta-t", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keep-denormals", action="store_true")
    args = parser.parse_args()
    flushing = not args.keep_denormals and torch.set_flush_denormal(True)
    device = torch.device(args.device)

    spec = get_model_spec(args.model)
    torch.manual_seed(0)
    dense = spec().to(device)
    sparse = copy.deepcopy(dense)
    opt_dense, opt_sparse = (
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for m in (dense, sparse)
    )
    total = 10**9  # keeps every measured step inside the update window
    sp = regrow.RigL(
        sparse, opt_sparse, sparsity=args.sparsity, total_steps=total, delta_t=args.delta_t
    )
    x = torch.randn(args.batch_size, *spec.input_shape, device=device)
    y = torch.randint(0, spec.num_classes, (args.batch_size,), device=device)

    def dense_step() -> None:
        opt_dense.zero_grad()
        nn.functional.cross_entropy(dense(x), y).backward()
        opt_dense.step()

    def sparse_step() -> bool:
        opt_sparse.zero_grad()
        nn.functional.cross_entropy(sparse(x), y).backward()
        if sp.step():
            opt_sparse.step()
            return True
        return False

    def timed(fn) -> tuple[float, object]:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - start, out

    # Warm-up; the first sparse call is RigL's update at step 0.
    update_times = [timed(sparse_step)[0]]
    for _ in range(2):
        dense_step()
        sparse_step()

    dense_times, sparse_times = [], []
    for round_index in range(args.rounds):
        # Alternate which goes first, so drifts in machine speed hit both alike.
        order = [(dense_step, dense_times), (sparse_step, sparse_times)]
        for step_fn, times in order if round_index % 2 == 0 else order[::-1]:
            for _ in range(args.steps_per_round):
                times.append(timed(step_fn)[0])
        # One mask update per round, timed on its own: force the schedule to fire now.
        sp.step_count = (sp.step_count // args.delta_t + 1) * args.delta_t
        seconds, stepped = timed(sparse_step)
        assert not stepped, "expected a RigL update iteration"
        update_times.append(seconds)

    dense_median = statistics.median(dense_times)
    sparse_median = statistics.median(sparse_times)
    update_median = statistics.median(update_times[1:])
    # ΔT optimizer steps of RigL also spend one batch on a mask update.
    amortised = (sparse_median * args.delta_t + update_median) / args.delta_t
    threads = torch.get_num_threads()
    print(
        f"model={args.model} params={sum(p.numel() for p in dense.parameters()):,} "
        f"batch={args.batch_size} device={device} threads={threads} "
        f"sparsity={args.sparsity} (RigL, ERK) delta_t={args.delta_t} "
        f"flush_denormal={bool(flushing)}"
    )
    print(f"dense step          median {dense_median * 1e3:9.2f} ms  (n={len(dense_times)})")
    print(f"RigL step           median {sparse_median * 1e3:9.2f} ms  (n={len(sparse_times)})")
    print(f"RigL update         median {update_median * 1e3:9.2f} ms  (n={len(update_times) - 1})")
    print(f"ratio RigL/dense, ordinary step:         {sparse_median / dense_median:.3f}")
    print(f"ratio RigL/dense, update amortised/ΔT:   {amortised / dense_median:.3f}")


if __name__ == "__main__":
    main()
