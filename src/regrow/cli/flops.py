"""``regrow flops``: inference and training FLOPs of a configured run, in the train config's keys.

::

    regrow flops model.name=wrn22_2 sparsity.sparsity=0.8 sparsity.method=rigl
    regrow flops --model resnet50_imagenet 'sparsity.dense_layers=[]' train.multiplier=5 --json
    regrow flops --preset cifar10_wrn22_2 sparsity.method=pruning sparsity.args.delta_t=500
    regrow flops sparsity.sparsity=0.8 --match-flops uniform
    regrow flops sparsity.sparsity=0.9 --small-dense

The keys are validated exactly as ``regrow train`` validates them (:func:`regrow.train.load_config`),
so errors read the same; the report itself is :mod:`regrow.flops.query`.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from .common import UsageError, add_intermixed_parser, run_harness


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow flops``."""
    from ..models import MODELS
    from ..train import presets

    parser = add_intermixed_parser(
        subparsers,
        "flops",
        help="inference and training FLOPs of a sparse model (RigL paper conventions)",
        description=(
            "Per-layer and total inference FLOPs (MicroNet conventions, as the RigL paper counts them; docs/SPEC.md §7) of the model a "
            "run configures, and the method's training FLOPs as a multiple of 1x dense training. "
            "Configure it with the keys of `regrow train`: a --preset and key=value overrides, "
            "e.g. `regrow flops model.name=resnet50_imagenet sparsity.method=rigl "
            "sparsity.sparsity=0.8 sparsity.dense_layers=[] sparsity.args.delta_t=100 "
            "train.multiplier=5`. Runs are as long as the paper's for the model's dataset (CIFAR: "
            "97,656 steps; ImageNet: 32,000, pruning from 10,000 to 25,000), x train.multiplier."
        ),
    )
    parser.add_argument(
        "--preset", default=None, help=f"one of: {', '.join(presets())}, or a .yaml path"
    )
    parser.add_argument(
        "--model", default=None, help=f"short for model.name=...: one of {', '.join(MODELS)}"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="default: the model's")
    parser.add_argument(
        "--input-shape", default=None, help="one sample, e.g. 3,32,32 (default: the model's)"
    )
    parser.add_argument(
        "--total-steps",
        type=int,
        default=None,
        help="optimizer steps of the run, xM included (default: the paper's run for the "
        "model's dataset x train.multiplier)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--match-flops",
        metavar="DIST|RATIO",
        default=None,
        help=(
            "print the sparsity at which sparsity.distribution costs the inference FLOPs of "
            "distribution DIST at sparsity.sparsity (or RATIO x the dense FLOPs, e.g. 0.25)"
        ),
    )
    mode.add_argument(
        "--small-dense",
        action="store_true",
        help="print the width multiplier of the dense model with as many parameters as the "
        "sparse one keeps",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="train config keys, e.g. sparsity.sparsity=0.9",
    )
    parser.set_defaults(handler=run_flops)
    return parser


def run_flops(args: argparse.Namespace) -> int:
    """Handle ``regrow flops``; 0 on success, 2 on bad input."""

    def work() -> int:
        result, text = flops_report(args)
        print(json.dumps(result, indent=2) if args.json else text)
        return 0

    return run_harness("flops", work)


def _input_shape(value: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    try:  # every size given: "3,x,32" or "3,,32" is no shape, not (3, 32)
        shape = tuple(int(part) for part in re.split(r"[,x]", value))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(
            f"--input-shape {value!r} is not a shape: give every size of one sample as a "
            "positive integer, separated by commas or x, e.g. 3,32,32 or 3x32x32."
        )
    return shape


def _match(value: str) -> str | float:
    from ..sparsity.distributions import DISTRIBUTIONS, check_distribution

    try:
        ratio = float(value)
    except ValueError:
        try:
            return check_distribution(value)
        except ValueError:
            raise UsageError(
                f"--match-flops {value!r} is neither a distribution ({', '.join(DISTRIBUTIONS)}) "
                "nor a ratio of the dense FLOPs in (0, 1]."
            ) from None
    if not 0 < ratio <= 1:
        raise UsageError(f"--match-flops {value!r}: a ratio of the dense FLOPs must be in (0, 1].")
    return ratio


def flops_report(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The parsed command line as a :class:`~regrow.flops.query.FlopsQuery`, then its report."""
    from ..flops.query import InputShapeError
    from ..train import load_config
    from ..train.flops_query import NO_RUN_DIR, flops_query
    from ..train.flops_query import flops_report as report_of

    model = [f"model.name={args.model}"] if args.model else []
    config = load_config(args.preset, [NO_RUN_DIR, *model, *args.overrides])
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes!r}: allowed values are >= 1.")
    if args.total_steps is not None and args.total_steps < 1:
        raise UsageError(f"--total-steps {args.total_steps!r}: allowed values are >= 1.")
    match = None if args.match_flops is None else _match(args.match_flops)
    shape = None if args.input_shape is None else _input_shape(args.input_shape, ())
    query = flops_query(config, args.num_classes, shape, args.total_steps)
    try:
        return report_of(query, match, args.small_dense)
    except InputShapeError as exc:
        flag = "--input-shape" if args.input_shape else f"the input shape of {query.model_name}"
        raise UsageError(f"{flag}: {exc}") from None
