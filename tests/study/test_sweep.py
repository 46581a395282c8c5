"""``regrow sweep`` for real, on the digits quickstart preset: an interrupted sweep continued ends
bit-identical to an uninterrupted one; two launchers never train one run twice; the submitit path
through submitit's local executor; an Optuna search that continues; failures recorded and not
retried; ``--dry-run`` states and ``--print-commands`` lines."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from regrow.cli import main
from regrow.study.executors import FAILURE_FILE, LOG_FILE
from regrow.study.names import STUDY_FILE
from regrow.train import RunDir

#: A few seconds per run on 2 CPU cores (most of it the interpreter and torch starting).
TINY = "[train.epochs=2, data.limit_train=256, sparsity.sparsity=0.8, sparsity.args.delta_t=3]"

#: Summary keys that say where and how fast, not what was computed.
NOT_RESULTS = {
    "wall_seconds",
    "hostname",
    "git_revision",
    "regrow_version",
    "python_version",
    "torch_version",
    "cuda_version",
    "device_name",
}


def study_file(tmp_path: Path, overrides: str = TINY, extra: str = "", name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""\
name: {name}
preset: quickstart
overrides: {overrides}
grid:
  sparsity.method: [static, rigl]
seeds: 2
run_name: "{{sparsity.method}}_seed{{seed}}"
report:
  figures: [learning_curves]
{extra}"""
    )
    return path


def sweep(study: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "regrow", "sweep", str(study), "--out", str(out), *args]


def run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def sweep_here(
    capsys: pytest.CaptureFixture[str], study: Path, out: Path, *args: str
) -> tuple[int, str]:
    """``regrow sweep`` in this process (its children are processes): status and stderr."""
    status = main(["sweep", str(study), "--out", str(out), *args])
    return status, capsys.readouterr().err


def results(out: Path) -> dict[str, Any]:
    """Every run's summary (results only) and metrics rows, mask updates included (without
    ``seconds``)."""
    found = {}
    for path in sorted(p for p in out.iterdir() if (p / "summary.json").is_file()):
        run_dir = RunDir(path)
        summary = {k: v for k, v in (run_dir.summary() or {}).items() if k not in NOT_RESULTS}
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in run_dir.metric_rows()]
        found[path.name] = (summary, rows)
    return found


def test_interrupted_sweep_continues_bit_identical(tmp_path, capsys):
    long_runs = "[train.epochs=24, data.limit_train=384, train.checkpoint_every=1, sparsity.sparsity=0.8, sparsity.args.delta_t=10]"
    study = study_file(tmp_path, long_runs)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    launcher = subprocess.Popen(
        sweep(study, interrupted, "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The uninterrupted reference runs meanwhile would compete for the 2 cores: run it after.
    deadline = time.monotonic() + 180
    caught = False
    while time.monotonic() < deadline and launcher.poll() is None:
        dirs = [p for p in interrupted.glob("*_seed*") if p.is_dir()]
        finished = [p for p in dirs if (p / "summary.json").is_file()]
        # Mid-way: a checkpoint and at most a third of its passes, so the signal reaches it
        # long before it could finish on its own.
        mid_way = [
            p
            for p in dirs
            if (p / "checkpoint.pt").is_file()
            and not (p / "summary.json").exists()
            and len(RunDir(p).metrics()) <= 8
        ]
        if finished and mid_way:
            launcher.send_signal(signal.SIGINT)
            caught = True
            break
        time.sleep(0.05)
    _, err = launcher.communicate(timeout=120)
    assert caught, f"never saw a finished and a mid-way run: {err}"
    assert launcher.returncode == 130, err
    assert "run the same command to continue" in err
    states = {p.name: RunDir(p).state() for p in interrupted.glob("*_seed*")}
    assert "partial" in states.values() and "done" in states.values(), states

    status, err = sweep_here(capsys, study, interrupted, "--workers", "2")
    assert status == 0, err
    status, err = sweep_here(capsys, study, reference, "--workers", "2")
    assert status == 0, err

    expected, got = results(reference), results(interrupted)
    assert sorted(got) == ["rigl_seed0", "rigl_seed1", "static_seed0", "static_seed1"]
    assert got == expected
    resumed = [
        name
        for name in got
        if any(row["event"] == "resume" for row in RunDir(interrupted / name).provenance())
    ]
    assert resumed  # the mid-way runs were resumed, not restarted
    plan = json.loads((interrupted / STUDY_FILE).read_text())
    assert plan["study"] == "s" and plan["preset"] == "quickstart" and plan["seeds"] == [0, 1]
    assert plan["report"] == {"figures": ["learning_curves"]}
    assert {r["name"] for r in plan["runs"]} == set(got)
    entry = next(r for r in plan["runs"] if r["name"] == "rigl_seed1")
    assert entry["params"] == {"sparsity.method": "rigl", "seed": 1}
    assert entry["overrides"][-2:] == ["seed=1", f"out_dir={interrupted / 'rigl_seed1'}"]
    assert (interrupted / "rigl_seed1" / LOG_FILE).read_text().count("=== regrow sweep") >= 1


def test_two_launchers_never_train_one_run_twice(tmp_path):
    study = study_file(tmp_path)
    out = tmp_path / "out"
    launchers = [
        subprocess.Popen(
            sweep(study, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for launcher in launchers:
        _, err = launcher.communicate(timeout=240)
        assert launcher.returncode == 0, err
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["rigl_seed0", "rigl_seed1", "static_seed0", "static_seed1"]
    for path in runs:
        assert RunDir(path).state() == "done"
        starts = [row for row in RunDir(path).provenance() if row["event"] == "start"]
        assert len(starts) == 1, path
        assert not (path / FAILURE_FILE).exists()


def test_submitit_local_executor_trains_a_run(tmp_path, capsys):
    pytest.importorskip("submitit")
    study = study_file(
        tmp_path,
        "[train.epochs=2, data.limit_train=256]",
        extra="exclude:\n  - {sparsity.method: rigl}\n  - {seed: 1}\n",
    )
    out = tmp_path / "out"
    status, err = sweep_here(
        capsys, study, out, "--executor", "submitit-local", "--slurm-time", "10"
    )
    assert status == 0, err
    assert "submitit job" in err
    assert RunDir(out / "static_seed0").state() == "done"
    assert (out / ".submitit").is_dir()
    status, err = sweep_here(capsys, study, out, "--slurm-local")
    assert status == 0 and "1 done, 0 to run" in err, err


def test_optuna_search_continues_the_same_trials(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    def search_study(trials: int) -> Path:
        path = tmp_path / "search.yaml"
        path.write_text(
            f"""\
name: search
preset: quickstart
overrides: [train.epochs=2, data.limit_train=256, sparsity.method=rigl]
run_name: "rigl"
search:
  sampler: tpe
  trials: {trials}
  metric: test_accuracy
  space:
    sparsity.args.alpha: {{low: 0.1, high: 0.6}}
    sparsity.args.delta_t: {{choices: [3, 5]}}
"""
        )
        return path

    out = tmp_path / "out"
    out.mkdir()
    # A trial left running by an interrupted sweep: it must be picked up with its parameters.
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    study = optuna.create_study(study_name="rigl", storage=storage, direction="maximize")
    distributions = {
        "sparsity.args.alpha": optuna.distributions.FloatDistribution(0.1, 0.6),
        "sparsity.args.delta_t": optuna.distributions.CategoricalDistribution([3, 5]),
    }
    pending = study.ask(fixed_distributions=distributions)
    assert pending.number == 0

    status, err = sweep_here(capsys, search_study(2), out)
    assert status == 0, err

    def trials() -> list[Any]:
        loaded = optuna.load_study(study_name="rigl", storage=storage)
        return loaded.get_trials(deepcopy=False)

    done = trials()
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    assert done[0].params == pending.params
    assert sorted(p.name for p in out.glob("rigl_trial*")) == [
        "rigl_trial000_seed0",
        "rigl_trial001_seed0",
    ]
    status, err = sweep_here(capsys, search_study(2), out)
    assert status == 0, err
    assert len(trials()) == 2  # nothing re-sampled
    status, err = sweep_here(capsys, search_study(3), out)
    assert status == 0, err
    grown = trials()
    assert len(grown) == 3 and [t.params for t in grown[:2]] == [t.params for t in done]
    for path in out.glob("rigl_trial*"):
        assert [r["event"] for r in RunDir(path).provenance()] == ["start"]
    plan = json.loads((out / STUDY_FILE).read_text())
    assert len(plan["runs"]) == 3 and len(plan["search"]["points"]["rigl"]["trials"]) == 3
    summary = RunDir(out / "rigl_trial001_seed0").summary()
    assert grown[1].value == summary["test_accuracy"]


def test_failed_run_is_recorded_and_retried_only_when_asked(tmp_path, capsys):
    study = study_file(
        tmp_path,
        "[train.epochs=1, data.limit_train=64, train.lr=1e30]",
        extra="exclude:\n  - {sparsity.method: rigl}\n  - {seed: 1}\n",
    )
    out = tmp_path / "out"
    status, err = sweep_here(capsys, study, out)
    assert status == 1, err
    failure = json.loads((out / "static_seed0" / FAILURE_FILE).read_text())
    assert failure["exit_code"] == 3 and failure["log_tail"]
    assert "failed: static_seed0" in err and LOG_FILE in err
    status, err = sweep_here(capsys, study, out)
    assert status == 1 and "failed earlier" in err
    assert (out / "static_seed0" / LOG_FILE).read_text().count("=== regrow sweep") == 1
    status, err = sweep_here(capsys, study, out, "--retry-failed")
    assert status == 1, err
    assert (out / "static_seed0" / LOG_FILE).read_text().count("=== regrow sweep") == 2


def test_dry_run_states_and_print_commands(tmp_path, capsys):
    study = study_file(tmp_path, extra="also:\n  - {sparsity.method: dense}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 runs in" in text and "6 new, 0 partial, 0 done, 0 failed, 0 locked" in text
    # done, partial, failed, locked by hand (no config.yaml: nothing to compare)
    for name in ("static_seed0", "static_seed1", "rigl_seed0", "rigl_seed1"):
        (out / name).mkdir(parents=True)
    (out / "static_seed0" / "summary.json").write_text('{"status": "finished"}')
    (out / "static_seed1" / "checkpoint.pt").write_bytes(b"")
    (out / "rigl_seed0" / "failed.json").write_text("{}")
    with RunDir(out / "rigl_seed1").lock():
        assert main(["sweep", str(study), "--out", str(out), "--dry-run"]) == 0
        lines = capsys.readouterr().out.splitlines()
        states = dict(line.split() for line in lines[:-1])
        assert states == {
            "static_seed0": "done",
            "static_seed1": "partial",
            "rigl_seed0": "failed",
            "rigl_seed1": "locked",
            "dense_seed0": "new",
            "dense_seed1": "new",
        }
        assert lines[-1].endswith("2 new, 1 partial, 1 done, 1 failed, 1 locked")
        assert main(["sweep", str(study), "--out", str(out), "--print-commands"]) == 0
        commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert commands[0] == ["regrow", "train", "--resume", str(out / "static_seed1")]
    assert [c[:4] for c in commands[1:]] == [["regrow", "train", "--preset", "quickstart"]] * 2
    assert commands[1][-3:] == ["sparsity.method=dense", "seed=0", f"out_dir={out / 'dense_seed0'}"]
    assert main(["sweep", str(study), "--out", str(out), "--print-commands", "--retry-failed"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5  # the failed and the locked-free ones
    assert not (out / STUDY_FILE).exists()  # neither writes anything


def test_gpu_and_torchrun_commands_and_thread_counts(tmp_path):
    from regrow.study.executors import LocalExecutor, RunTask, display_command, train_command

    executor = LocalExecutor(gpus=["0", "1", "2", "3"], gpus_per_run=2, threads_per_run=3)
    assert executor.slots == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert executor.env == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    task = RunTask("r", "d/r", "cifar10_wrn22_2", ("seed=0", "out_dir=d/r"), nproc=2)
    assert train_command(task, False, python="py") == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "regrow",
        "train",
        "--preset",
        "cifar10_wrn22_2",
        "seed=0",
        "out_dir=d/r",
    ]
    assert display_command(task, True) == (
        "torchrun --standalone --nproc_per_node=2 -m regrow train --resume d/r"
    )
    cpu = LocalExecutor(workers=2)
    expected = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert cpu.env["OMP_NUM_THREADS"] == expected == cpu.env["MKL_NUM_THREADS"]
    assert LocalExecutor(gpus=["0", "1"]).slots == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]


#: One run (static, seed 0) of :func:`study_file`'s grid.
SHORT = "[train.epochs=2, data.limit_train=256]"
ONE_RUN = "exclude:\n  - {sparsity.method: rigl}\n  - {seed: 1}\n"


def one_error_line(status: int, err: str) -> str:
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("regrow sweep: error: "), err
    assert "Traceback" not in err
    return err


def test_a_study_directory_belongs_to_one_study(tmp_path, capsys):
    # issue 18, item 1: a second study swept into the directory overwrote study.json.
    study = study_file(tmp_path, SHORT, extra=ONE_RUN)
    out = tmp_path / "out"
    (out / "static_seed0").mkdir(parents=True)
    (out / "static_seed0" / "summary.json").write_text('{"status": "finished"}')  # done by hand
    status, err = sweep_here(capsys, study, out)
    assert status == 0, err
    written = (out / STUDY_FILE).read_text()
    assert json.loads(written)["study"] == "s"
    other = study_file(tmp_path, SHORT, extra=ONE_RUN, name="other")
    for args in ([], ["--dry-run"], ["--print-commands"]):
        err = one_error_line(*sweep_here(capsys, other, out, *args))
        assert f"{out / STUDY_FILE} belongs to study s, not other" in err, err
        assert "--out" in err
    assert (out / STUDY_FILE).read_text() == written
    # The same study again (a rerun, more seeds) continues in it.
    status, err = sweep_here(capsys, study, out)
    assert status == 0 and "1 done, 0 to run" in err, err
    status, err = sweep_here(capsys, study, out, "--seeds", "2", "--dry-run")
    assert status == 0, err
    # A study.json that cannot be read names itself; it is not overwritten either.
    (out / STUDY_FILE).write_text("{torn")
    err = one_error_line(*sweep_here(capsys, study, out))
    assert f"{out / STUDY_FILE} is not readable JSON" in err
    assert (out / STUDY_FILE).read_text() == "{torn"


def test_gpus_without_cuda_is_refused(tmp_path, capsys, monkeypatch):
    # issue 18, item 5: --gpus 0 on a machine without CUDA trained on the CPU, no warning.
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    study = study_file(tmp_path, SHORT, extra=ONE_RUN)
    out = tmp_path / "out"
    for value in ("0", "0,1", "auto"):
        for extra in ([], ["--dry-run"]):
            err = one_error_line(*sweep_here(capsys, study, out, "--gpus", value, *extra))
            assert f"--gpus {value}: no GPU is visible here" in err, err
            assert "drop --gpus to run on the CPU" in err
    assert not out.exists()
    # --print-commands writes commands for another machine: the GPUs need not be here.
    status, err = sweep_here(capsys, study, out, "--gpus", "0,1", "--print-commands")
    assert status == 0, err


def test_dry_run_refuses_what_the_sweep_refuses(tmp_path, capsys):
    # issue 18, item 7: --dry-run reported "new" for runs the real sweep refuses.
    study = study_file(tmp_path)
    out = tmp_path / "out"
    for args in (["--workers", "0"], ["--threads-per-run", "0"], ["--gpus", "x"]):
        real = one_error_line(*sweep_here(capsys, study, out, *args))
        assert one_error_line(*sweep_here(capsys, study, out, *args, "--dry-run")) == real
    assert not out.exists()
    # A file where a run directory goes; a run directory whose config.yaml is not YAML.
    out.mkdir()
    (out / "static_seed0").write_text("not a directory")
    for extra in (["--dry-run"], ["--print-commands"], []):
        err = one_error_line(*sweep_here(capsys, study, out, *extra))
        assert f"{out / 'static_seed0'} is not a directory" in err, err
    (out / "static_seed0").unlink()
    (out / "rigl_seed1").mkdir()
    (out / "rigl_seed1" / "config.yaml").write_text(": : not yaml")
    for extra in (["--dry-run"], ["--print-commands"], []):
        err = one_error_line(*sweep_here(capsys, study, out, *extra))
        assert f"{out / 'rigl_seed1' / 'config.yaml'} is not a readable configuration" in err
    assert not (out / STUDY_FILE).exists() and not (out / "static_seed0").exists()


def test_dry_run_and_print_commands_together_are_refused(tmp_path, capsys):
    # issue 18, item 13: --print-commands was silently ignored next to --dry-run.
    study = study_file(tmp_path)
    err = one_error_line(
        *sweep_here(capsys, study, tmp_path / "out", "--dry-run", "--print-commands")
    )
    assert "--dry-run and --print-commands" in err and "give one" in err


def test_a_damaged_summary_is_named_and_never_stops_the_sweep(tmp_path, capsys):
    # issue 18, item 9: a summary.json holding a list crashed the sweep (AttributeError); a torn
    # one stopped it with a JSON error naming no file.
    study = study_file(tmp_path, SHORT, extra="exclude:\n  - {sparsity.method: rigl}\n")
    out = tmp_path / "out"
    for name, content in (("static_seed0", "[1, 2]"), ("static_seed1", "{torn")):
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(content)
    status = main(["sweep", str(study), "--out", str(out), "--seeds", "3", "--dry-run"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("static_seed0  unreadable (") and "summary.json" in lines[0]
    assert lines[1].startswith("static_seed1  unreadable (") and "summary.json" in lines[1]
    assert lines[-1].endswith("1 new, 0 partial, 0 done, 0 failed, 0 locked, 2 unreadable")
    status = main(["sweep", str(study), "--out", str(out), "--seeds", "3", "--print-commands"])
    captured = capsys.readouterr()
    assert status == 0 and len(captured.out.splitlines()) == 1, captured
    assert "static_seed0" in captured.err and "static_seed1" in captured.err
    status, err = sweep_here(capsys, study, out, "--seeds", "3")
    assert status == 1, err
    assert "Traceback" not in err
    assert RunDir(out / "static_seed2").state() == "done"  # the others trained
    for name in ("static_seed0", "static_seed1"):
        assert f"unreadable: {name}: {out / name / 'summary.json'}" in err, err
    assert "2 unreadable" in err
    assert (out / "static_seed0" / "summary.json").read_text() == "[1, 2]"  # left as it was
    # The report names them too (run directories without config.yaml: planned by study.json).
    assert main(["report", str(out), "--figures", "none"]) == 0
    printed = capsys.readouterr().out
    assert "- static_seed0: unreadable, summary.json holds a JSON list" in printed, printed
    assert "- static_seed1: unreadable, summary.json is not valid JSON" in printed, printed
