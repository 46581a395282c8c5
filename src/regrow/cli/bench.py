"""``regrow bench-inference``: dense vs masked vs exported inference latency, side by side.

::

    regrow bench-inference runs/quickstart --batch-size 32      # a run: exported in memory
    regrow bench-inference exports/quickstart                    # an export directory
    regrow bench-inference --model wrn22_2 --sparsity 0.9        # random (Static, ERK) masks
    regrow bench-inference --model wrn22_2 --sparsity 0.9 --batch-size 32 --threads 1

What is measured and how: :mod:`regrow.export.bench`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from .common import UsageError, run_harness


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow bench-inference``."""
    from ..export import CSR_MODES
    from ..models import MODELS

    parser = subparsers.add_parser(
        "bench-inference",
        help="inference latency: dense vs masked vs exported model, side by side",
        description=(
            "Time the dense model (the same weights, masks removed), the masked model (as "
            "trained) and the exported inference model (regrow export) on the CPU, in "
            "interleaved rounds after a warm-up, under torch.inference_mode: median ms per "
            "batch, samples/s and the speed-up over dense, in one table. SOURCE is a run "
            "directory (exported in memory at --batch-size) or an export directory; or give "
            "--model (with random masks) instead."
        ),
    )
    parser.add_argument(
        "source", metavar="RUN_DIR|EXPORT", nargs="?", default=None, help="what to time"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="samples per batch (default 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument(
        "--csr", choices=CSR_MODES, default="auto", help="the export's CSR choice (default auto)"
    )
    spec = parser.add_argument_group("without a run: a registered model with random masks")
    spec.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)}")
    spec.add_argument("--sparsity", type=float, default=0.9, help="default 0.9")
    spec.add_argument("--width", type=float, default=1.0, help="default 1.0")
    spec.add_argument("--distribution", default="erk", help="uniform | er | erk (default erk)")
    spec.add_argument("--method", default="static", help="whose initial masks (default static)")
    spec.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run_bench)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """Handle ``regrow bench-inference``."""

    def work() -> int:
        import torch

        from ..export import export_model, load_export, load_run, random_masked_model
        from ..export.artifacts import is_export_dir
        from ..export.bench import describe_environment, format_table, measure, three_models
        from ..export.compress import size_report

        if (args.source is None) == (args.model is None):
            raise UsageError("give RUN_DIR or EXPORT, or --model NAME (one of them)")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size {args.batch_size}: allowed values are >= 1")
        if args.rounds < 1:
            raise UsageError(f"--rounds {args.rounds}: allowed values are >= 1")
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads {args.threads}: allowed values are >= 1")
            torch.set_num_threads(args.threads)
        note = None
        if args.model is not None:
            masked = random_masked_model(
                args.model, args.sparsity, args.width, args.distribution, args.seed, args.method
            )
            exported, report = export_model(
                masked.model, masked.input_shape, args.batch_size, args.csr
            )
            export = report.as_dict()
        elif is_export_dir(args.source):
            info, exported, masked = load_export(args.source)
            export = info["export"]
            if export["batch_size"] != args.batch_size:
                note = (
                    f"note: the export chose CSR-or-dense at batch size {export['batch_size']}, "
                    f"this measures batch size {args.batch_size}"
                )
        else:
            masked = load_run(args.source)
            exported, report = export_model(
                masked.model, masked.input_shape, args.batch_size, args.csr
            )
            export = report.as_dict()
        sizes = size_report(masked.model.state_dict())
        timings = measure(
            three_models(masked.model, exported),
            masked.input_shape,
            args.batch_size,
            rounds=args.rounds,
        )
        environment = describe_environment()
        csr = [layer["name"] for layer in export["layers"] if layer["format"] == "csr"]
        if args.json:
            result = {
                **masked.describe(),
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                **environment,
                "sizes": sizes,
                "csr_layers": csr,
                "removed_channels": export["removed_channels"],
                "export_model_ms": export.get("model_ms"),
                "timings": [asdict(t) for t in timings],
            }
            print(json.dumps(result))
            return 0
        sparsity = "" if masked.sparsity is None else f", sparsity {masked.sparsity:.3f}"
        print(
            f"regrow bench-inference: {masked.source} ({masked.name}, width {masked.width:g}"
            f"{sparsity}); batch {args.batch_size}, cpu, torch {environment['torch']}, "
            f"{environment['threads']} thread(s), {args.rounds} interleaved rounds"
        )
        print(
            f"checkpoint: compressed {sizes['compressed_bytes']:,} B vs dense fp32 "
            f"{sizes['dense_bytes']:,} B ({sizes['ratio']:.3f}x)"
        )
        removed = sum(export["removed_channels"].values())
        print(
            f"exported: CSR layers: {', '.join(csr) or 'none'}; neurons removed: {removed}"
            + (f" ({', '.join(f'{k} {v}' for k, v in export['removed_channels'].items())})"
               if removed else "")
        )  # fmt: skip
        if export.get("model_ms"):
            whole = export["model_ms"]
            print(
                f"export-time whole-model check: {whole['csr']:.4g} ms with the CSR layers its "
                f"per-layer timing picked, {whole['dense']:.4g} ms without"
                + ("" if csr else " (so: none)")
            )
        if note:
            print(note)
        print(format_table(timings))
        return 0

    return run_harness("bench-inference", work)
