"""``regrow sweep``: every run of a study (a shipped one or a YAML file), on this machine's CPUs or
GPUs, or on SLURM through submitit; resumable. The study format is described in
docs/STUDIES.md, the sweep's behaviour in docs/SWEEP.md."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import UsageError, add_intermixed_parser, run_harness

if TYPE_CHECKING:
    from ..study.executors import Executor

#: ``--executor`` values: local processes (default) and the three submitit executors.
EXECUTORS = {
    "processes": "regrow train children on this machine (--workers / --gpus)",
    "slurm": "one submitit job array on SLURM",
    "submitit-local": "submitit's LocalExecutor (jobs as local processes)",
    "submitit-debug": "submitit's DebugExecutor (in this process)",
}


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow sweep``."""
    from ..study.schema import shipped_studies

    return _add(subparsers, shipped_studies())


def _add(subparsers: Any, studies: list[str]) -> argparse.ArgumentParser:
    parser = add_intermixed_parser(
        subparsers,
        "sweep",
        help="train every run of a study (a grid or an Optuna search), resumably",
        description=(
            "Train every run of STUDY (a shipped study: "
            f"{', '.join(studies)}; or a .yaml study file) over --preset into "
            "DIR/<run name>/ (default runs/<study>), writing DIR/study.json for `regrow report "
            "DIR`. Finished runs are skipped, interrupted ones resumed, failed ones retried with "
            "--retry-failed; runs another launcher holds are left to it. Trailing key=value "
            "overrides reach every run (a method argument such as sparsity.args.delta_t=50 only "
            "the runs whose method has it). Ctrl-C checkpoints the running runs; the same "
            "command continues. Exit status: 0 all done, 1 some failed, 2 bad input, "
            "130 interrupted. The study format: docs/STUDIES.md; the sweep (states, threads, GPUs, "
            "SLURM): docs/SWEEP.md."
        ),
    )
    parser.add_argument("study", metavar="STUDY_OR_FILE", help="a shipped study or a .yaml path")
    parser.add_argument("--preset", default=None, help="base preset (default: the study's)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 (default: the study's)"
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="study directory (runs/<study>)")
    parser.add_argument("--workers", type=int, default=None, help="runs at once on the CPU (1)")
    parser.add_argument(
        "--gpus", default=None, metavar="0,1,...|auto", help="one run per GPU at a time"
    )
    parser.add_argument(
        "--gpus-per-run", type=int, default=1, metavar="K", help="each run on K GPUs (torchrun)"
    )
    parser.add_argument(
        "--threads-per-run",
        type=int,
        default=None,
        metavar="T",
        help="OMP/MKL threads of every run (default: cores // runs at once)",
    )
    parser.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        default=None,
        help="; ".join(f"{k}: {v}" for k, v in EXECUTORS.items()),
    )
    parser.add_argument("--slurm", action="store_true", help="short for --executor slurm")
    parser.add_argument(
        "--slurm-local", action="store_true", help="short for --executor submitit-local"
    )
    _add_slurm_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print each run's state and a count line"
    )
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `regrow train ...` line per pending run, for another scheduler",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="launch failed runs again (resuming them)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for every run")
    parser.set_defaults(handler=run_sweep)
    return parser


def _add_slurm_options(parser: argparse.ArgumentParser) -> None:
    slurm = parser.add_argument_group("SLURM (through submitit; pip install 'regrow[slurm]')")
    slurm.add_argument("--slurm-partition", default=None)
    slurm.add_argument("--slurm-time", type=int, default=1440, metavar="MINUTES")
    slurm.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="N")
    slurm.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="N")
    slurm.add_argument("--slurm-mem-gb", type=int, default=None, metavar="GB")
    slurm.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N")
    slurm.add_argument("--slurm-account", default=None)
    slurm.add_argument("--slurm-qos", default=None)
    slurm.add_argument("--slurm-constraint", default=None)


def _executor_kind(args: argparse.Namespace) -> str:
    chosen = {args.executor} - {None}
    if args.slurm:
        chosen.add("slurm")
    if args.slurm_local:
        chosen.add("submitit-local")
    if len(chosen) > 1:
        raise UsageError(
            f"--executor/--slurm/--slurm-local disagree ({', '.join(sorted(chosen))})."
        )
    return chosen.pop() if chosen else "processes"


def _gpu_list(value: str | None, here: bool = True) -> list[str] | None:
    """``--gpus``'s ids; ``here``: refused when this machine has no GPU (the runs would train on
    the CPU), as ``auto`` is."""
    if value is None:
        return None
    if value != "auto":
        ids = [part.strip() for part in value.split(",") if part.strip()]
        if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
            raise UsageError(
                f"--gpus {value!r}: allowed values are auto or distinct ids, e.g. 0,1."
            )
        if not here:
            return ids
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise UsageError(
            f"--gpus {value}: no GPU is visible here (torch sees no CUDA device); drop --gpus to "
            "run on the CPU."
        )
    return ids if value != "auto" else [str(i) for i in range(count)]


def check_options(args: argparse.Namespace, here: bool = True) -> tuple[str, list[str] | None]:
    """The executor kind and the GPU ids, every option checked as the sweep checks it (``here``:
    the GPUs must be visible on this machine; not for ``--print-commands``)."""
    for flag in ("workers", "gpus_per_run", "threads_per_run", "seeds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(
                f"--{flag.replace('_', '-')} {value}: allowed values are integers >= 1."
            )
    kind = _executor_kind(args)
    if kind != "processes":
        if args.gpus or args.workers is not None:
            raise UsageError(f"--workers/--gpus are for local processes, not --executor {kind}.")
        return kind, None
    gpus = _gpu_list(args.gpus, here)
    if gpus and args.workers is not None:
        raise UsageError("--workers and --gpus: give one (with --gpus, one run per GPU group).")
    if args.gpus_per_run > 1 and not gpus:
        raise UsageError("--gpus-per-run needs --gpus (the GPUs to share out).")
    if gpus and len(gpus) < args.gpus_per_run:
        raise UsageError(
            f"--gpus-per-run {args.gpus_per_run} needs at least that many GPUs (--gpus {args.gpus})."
        )
    return kind, gpus


def make_executor(args: argparse.Namespace, out_dir: str) -> Executor:
    """The executor the command line asks for (:mod:`regrow.study.executors`)."""
    from ..study.executors import LocalExecutor
    from ..study.submitit_executor import SubmititExecutor

    kind, gpus_here = check_options(args)
    if kind == "processes":
        return LocalExecutor(args.workers or 1, gpus_here, args.gpus_per_run, args.threads_per_run)
    if args.gpus or args.workers is not None:
        raise UsageError(f"--workers/--gpus are for local processes, not --executor {kind}.")
    gpus = args.slurm_gpus_per_node
    parameters: dict[str, Any] = {
        "timeout_min": args.slurm_time,
        "nodes": 1,
        "tasks_per_node": 1,
        "name": f"regrow-{Path(out_dir).name}",
    }
    optional = {
        "gpus_per_node": gpus,
        "cpus_per_task": args.slurm_cpus_per_task,
        "mem_gb": args.slurm_mem_gb,
        "slurm_partition": args.slurm_partition,
        "slurm_array_parallelism": args.slurm_array_parallelism,
        "slurm_account": args.slurm_account,
        "slurm_qos": args.slurm_qos,
        "slurm_constraint": args.slurm_constraint,
    }
    parameters |= {k: v for k, v in optional.items() if v is not None}
    cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[kind]
    return SubmititExecutor(
        Path(out_dir) / ".submitit",
        cluster,
        parameters,
        nproc=gpus if gpus and gpus > 1 else 1,
        threads_per_run=args.threads_per_run,
    )


def continue_command(args: argparse.Namespace, out_dir: str) -> str:
    """The command line that continues this sweep."""
    words = ["regrow", "sweep", args.study, "--out", out_dir]
    for flag in ("preset", "seeds", "workers", "gpus", "threads_per_run", "executor"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    if args.gpus_per_run != 1:
        words += ["--gpus-per-run", str(args.gpus_per_run)]
    words += ["--slurm"] * args.slurm + ["--slurm-local"] * args.slurm_local
    return shlex.join([*words, *args.overrides])


def run_sweep(args: argparse.Namespace) -> int:
    """Handle ``regrow sweep``."""

    def work() -> int:
        if args.dry_run and args.print_commands:
            raise UsageError(
                "--dry-run and --print-commands: give one (--dry-run prints each run's state, "
                "--print-commands the commands of the pending runs)."
            )
        from ..study import sweep
        from ..study.planning import plan_runs
        from ..study.schema import load_study

        study = load_study(args.study)
        if args.seeds is not None and args.seeds < 1:
            raise UsageError(f"--seeds {args.seeds}: allowed values are integers >= 1.")
        plan = plan_runs(study, args.preset, args.seeds, args.overrides, args.out)
        if study.search is not None:
            from ..study import search

            if args.print_commands:
                raise UsageError(
                    f"--print-commands: study {study.name} is a search, whose trials are drawn "
                    "from the finished ones; run it with regrow sweep (or drop its search: section)."
                )
            if args.dry_run:
                check_options(args)
                sweep.check_study_dir(plan)
                print(search.dry_run(plan), end="")
                return 0
            executor = make_executor(args, plan.out_dir)
            return search.run_search(plan, executor, continue_command(args, plan.out_dir))
        if args.dry_run:
            check_options(args)
            sweep.check_existing(plan)
            print(sweep.dry_run(plan), end="")
            return 0
        if args.print_commands:
            check_options(args, here=False)
            sweep.check_existing(plan)
            nproc = args.gpus_per_run if args.gpus else (args.slurm_gpus_per_node or 1)
            print(sweep.print_commands(plan, args.retry_failed, nproc), end="")
            return 0
        executor = make_executor(args, plan.out_dir)
        return sweep.run_sweep(
            plan, executor, args.retry_failed, continue_command(args, plan.out_dir)
        )

    return run_harness("sweep", work)
