"""``regrow export RUN_DIR OUT``: the compressed checkpoint and the inference model of a run.

::

    regrow export runs/rigl_s0 exports/rigl_s0 --batch-size 32
    regrow export runs/quickstart/rigl_s0 exports/rigl_s0    # a run of the quickstart study

What OUT holds: :mod:`regrow.export.artifacts`; how the inference model is built:
:mod:`regrow.export.inference`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import run_harness


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow export``."""
    from ..export import FORMAT_MODES  # first: an extra missing fails before the parser exists

    parser = subparsers.add_parser(
        "export",
        help="write a run's compressed checkpoint and its inference model",
        description=(
            "Export a trained run for deployment. OUT gets compressed.pt (masks bit-packed, only "
            "active weights stored; regrow.export.load_compressed gives back the state_dict bit "
            "for bit), model.pt (a torch.fx GraphModule of plain PyTorch modules: dead neurons "
            "removed, batch norm folded where it follows a conv/linear, each sparse layer dense, "
            "CSR, condensed, ELL, embedding bag or BSR as timed fastest at --batch-size; a language "
            "model also gets its cached one-token decode step, model.decode; load it with "
            "torch.load(path, weights_only=False), eval mode only) and export.json (sizes, "
            "per-layer choices, the output check). What the rewrite does: docs/EXPORT.md."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a regrow run directory")
    parser.add_argument("out", metavar="OUT", help="the export directory (new, empty or an export)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="the batch size the layers' forms are timed at (default 1)",
    )
    add_format_arguments(parser, FORMAT_MODES)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads while timing (default: torch's)"
    )
    parser.add_argument(
        "--drop-zero-signs",
        action="store_true",
        help="store inactive weights as +0.0 (equal under torch.equal, not bit for bit): saves "
        "about one bit per inactive weight",
    )
    parser.set_defaults(handler=run_export)
    return parser


def _kib(size: int) -> str:
    return f"{size / 1024:,.1f} KiB ({size:,} bytes)"


def run_export(args: argparse.Namespace) -> int:
    """Handle ``regrow export``."""
    from ..export import export_run, load_run
    from ..export.artifacts import check_out_dir
    from ..export.inference import describe_whole_graph
    from ..train.checkpoint import resume_command

    def work() -> int:
        import torch

        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size}: allowed values are >= 1")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads {args.threads}: allowed values are >= 1")
            torch.set_num_threads(args.threads)
        check_out_dir(args.out, args.run_dir)  # before the (slow) export
        masked = load_run(args.run_dir)
        if masked.partial:  # what is exported is the last checkpoint, not a trained model
            at = "" if masked.step is None else f" at step {masked.step}"
            print(
                f"regrow export: warning: {masked.source} is partial: the run has not finished "
                f"({masked.state}); exporting its last checkpoint{at}; export.json says "
                f'"partial": true. Finish it with {resume_command(masked.source)} '
                "and export again for the trained model.",
                file=sys.stderr,
            )
        info, report = export_run(
            masked,
            args.out,
            args.batch_size,
            args.formats,
            zero_signs=not args.drop_zero_signs,
            compiled=args.compiled,
        )
        sizes = info["sizes"]
        sparsity = "" if masked.sparsity is None else f", sparsity {masked.sparsity:.3f}"
        print(f"regrow export: {masked.source} ({masked.name}, width {masked.width:g}{sparsity})")
        print(
            f"  compressed checkpoint {args.out}/compressed.pt: {_kib(sizes['compressed_bytes'])}"
        )
        print(f"  dense checkpoint (model weights, fp32):  {_kib(sizes['dense_bytes'])}")
        print(f"  ratio compressed/dense: {sizes['ratio']:.3f} ({1 / sizes['ratio']:.1f}x smaller)")
        print(
            f"  inference model {args.out}/model.pt (timed at batch size {args.batch_size}, "
            f"{report.threads} thread(s)):"
        )
        print(layer_table(report.layers))
        if report.decode_layers is not None:
            print(
                f"  its decode step (model.decode, one token per sample at batch {args.batch_size}):"
            )
            print(layer_table(report.decode_layers))
        folded = [layer.name for layer in report.layers if layer.folded_batch_norm]
        print(
            f"  batch norm: folded into {len(folded)} layer(s)"
            + (f" ({', '.join(folded)})" if folded else "")
            + "; any other batch norm is kept, in eval mode (running statistics)"
        )
        for what, timing in (
            ("whole model", report.model_ms),
            ("decode step", report.decode_model_ms),
        ):
            if timing is not None:
                print(f"  {what} at batch {args.batch_size}: {describe_whole_graph(timing)}")
        for name, (count, why) in report.kept_dead.items():
            print(f"  {name}: {count} dead output channel(s) kept at full size: {why}")
        print(f"  outputs match the masked model: max |difference| {report.max_abs_diff:.3g}")
        if report.decode_max_abs_diff is not None:
            print(
                "  decode step (prefix, then token by token) matches the masked model: max "
                f"|difference| {report.decode_max_abs_diff:.3g}"
            )
        return 0

    return run_harness("export", work)


def add_format_arguments(parser: argparse.ArgumentParser, modes: tuple[str, ...]) -> None:
    """``--formats`` (one of ``modes``) and ``--compiled``, shared by ``regrow export`` and
    ``bench-inference``."""
    parser.add_argument(
        "--formats",
        choices=modes,
        default="auto",
        help="auto: each sparse layer dense, CSR, condensed, ELL, embedding bag, BSR or "
        "semi-structured, whichever timed fastest (default); dense: none sparse; csr / condensed "
        "/ embedding_bag / bsr / semi_structured: every layer that can take that form (condensed: "
        "ELL where the fan-in varies; bsr: a weight in blocks; semi_structured: a 2:4 linear "
        "layer, on a CUDA device only)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="for a model that will run under torch.compile: the forms are timed compiled (the "
        "condensed form is fast only compiled; the export takes longer), and bench-inference "
        "compiles every model it times",
    )


def layer_table(layers: list[Any]) -> str:
    """One Markdown table of the exported layers: shape before → after, density, format."""
    rows = [
        "| layer | weight before | after | density | format | export timing ms |",
        "|---|---|---|---:|---|---|",
    ]
    for layer in layers:
        times = layer.times_ms or {}
        timing = " / ".join(f"{name} {ms:.4g}" for name, ms in times.items()) or "—"
        fmt = layer.format + (f" (+{layer.folded_batch_norm})" if layer.folded_batch_norm else "")
        rows.append(
            f"| {layer.name} | {'×'.join(map(str, layer.shape_before))} | "
            f"{'×'.join(map(str, layer.shape_after))} | {layer.density:.3f} | {fmt} | {timing} |"
        )
    return "\n".join(rows)
