"""Simulated vs real sparsity at inference: ``regrow bench-inference`` over the report's cases.

    python benchmarks/bench_inference.py [--threads 1] [--rounds 15] [--batch-sizes 1,32]
        [--out runs/bench_inference] [--skip-digits] [--skip-wrn]

Trains the digits quickstart model (a few seconds each, 30 epochs) with RigL at 90% and 95%
sparsity (ΔT = 50), and with SRigL (structured: ablated neurons) when the method is registered,
then, for each run and each batch size, times the dense, the masked and the exported model side
by side (:mod:`regrow.export.bench`: interleaved rounds, warm-up, ``torch.inference_mode``; the
export re-made at that batch size, so its CSR choice is timed there). WRN-22-2 (full width, ERK
90%, random Static masks: the speed of a sparse layer depends on its density and shape, not on
trained values) is timed the same way without a run. One table per case, with the compressed
checkpoint's size against the dense fp32 one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import regrow
from regrow.cli import main as regrow_main


def train_digits(out: Path, method: str, sparsity: float) -> Path:
    from regrow.train import RunDir, load_config, train

    run = out / f"digits_{method}_{round(sparsity * 100)}"
    if RunDir(run).state() != "done":
        overrides = [
            f"out_dir={run}",
            f"sparsity.method={method}",
            f"sparsity.sparsity={sparsity}",
            "sparsity.args.delta_t=50",
        ]
        train(load_config("quickstart", overrides))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--out", default="runs/bench_inference", help="where the runs go")
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-wrn", action="store_true")
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    common = ["--threads", str(args.threads), "--rounds", str(args.rounds)]
    cases: list[list[str]] = []
    if not args.skip_digits:
        methods = ["rigl"] + (["srigl"] if "srigl" in regrow.METHODS else [])
        for method in methods:
            for sparsity in (0.9, 0.95):
                cases.append([str(train_digits(Path(args.out), method, sparsity))])
    if not args.skip_wrn:
        cases.append(["--model", "wrn22_2", "--sparsity", "0.9", "--distribution", "erk"])
    status = 0
    for case in cases:
        for batch_size in batch_sizes:
            print(f"\n$ regrow bench-inference {' '.join(case)} --batch-size {batch_size} "
                  f"{' '.join(common)}", flush=True)  # fmt: skip
            status |= regrow_main(
                ["bench-inference", *case, "--batch-size", str(batch_size), *common]
            )
            sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
