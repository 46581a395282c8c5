"""The Optuna form of a study (``search:``; ``pip install "regrow[search]"``): one Optuna study per
outer point of the grid, each trial one ``regrow train`` run per seed, launched by the sweep's
executors (:mod:`regrow.study.executors`).

Storage: ``DIR/optuna.journal``, Optuna's ``JournalStorage`` over a file, one Optuna study per
outer point (named by the point's run name). Running the command again continues: finished
trials (complete or failed) count toward ``search.trials``; a trial left running by an interrupted
sweep is picked up with the parameters it was given and its runs are resumed (never re-sampled).
Trial runs are ``DIR/<point>_trial<NNN>_seed<S>/``. A trial's value is the mean of the summary
metric ``search.metric`` over its seeds, maximized or minimized as ``search.direction`` says (by
default the metric's own direction, :mod:`regrow.study.direction`: ``minimize`` for bits per
character and losses); a trial whose run failed is told to Optuna as failed.
One launcher at a time drives a search (it holds ``DIR/.search.lock``; a second stops with exit
status 2). ``DIR/study.json`` lists the trial runs so far and, under ``"search"``, every trial's
parameters, state and value per point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..train.config import ConfigError
from ..train.rundir import RunDir
from .executors import Executor, RunOutcome, SweepProgress, sweep_state
from .planning import RunSpec, StudyPlan, render_value, run_config
from .schema import SearchSpace, StudyError
from .sweep import check_study_dir, write_study_json

__all__ = ["JOURNAL_FILE", "LOCK_FILE", "dry_run", "run_search", "trial_runs"]

#: Optuna's journal, in the study directory.
JOURNAL_FILE = "optuna.journal"
#: Held by the one launcher driving the search.
LOCK_FILE = ".search.lock"


def _optuna() -> Any:
    import optuna  # optional (the search extra); the CLI names the extra when it is missing

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distribution(optuna: Any, space: SearchSpace) -> Any:
    d = optuna.distributions
    if space.choices is not None:
        return d.CategoricalDistribution(list(space.choices))
    if space.integer:
        return d.IntDistribution(
            int(space.low), int(space.high), log=space.log, step=int(space.step or 1)
        )
    return d.FloatDistribution(float(space.low), float(space.high), log=space.log, step=space.step)


def _storage(optuna: Any, out_dir: str) -> Any:
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend as Backend
    except ImportError:  # Optuna < 4
        from optuna.storages import JournalFileStorage as Backend  # type: ignore[no-redef]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return JournalStorage(Backend(str(Path(out_dir) / JOURNAL_FILE)))


def _sampler(optuna: Any, name: str, seed: int) -> Any:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


@contextlib.contextmanager
def _search_lock(out_dir: str) -> Iterator[None]:
    """Hold ``DIR/.search.lock`` (one launcher per search)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "?"
            raise StudyError(
                f"{out_dir} is searched by another regrow sweep now (pid {holder}): wait for it, "
                "or stop it and run this command again to continue."
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode())
        yield
    finally:
        os.close(descriptor)


def trial_runs(
    plan: StudyPlan, point: RunSpec, number: int, params: dict[str, Any]
) -> list[RunSpec]:
    """The runs of trial ``number`` of ``point``: one per seed, validated."""
    runs = []
    assign = [f"{k}={render_value(v)}" for k, v in params.items()]
    for seed in plan.seeds:
        name = f"{point.name}_trial{number:03d}_seed{seed}"
        path = str(Path(plan.out_dir) / name)
        overrides = (*point.overrides, *assign, f"seed={seed}", f"out_dir={path}")
        try:
            run_config(plan.study, plan.preset, list(overrides), name)
        except ConfigError as error:
            raise StudyError(str(error)) from None
        run_params = {**point.params, **params, "trial": number, "seed": seed}
        runs.append(RunSpec(name, overrides, run_params, path, {"search_point": point.name}))
    return runs


def _probe(plan: StudyPlan) -> None:
    """Validate every point with each searched key at its ends (every choice), and that the
    metric can be measured, before anything trains."""
    search = plan.study.search
    assert search is not None
    for point in plan.runs:
        for space in search.space:
            for value in space.probe_values():
                item = f"{space.key}={render_value(value)}"
                run_config(
                    plan.study, plan.preset, [*point.overrides, item, "out_dir=x"], point.name
                )
        config = plan.configs[point.name]
        if search.metric.startswith("val_") and config.data.validation_size == 0:
            test = "test_" + search.metric[len("val_") :]
            raise StudyError(
                f"study {plan.study.source}: search.metric {search.metric} needs a validation "
                "split, and data.validation_size is 0: add data.validation_size=N (5000 on CIFAR), "
                f"or search on {test}."
            )


def _value(runs: list[RunSpec], metric: str) -> float:
    values = []
    for run in runs:
        summary = RunDir(run.path).summary() or {}
        value = summary.get(metric)
        if not isinstance(value, (int, float)):
            raise StudyError(
                f"{run.path}/summary.json has no number {metric!r}: set search.metric to one of "
                f"{', '.join(k for k, v in summary.items() if isinstance(v, float))}."
            )
        values.append(float(value))
    return statistics.fmean(values)


def dry_run(plan: StudyPlan) -> str:
    """Each point's trials (complete / failed / running / to sample) and its trial runs' states."""
    optuna = _optuna()
    search = plan.study.search
    assert search is not None
    _probe(plan)
    storage = (
        _storage(optuna, plan.out_dir) if (Path(plan.out_dir) / JOURNAL_FILE).exists() else None
    )
    lines = []
    for point in plan.runs:
        trials = []
        if storage is not None:
            with contextlib.suppress(KeyError):
                trials = optuna.load_study(study_name=point.name, storage=storage).get_trials(
                    deepcopy=False
                )
        states = [t.state.name.lower() for t in trials]
        counts = {s: states.count(s) for s in ("complete", "fail", "running")}
        left = max(0, search.trials - counts["complete"] - counts["fail"])
        lines.append(
            f"{point.name}: {counts['complete']} complete, {counts['fail']} failed, "
            f"{counts['running']} running, {left} to run of {search.trials} trials"
        )
        for trial in trials:
            for run in trial_runs(plan, point, trial.number, trial.params):
                lines.append(f"  {run.name}  {sweep_state(run.path)}")
    return "\n".join(lines) + "\n"


def run_search(plan: StudyPlan, executor: Executor, command: str) -> int:
    """Drive every point's Optuna study to ``search.trials`` trials (module docstring); the exit
    status as :func:`regrow.study.sweep.run_sweep` gives it."""
    optuna = _optuna()
    search = plan.study.search
    assert search is not None
    _probe(plan)
    check_study_dir(plan)
    distributions = {s.key: _distribution(optuna, s) for s in search.space}
    with _search_lock(plan.out_dir):
        storage = _storage(optuna, plan.out_dir)
        all_runs: list[RunSpec] = []
        record: dict[str, Any] = {}
        failed = 0
        progress = SweepProgress(len(plan.runs) * search.trials * len(plan.seeds), 0, 0, lambda: 0)
        try:
            for point in plan.runs:
                study = optuna.create_study(
                    study_name=point.name,
                    storage=storage,
                    sampler=_sampler(optuna, search.sampler, search.seed),
                    direction=search.direction,
                    load_if_exists=True,
                )
                status = _drive(plan, point, study, distributions, executor, progress, all_runs)
                record[point.name] = _record(study, point)
                write_study_json(plan, all_runs, search=_search_json(plan, record))
                if status == "interrupted":
                    name = executor.interrupted()
                    print(
                        f"regrow sweep: search {plan.study.name} interrupted; run the same command "
                        f"to continue: {command}",
                        file=sys.stderr,
                    )
                    return 128 + int(name or 2)
                failed += sum(t["state"] == "fail" for t in record[point.name]["trials"])
        finally:
            progress.close()
    best = "; ".join(
        f"{name}: best {r['best']['value']:.4g} at {r['best']['params']}"
        for name, r in record.items()
        if r.get("best")
    )
    print(f"regrow sweep: search {plan.study.name} done ({best})", file=sys.stderr)
    if failed:
        print(f"regrow sweep: {failed} trials failed; see their runs' train.log", file=sys.stderr)
        return 1
    return 0


def _drive(
    plan: StudyPlan,
    point: RunSpec,
    study: Any,
    distributions: dict[str, Any],
    executor: Executor,
    progress: SweepProgress,
    all_runs: list[RunSpec],
) -> str:
    """Run ``point``'s trials until there are ``search.trials`` finished ones; ``"interrupted"``
    or ``"finished"``."""
    from optuna.trial import TrialState

    search = plan.study.search
    assert search is not None
    batch_size = executor.capacity()
    for trial in study.get_trials(deepcopy=False):
        if trial.state != TrialState.RUNNING:
            all_runs += trial_runs(plan, point, trial.number, trial.params)
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
        running = [(t.number, t.params) for t in trials if t.state == TrialState.RUNNING]
        if not running:
            if finished >= search.trials:
                return "finished"
            count = min(max(1, batch_size // len(plan.seeds)), search.trials - finished)
            for _ in range(count):
                trial = study.ask(fixed_distributions=distributions)
                running.append((trial.number, dict(trial.params)))
        by_trial = {number: trial_runs(plan, point, number, params) for number, params in running}
        tasks = [executor.task(plan, run) for runs in by_trial.values() for run in runs]
        outcomes = {o.name: o for o in executor.run(tasks, progress)}
        if executor.interrupted():
            all_runs += [run for runs in by_trial.values() for run in runs]
            return "interrupted"
        for number, runs in by_trial.items():
            all_runs += runs
            if all(outcomes[r.name].status == RunOutcome.DONE for r in runs):
                study.tell(number, _value(runs, search.metric))
            else:
                study.tell(number, state=TrialState.FAIL)


def _record(study: Any, point: RunSpec) -> dict[str, Any]:
    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": dict(t.params),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    complete = [t for t in trials if t["state"] == "complete"]
    best = None
    if complete:
        with contextlib.suppress(ValueError):
            chosen = study.best_trial
            best = {"number": chosen.number, "value": chosen.value, "params": dict(chosen.params)}
    return {"params": dict(point.params), "trials": trials, "best": best}


def _search_json(plan: StudyPlan, record: dict[str, Any]) -> dict[str, Any]:
    search = plan.study.search
    assert search is not None
    spec = dataclasses.asdict(search)
    spec["space"] = {
        s["key"]: {k: v for k, v in s.items() if k != "key" and v not in (None, False)}
        for s in spec["space"]
    }
    return {**spec, "storage": JOURNAL_FILE, "points": record}
