"""The ``regrow`` command line: one subcommand per function pair ``add_<name>_parser`` /
``run_<name>``, wired together in :func:`build_parser`.

``regrow flops`` prints a model's per-layer and total inference FLOPs at a sparsity and
distribution, and the training cost of a method relative to dense training (SPEC §7)::

    regrow flops --model wrn22_2 --sparsity 0.8 --distribution erk --method rigl
    regrow flops --model resnet50_imagenet --sparsity 0.8 --distribution erk --method rigl \\
        --multiplier 5 --dense-layers none --json
    regrow flops --model wrn22_2 --sparsity 0.8 --distribution erk --match-flops uniform
    regrow flops --model wrn22_2 --sparsity 0.8 --distribution erk --small-dense

Bad input prints what was wrong and the allowed values on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .flops import (
    PruningSchedule,
    flops_at_sparsity,
    kept_parameter_count,
    matching_sparsity,
    parameter_count,
    profile_model,
    pruning_mean_flops,
    small_dense_width,
    train_flops_per_sample,
)
from .models import MODELS, get_model_spec
from .sparsity import METHODS, get_method
from .sparsity.distributions import (
    DISTRIBUTIONS,
    check_distribution,
    check_sparsity,
    layer_densities,
)
from .sparsity.plan import AllocationPlan

__all__ = [
    "UsageError",
    "add_flops_parser",
    "add_quickstart_parser",
    "add_train_parser",
    "build_parser",
    "main",
    "run_flops",
    "run_quickstart",
    "run_train",
]

#: Gradual-pruning schedules per dataset: (total steps, begin, end, every). CIFAR: the paper's run
#: (SPEC §5). ImageNet: the schedule of the RigL authors' ResNet-50 FLOP count (32,000 steps at
#: batch 4,096, pruning from 10,000 to 25,000 every 1,000; Gale et al. 2019 via the official
#: counting notebook).
PRUNING_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "cifar": (97_656, 20_000, 75_000, 1_000),
    "imagenet": (32_000, 10_000, 25_000, 1_000),
}


class UsageError(ValueError):
    """Bad command-line input; the message names the input and the allowed values."""


def build_parser() -> argparse.ArgumentParser:
    """The ``regrow`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="regrow",
        description="Sparse training for PyTorch: RigL and its baselines, exact to the paper.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_train_parser(subparsers)
    add_quickstart_parser(subparsers)
    add_flops_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``regrow`` / ``python -m regrow``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(args.handler(args))


# ---------------------------------------------------------------------------------------- train


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow train``."""
    from .train import presets

    parser = subparsers.add_parser(
        "train",
        help="train one model (a preset plus key=value overrides), or resume a run",
        description=(
            "Train one run. Start from --preset, then apply dotted key=value overrides, e.g. "
            "`regrow train --preset cifar10_wrn22_2 sparsity.method=set sparsity.sparsity=0.9 "
            "seed=1 out_dir=runs/set_s1`. The run directory gets config.yaml, provenance.json, "
            "metrics.jsonl, checkpoint.pt and summary.json. SIGINT/SIGTERM write a checkpoint; "
            "`regrow train --resume RUN_DIR` continues it."
        ),
    )
    parser.add_argument(
        "--preset", default=None, help=f"one of: {', '.join(presets())}, or a .yaml path"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue this run")
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(handler=run_train)
    return parser


def _run_harness(command: str, work: Any) -> int:
    """Run ``work()`` and map the harness's errors to exit statuses with one clear line."""
    from .train import CheckpointError, ConfigError, NonFiniteLossError

    try:
        return int(work())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"regrow {command}: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"regrow {command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:
        print(f"regrow {command}: interrupted {exc}", file=sys.stderr)
        return 130


def run_train(args: argparse.Namespace) -> int:
    """Handle ``regrow train``."""
    from .train import load_config, train
    from .train.checkpoint import RESUME_OVERRIDABLE
    from .train.config import to_yaml

    def work() -> int:
        if args.resume:
            allowed = [o for o in args.overrides if o.split("=")[0] in RESUME_OVERRIDABLE]
            if args.preset or len(allowed) != len(args.overrides):
                raise UsageError(
                    "--resume takes the run's own config.yaml: drop --preset and every override "
                    f"but {', '.join(RESUME_OVERRIDABLE)} (start a new out_dir to change the "
                    "configuration)."
                )
            path = Path(args.resume) / "config.yaml"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {args.resume} is not a run directory.")
            config = load_config(str(path), allowed)
        else:
            config = load_config(args.preset, args.overrides)
        if args.print_config:
            print(to_yaml(config), end="")
            return 0
        summary = train(config, resume=bool(args.resume))
        if summary["status"] != "finished":
            return 0 if config.train.stop_at_step == summary["step"] else 130
        keys = (
            "method",
            "sparsity",
            "test_accuracy",
            "inference_flops_ratio",
            "train_flops_ratio",
            "wall_seconds",
        )
        print(json.dumps({key: summary.get(key) for key in keys}))
        return 0

    return _run_harness("train", work)


# ----------------------------------------------------------------------------------- quickstart


def add_quickstart_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow quickstart``."""
    parser = subparsers.add_parser(
        "quickstart",
        help="Dense, Static, SET and RigL on the bundled digits over 3 seeds (about a minute)",
        description=(
            "Train Dense, Static, SET and RigL (ERK, sparsity 0.97) on scikit-learn's bundled digits "
            "over --seeds seeds, print a table (accuracy mean ± std, inference and training FLOPs "
            "x dense) and write accuracy.png, results.md and results.json to --out-dir. Finished "
            "runs are reused and interrupted ones resumed when the command is run again."
        ),
    )
    parser.add_argument("--out-dir", default="runs/quickstart")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run"
    )
    parser.set_defaults(handler=run_quickstart)
    return parser


def run_quickstart(args: argparse.Namespace) -> int:
    """Handle ``regrow quickstart``."""
    from .experiments.quickstart import run_quickstart as quickstart

    def work() -> int:
        if args.seeds < 1:
            raise UsageError(f"--seeds {args.seeds}: allowed values are integers >= 1.")
        print(quickstart(args.out_dir, args.seeds, args.overrides), end="")
        print(f"plot: {Path(args.out_dir) / 'accuracy.png'}")
        return 0

    return _run_harness("quickstart", work)


# ---------------------------------------------------------------------------------------- flops


def add_flops_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow flops``."""

    parser = subparsers.add_parser(
        "flops",
        help="inference and training FLOPs of a sparse model (RigL paper conventions)",
        description=(
            "Per-layer and total inference FLOPs (MicroNet conventions, SPEC §7) of a registered "
            "model at a global sparsity and distribution, and the training FLOPs of a method as "
            "a multiple of dense training."
        ),
    )
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    parser.add_argument(
        "--sparsity", type=float, default=None, help="global sparsity S in [0, 1) (not for dense)"
    )
    parser.add_argument(
        "--distribution", default="erk", help=f"one of: {', '.join(DISTRIBUTIONS)} (default erk)"
    )
    parser.add_argument(
        "--method", default="rigl", help=f"one of: {', '.join(sorted(METHODS))} (default rigl)"
    )
    parser.add_argument(
        "--multiplier", type=float, default=1.0, help="train M times longer (RigL_5x: 5)"
    )
    parser.add_argument(
        "--delta-t", type=int, default=100, help="RigL mask-update interval ΔT (default 100)"
    )
    parser.add_argument(
        "--dense-layers",
        default=None,
        help=(
            "comma-separated layers kept dense (module/parameter names or globs), or 'none' to "
            "make every conv/linear layer sparse; default: the first layer dense"
        ),
    )
    parser.add_argument("--erk-power", type=float, default=1.0, help="ERK exponent (default 1)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the model's")
    parser.add_argument(
        "--input-shape", default=None, help="one sample, e.g. 3,32,32 (default: the model's)"
    )
    schedule = parser.add_argument_group(
        "pruning schedule (default: the paper's for the model's dataset, x multiplier)"
    )
    schedule.add_argument("--total-steps", type=int, default=None)
    schedule.add_argument("--prune-begin", type=int, default=None)
    schedule.add_argument("--prune-end", type=int, default=None)
    schedule.add_argument("--prune-every", type=int, default=None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--match-flops",
        metavar="DIST|RATIO",
        default=None,
        help=(
            "print the sparsity at which --distribution costs the inference FLOPs of distribution "
            "DIST at --sparsity (or RATIO x the dense FLOPs, e.g. 0.25)"
        ),
    )
    mode.add_argument(
        "--small-dense",
        action="store_true",
        help="print the width multiplier of the dense model with as many parameters as the "
        "sparse one keeps",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_flops)
    return parser


def run_flops(args: argparse.Namespace) -> int:
    """Handle ``regrow flops``; 0 on success, 2 on bad input."""
    try:
        result, text = _flops(args)
    except (UsageError, ValueError) as exc:
        print(f"regrow flops: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(text)
    return 0


def _parse_input_shape(value: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    try:
        shape = tuple(int(part) for part in value.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(
            f"--input-shape {value!r} is not a shape: give positive sizes of one sample, "
            "e.g. 3,32,32."
        )
    return shape


def _dense_layers(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


class _Setup:
    """Everything the flops modes share: model, profile, sparse tensors, densities."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.spec = get_model_spec(args.model)
        self.method = get_method(args.method).name
        self.distribution = check_distribution(args.distribution)
        if args.sparsity is None:
            if self.method != "dense" or args.small_dense or args.match_flops:
                raise UsageError(
                    f"--sparsity is required for --method {self.method}: give a value in [0, 1)."
                )
            self.sparsity = 0.0
        else:
            self.sparsity = check_sparsity(args.sparsity, "--sparsity")
        if not args.multiplier > 0:
            raise UsageError(f"--multiplier {args.multiplier!r}: allowed values are > 0.")
        if args.delta_t < 1:
            raise UsageError(f"--delta-t {args.delta_t!r}: allowed values are integers >= 1.")
        if args.num_classes is not None and args.num_classes < 1:
            raise UsageError(f"--num-classes {args.num_classes!r}: allowed values are >= 1.")
        self.num_classes = args.num_classes or self.spec.num_classes
        self.input_shape = _parse_input_shape(args.input_shape, self.spec.input_shape)
        self.power = args.erk_power
        self.model = self.build(1.0)
        try:
            self.sparse_names = AllocationPlan.build(
                self.model, dense_layers=_dense_layers(args.dense_layers)
            ).names
        except ValueError as exc:
            raise UsageError(f"--dense-layers {args.dense_layers!r}: {exc}") from exc
        params = dict(self.model.named_parameters())
        self.shapes = {name: tuple(params[name].shape) for name in self.sparse_names}
        try:
            self.profile = profile_model(self.model, self.input_shape)
        except ValueError as exc:
            raise UsageError(f"--input-shape: {exc}") from exc
        self.densities = self.densities_at(self.sparsity, self.distribution)

    def build(self, width: float) -> nn.Module:
        with torch.device("meta"):
            return self.spec(num_classes=self.num_classes, width=width)

    def densities_at(self, sparsity: float, distribution: str) -> dict[str, float]:
        return layer_densities(self.shapes, sparsity, distribution, self.power)

    def header(self) -> str:
        kept = ", ".join(self.dense_layer_names()) or "none"
        return (
            f"model {self.spec.name} (input {'x'.join(map(str, self.input_shape))}, "
            f"{self.num_classes} classes); {self.distribution} at sparsity {self.sparsity:g}; "
            f"dense conv/linear layers: {kept}"
        )

    def dense_layer_names(self) -> list[str]:
        return [layer.name for layer in self.profile.layers if layer.name not in self.shapes]

    def base_json(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "erk_power": self.power,
            "dense_layers": self.dense_layer_names(),
        }


def _flops(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    setup = _Setup(args)
    if args.match_flops is not None:
        return _match_flops(setup, args.match_flops)
    if args.small_dense:
        return _small_dense(setup)
    return _train_flops(setup, args)


def _small_dense_solution(setup: _Setup) -> tuple[float, int, int, nn.Module]:
    target = kept_parameter_count(setup.model, setup.densities)
    width = small_dense_width(setup.build, target)
    small = setup.build(width)
    return width, target, parameter_count(small), small


def _small_dense(setup: _Setup) -> tuple[dict[str, Any], str]:
    width, target, params, small = _small_dense_solution(setup)
    small_flops = profile_model(small, setup.input_shape).dense_flops
    dense_flops = setup.profile.dense_flops
    result = {
        **setup.base_json(),
        "width": width,
        "target_params": target,
        "small_dense_params": params,
        "dense_params": parameter_count(setup.model),
        "dense_inference_flops": dense_flops,
        "small_dense_inference_flops": small_flops,
        "inference_ratio": small_flops / dense_flops,
    }
    text = "\n".join(
        [
            setup.header(),
            f"the sparse model keeps {target:,} parameters (active sparse weights + every "
            f"dense parameter) of {result['dense_params']:,}",
            f"Small-Dense width multiplier: {width:.4f} -> {params:,} parameters "
            f"({params / target - 1:+.3%} vs target)",
            f"Small-Dense inference FLOPs: {small_flops:.4e} "
            f"({small_flops / dense_flops:.4f}x dense)",
        ]
    )
    return result, text


def _match_flops(setup: _Setup, other: str) -> tuple[dict[str, Any], str]:
    dense_flops = setup.profile.dense_flops
    try:
        ratio = float(other)
    except ValueError:
        try:
            reference = check_distribution(other)
        except ValueError as exc:
            raise UsageError(
                f"--match-flops {other!r} is neither a distribution "
                f"({', '.join(DISTRIBUTIONS)}) nor a ratio of the dense FLOPs in (0, 1]."
            ) from exc
        target = flops_at_sparsity(
            setup.profile, setup.shapes, setup.sparsity, reference, setup.power
        )
        described = f"{reference} at sparsity {setup.sparsity:g}"
    else:
        if not 0 < ratio <= 1:
            raise UsageError(
                f"--match-flops {other!r}: a ratio of the dense FLOPs must be in (0, 1]."
            )
        reference, target = None, ratio * dense_flops
        described = f"{ratio:g}x the dense model"
    matched = matching_sparsity(
        setup.profile, setup.shapes, target, setup.distribution, setup.power
    )
    achieved = flops_at_sparsity(
        setup.profile, setup.shapes, matched, setup.distribution, setup.power
    )
    result = {
        **setup.base_json(),
        "reference": reference,
        "target_inference_flops": target,
        "matched_sparsity": matched,
        "inference_flops": achieved,
        "dense_inference_flops": dense_flops,
        "inference_ratio": achieved / dense_flops,
    }
    text = (
        f"{setup.header()}\n"
        f"{setup.distribution} at sparsity {matched:.6f} costs {achieved:.4e} inference FLOPs "
        f"({achieved / dense_flops:.4f}x dense), the same as {described} ({target:.4e})"
    )
    return result, text


def _pruning_schedule(setup: _Setup, args: argparse.Namespace) -> PruningSchedule:
    preset = PRUNING_PRESETS["imagenet" if setup.spec.dataset == "imagenet" else "cifar"]
    total, begin, end, every = (
        round(value * args.multiplier) if index < 3 else value for index, value in enumerate(preset)
    )
    given = (args.total_steps, args.prune_begin, args.prune_end, args.prune_every)
    values = [
        default if value is None else value
        for value, default in zip(given, (total, begin, end, every), strict=True)
    ]
    try:
        return PruningSchedule(*values)
    except ValueError as exc:
        raise UsageError(str(exc).replace("pruning schedule", "--total-steps/--prune-*:")) from exc


def _train_flops(setup: _Setup, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    dense_flops = setup.profile.dense_flops
    extra: dict[str, Any] = {}
    if setup.method == "dense":
        report = setup.profile.report(None)
        mean_flops = report.inference_flops
    elif setup.method == "small_dense":
        width, target, params, small = _small_dense_solution(setup)
        report = profile_model(small, setup.input_shape).report(None)
        mean_flops = report.inference_flops
        extra = {"width": width, "target_params": target, "small_dense_params": params}
    else:
        report = setup.profile.report(setup.densities)
        mean_flops = report.inference_flops
        if setup.method == "pruning":
            schedule = _pruning_schedule(setup, args)
            mean_flops = pruning_mean_flops(setup.profile, setup.densities, schedule)
            extra = {
                "pruning_schedule": {
                    "total_steps": schedule.total_steps,
                    "begin": schedule.begin,
                    "end": schedule.end,
                    "every": schedule.every,
                },
                "mean_inference_flops": mean_flops,
            }
    per_sample = train_flops_per_sample(setup.method, mean_flops, dense_flops, args.delta_t)
    train_ratio = args.multiplier * per_sample / (3.0 * dense_flops)
    inference = report.inference_flops
    result = {
        **setup.base_json(),
        "method": setup.method,
        "multiplier": args.multiplier,
        "delta_t": args.delta_t,
        **extra,
        "dense_inference_flops": dense_flops,
        "inference_flops": inference,
        "inference_ratio": inference / dense_flops,
        "train_flops_per_sample": args.multiplier * per_sample,
        "dense_train_flops_per_sample": 3.0 * dense_flops,
        "train_ratio": train_ratio,
        "layers": [layer.as_dict() for layer in report.layers],
    }
    method = setup.method + (f" (delta_t={args.delta_t})" if setup.method == "rigl" else "")
    lines = [f"{setup.header()}; method {method}, x{args.multiplier:g}"]
    if "width" in extra:
        lines.append(
            f"Small-Dense width multiplier {extra['width']:.4f} "
            f"({extra['small_dense_params']:,} parameters)"
        )
    if "pruning_schedule" in extra:
        s = extra["pruning_schedule"]
        lines.append(
            f"pruning every {s['every']} steps from {s['begin']} to {s['end']} "
            f"of {s['total_steps']}; mean inference FLOPs over the run "
            f"{mean_flops:.4e} ({mean_flops / dense_flops:.4f}x)"
        )
    lines += [
        report.table(totals=False),
        f"dense inference FLOPs:      {dense_flops:.4e}",
        f"inference FLOPs:            {inference:.4e}  ({inference / dense_flops:.4f}x dense)",
        f"training FLOPs per sample:  {args.multiplier * per_sample:.4e}  "
        f"({train_ratio:.4f}x dense training)",
    ]
    return result, "\n".join(lines)
