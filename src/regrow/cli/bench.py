"""``regrow bench-inference``: dense vs masked vs exported inference latency, side by side.

::

    regrow bench-inference runs/rigl_s0 --batch-size 32         # a run: exported in memory
    regrow bench-inference exports/rigl_s0                       # an export directory
    regrow bench-inference --model wrn22_2 --sparsity 0.9        # random (Static, ERK) masks
    regrow bench-inference --model wrn22_2 --sparsity 0.9 --batch-size 32 --threads 1
    regrow bench-inference runs/charlm_srigl --compiled     # a language model: + its decode step

What is measured and how: :mod:`regrow.export.bench`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

from .common import UsageError, run_harness


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow bench-inference``."""
    from ..export import FORMAT_MODES
    from ..models import MODELS
    from ..sparsity.distributions import DISTRIBUTIONS
    from .export import add_format_arguments

    parser = subparsers.add_parser(
        "bench-inference",
        help="inference latency: dense vs masked vs exported model, side by side",
        description=(
            "Time the dense model (the same weights, masks removed), the masked model (as "
            "trained) and the exported inference model (regrow export) on the CPU, in "
            "interleaved rounds after a warm-up, under torch.inference_mode: median ms per "
            "batch, samples/s and the speed-up over dense, in one table; for a language model "
            "a second table times one decode step (one new token per sample, with a key/value "
            "cache). SOURCE is a run directory (exported in memory at --batch-size) or an "
            "export directory; or give --model (with random masks) instead."
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
    add_format_arguments(parser, FORMAT_MODES)
    spec = parser.add_argument_group("without a run: a registered model with random masks")
    spec.add_argument("--model", default=None, help=f"one of {', '.join(MODELS)}")
    spec.add_argument("--sparsity", type=float, default=0.9, help="default 0.9")
    spec.add_argument("--width", type=float, default=1.0, help="default 1.0")
    spec.add_argument(
        "--distribution", default="erk", help=f"{' | '.join(DISTRIBUTIONS)} (default erk)"
    )
    spec.add_argument("--method", default="static", help="whose initial masks (default static)")
    spec.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run_bench)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """Handle ``regrow bench-inference``: check the arguments, load or build the three models,
    time them side by side, print the report."""

    def work() -> int:
        from ..export.bench import describe_environment, measure, measure_decode, three_models
        from ..export.compress import size_report

        check_arguments(args)
        masked, exported, export, note = load_models(args)
        sizes = size_report(masked.model.state_dict())
        models = three_models(masked.model, exported)
        options = {"rounds": args.rounds, "compiled": args.compiled}
        timings = measure(models, masked.input_shape, args.batch_size, **options)
        decoding = None
        if hasattr(exported, "decode"):
            decoding = measure_decode(models, args.batch_size, **options)
        environment = describe_environment()
        report = BenchReport(masked, export, sizes, timings, decoding, environment, note)
        print(json.dumps(report.as_json(args)) if args.json else report.text(args))
        return 0

    return run_harness("bench-inference", work)


def check_arguments(args: argparse.Namespace) -> None:
    """One clear line for an argument out of range; sets the thread count when given."""
    import torch

    if (args.source is None) == (args.model is None):
        raise UsageError("give RUN_DIR or EXPORT, or --model NAME (one of them)")
    for flag, value in (("--batch-size", args.batch_size), ("--rounds", args.rounds)):
        if value < 1:
            raise UsageError(f"{flag} {value}: allowed values are >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads}: allowed values are >= 1")
        torch.set_num_threads(args.threads)


def load_models(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], str | None]:
    """The masked model and its export (from a model name, an export directory or a run
    directory), the export's description, and a note when an export was made for another
    batch size."""
    from ..export import export_model, load_export, load_run, random_masked_model
    from ..export.artifacts import is_export_dir

    if args.source is not None and is_export_dir(args.source):
        info, exported, masked = load_export(args.source)
        export = info["export"]
        note = None
        if export["batch_size"] != args.batch_size:
            note = (
                f"note: the export chose its layers' forms at batch size "
                f"{export['batch_size']}, this measures batch size {args.batch_size}"
            )
        return masked, exported, export, note
    if args.model is not None:
        masked = random_masked_model(
            args.model, args.sparsity, args.width, args.distribution, args.seed, args.method
        )
    else:
        masked = load_run(args.source)
    exported, report = export_model(
        masked.model, masked.input_shape, args.batch_size, args.formats, compiled=args.compiled
    )
    return masked, exported, report.as_dict(), None


@dataclass(frozen=True)
class BenchReport:
    """What ``regrow bench-inference`` prints (as text or as one JSON object)."""

    masked: Any
    export: dict[str, Any]
    sizes: dict[str, Any]
    timings: list[Any]
    decode_timings: list[Any] | None
    environment: dict[str, Any]
    note: str | None

    def sparse_layers(self, key: str = "layers") -> dict[str, str]:
        """Layer → form of the export's layers (``decode_layers``: its decode step's) not dense."""
        layers = self.export.get(key) or []
        return {layer["name"]: layer["format"] for layer in layers if layer["format"] != "dense"}

    def as_json(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            **self.masked.describe(),
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            **self.environment,
            "sizes": self.sizes,
            "compiled": args.compiled,
            "sparse_layers": self.sparse_layers(),
            "decode_sparse_layers": self.sparse_layers("decode_layers"),
            "removed_channels": self.export["removed_channels"],
            "export_model_ms": self.export.get("model_ms"),
            "export_decode_ms": self.export.get("decode_model_ms"),
            "timings": [asdict(t) for t in self.timings],
            "decode_timings": None
            if self.decode_timings is None
            else [asdict(t) for t in self.decode_timings],
        }

    def text(self, args: argparse.Namespace) -> str:
        from ..export.bench import format_table

        masked, export, sizes = self.masked, self.export, self.sizes
        sparsity = "" if masked.sparsity is None else f", sparsity {masked.sparsity:.3f}"
        removed = sum(export["removed_channels"].values())
        per_layer = ", ".join(f"{k} {v}" for k, v in export["removed_channels"].items())
        compiled = ", torch.compile" if args.compiled else ""
        lines = [
            f"regrow bench-inference: {masked.source} ({masked.name}, width {masked.width:g}"
            f"{sparsity}); batch {args.batch_size}, cpu, torch {self.environment['torch']}, "
            f"{self.environment['threads']} thread(s), {args.rounds} interleaved rounds"
            f"{compiled}",
            f"checkpoint: compressed {sizes['compressed_bytes']:,} B vs dense fp32 "
            f"{sizes['dense_bytes']:,} B ({sizes['ratio']:.3f}x)",
            f"exported: sparse layers: {_forms(self.sparse_layers())}; neurons removed: "
            f"{removed}" + (f" ({per_layer})" if removed else ""),
        ]
        lines += _whole_model_line(export.get("model_ms"), "whole-model")
        if self.note:
            lines.append(self.note)
        lines.append(format_table(self.timings))
        if self.decode_timings is not None:
            from ..export.decode import TIMED_CONTEXT

            decode_layers = self.sparse_layers("decode_layers")
            context = int(TIMED_CONTEXT * masked.input_shape[0])
            lines += [
                "",
                f"decode step: one new token per sample after {context} cached tokens "
                f"(key/value cache); sparse layers: {_forms(decode_layers)}",
            ]
            lines += _whole_model_line(export.get("decode_model_ms"), "decode-step")
            lines.append(format_table(self.decode_timings, decoding=True))
        return "\n".join(lines)


def _forms(layers: dict[str, str]) -> str:
    """``5 condensed, 2 csr`` (or ``none``)."""
    counts: dict[str, int] = {}
    for form in layers.values():
        counts[form] = counts.get(form, 0) + 1
    return ", ".join(f"{n} {form}" for form, n in counts.items()) or "none"


def _whole_model_line(timing: dict[str, float] | None, what: str) -> list[str]:
    if not timing:
        return []
    from ..export.inference import describe_whole_graph

    return [f"export-time {what} check: {describe_whole_graph(timing)}"]
