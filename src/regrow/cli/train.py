"""``regrow train``: one run from a preset and dotted overrides, or the resume of one."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .common import UsageError, add_intermixed_parser, run_harness


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow train``."""
    from ..train import presets

    parser = add_intermixed_parser(
        subparsers,
        "train",
        help="train one model (a preset plus key=value overrides), or resume a run",
        description=(
            "Train one run. Start from --preset, then apply dotted key=value overrides, e.g. "
            "`regrow train --preset cifar10_wrn22_2 sparsity.method=set sparsity.sparsity=0.9 "
            "seed=1 out_dir=runs/set_s1`. The run directory gets config.yaml, provenance.jsonl, "
            "metrics.jsonl, checkpoint.pt and summary.json (failed.json after an error). "
            "SIGINT/SIGTERM write a checkpoint and exit 130/143; `regrow train --resume RUN_DIR` "
            "continues it, writing into RUN_DIR only (a copied run directory resumes into the "
            "copy); a finished run is left as it is. One process at a time trains in a run "
            "directory (it holds RUN_DIR/.lock). Exit status: 0 finished (or stopped at "
            "train.stop_at_step), 2 bad input or an unusable run directory, 3 non-finite loss, "
            "130 SIGINT, 143 SIGTERM. The run directory's files, states, metric names and exit "
            "statuses: docs/RUN_DIR.md."
        ),
    )
    parser.add_argument(
        "--preset",
        default=None,
        help=f"one of: {', '.join(presets())}, or a .yaml path; several, comma-separated, are "
        "merged left to right (a base and a recipe: quickstart,lottery)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", default=None, help="continue this run, in this directory"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the config, each key with its description, and exit",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.set_defaults(handler=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Handle ``regrow train``."""
    from ..train import load_config, train
    from ..train.loop import STOP_STATUS
    from ..train.rundir import RESUME_OVERRIDABLE, RunDir

    def work() -> int:
        if args.resume:
            allowed = [o for o in args.overrides if o.split("=")[0] in RESUME_OVERRIDABLE]
            if args.preset or len(allowed) != len(args.overrides):
                raise UsageError(
                    "--resume takes the run's own config.yaml: drop --preset and every override "
                    f"but {', '.join(RESUME_OVERRIDABLE)} (start a new out_dir to change the "
                    "configuration)."
                )
            config = load_config(str(RunDir(args.resume).config_file()), allowed)
            # The run directory is self-contained: it is where this run continues, whatever
            # out_dir its config.yaml recorded (a copy, or a relative path from elsewhere).
            config = dataclasses.replace(config, out_dir=args.resume)
        else:
            config = load_config(args.preset, args.overrides)
        if args.print_config:
            print(described_yaml(config), end="")
            return 0
        summary = train(config, resume=bool(args.resume))
        if summary["status"] != "finished":
            return STOP_STATUS[summary["reason"]]
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

    return run_harness("train", work)


#: Comments start at this column at most (longer lines put theirs two spaces after the value).
COMMENT_COLUMN = 36


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (lists and mappings in flow style)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def described_yaml(config: Any) -> str:
    """The config as YAML, each key with its one-line description as a comment, the method's own
    arguments resolved with their defaults under ``sparsity.args``; loadable as a preset."""
    from omegaconf import OmegaConf

    from ..train.config import descriptions

    tree = OmegaConf.to_container(OmegaConf.structured(config))
    assert isinstance(tree, dict)
    method = config.sparsity.method_class()
    tree["sparsity"]["args"] = config.sparsity.method_args().as_dict()
    helps = descriptions()
    helps["sparsity.args"] += f" (here {method.name}'s, defaults filled in)"
    helps |= {f"sparsity.args.{k}": v for k, v in method.Args.describe().items()}

    rows: list[tuple[str, str]] = []

    def walk(node: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in node.items():
            name = prefix + str(key)
            section = isinstance(value, dict) and name not in helps
            if section or (name == "sparsity.args" and value):
                rows.append((f"{indent}{key}:", helps.get(name, "")))
                walk(value, name + ".", indent + "  ")
            else:
                rows.append((f"{indent}{key}: {_flow(value)}", helps.get(name, "")))

    walk(tree, "", "")
    width = min(COMMENT_COLUMN, max(len(text) for text, help in rows if help))
    return "".join(
        f"{text.ljust(width)}  # {help}\n" if help else f"{text}\n" for text, help in rows
    )
