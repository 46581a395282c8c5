"""A run directory under the faults a user meets: nothing lost, nothing garbled.

One writer per run directory; an out_dir that is a file, lies under one, is read-only or fills
up; a torn metrics row; temporaries left by killed writes; SIGINT/SIGTERM exit statuses; progress
lines in a log; file modes that follow the umask. (Resuming a finished, copied or relative run and
a changed config are tests/train/test_resume.py.) CLI cases run
``python -m regrow train`` in a subprocess on the digits preset (a few seconds each)."""

from __future__ import annotations

import errno
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import regrow.train.logging as train_logging
from regrow.cli import main
from regrow.train import RunDir, train
from regrow.train.rundir import RunDirError, RunLockedError
from tests.train.runs import SHORT, config, copy_tree, one_error_line, regrow_train

#: One optimizer step per pass (a global batch of 1024 of the 1,437 digits): many short passes, a
#: checkpoint after each, so a signal or a second process meets a run in the middle.
MANY_PASSES = ["sparsity.method=static", "train.batch_size=1024", "train.checkpoint_every=1"]


def start_regrow_train(*args: str, log: Path) -> subprocess.Popen:
    """``regrow train`` in the background, stderr to ``log`` (a pipe could fill and block it)."""
    command = [sys.executable, "-m", "regrow", "train", *args]
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle, text=True)


def wait_for_metrics(out: Path, process: subprocess.Popen, log: Path) -> None:
    """Until the running ``process`` has written a metrics row (it trains, signals handled)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited early ({process.returncode}): {log.read_text()}"
        if (out / RunDir.METRICS).is_file() and (out / RunDir.METRICS).read_text().count("\n"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no metrics row within 120 s: {log.read_text()}")


# ------------------------------------------------------------------------- 4: one writer
def test_one_writer_per_run_directory(tmp_path: Path) -> None:
    """A second start and a second resume of a run directory in use each stop with one line
    naming the holder and exit 2; the first run goes on, its files unmixed."""
    out = tmp_path / "run"
    first = start_regrow_train(
        "--preset", "quickstart", f"out_dir={out}", *MANY_PASSES, "train.epochs=3000",
        log=tmp_path / "first.log",
    )  # fmt: skip
    try:
        wait_for_metrics(out, first, tmp_path / "first.log")
        assert RunDir(out).state() == "locked"
        assert RunDir(out).holder()["pid"] == first.pid
        again = ["--preset", "quickstart", f"out_dir={out}", *MANY_PASSES, "train.epochs=3000"]
        second = [
            subprocess.Popen(
                [sys.executable, "-m", "regrow", "train", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (again, ["--resume", str(out)])
        ]
        for process in second:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 2, stderr
            line = one_error_line(stderr)
            assert f"{out} is in use" in line and str(out / RunDir.LOCK) in line
            assert f"host {platform.node()}, pid {first.pid}" in line
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143, (tmp_path / "first.log").read_text()
    assert [row["event"] for row in RunDir(out).provenance()] == ["start"]
    epochs = [row["epoch"] for row in RunDir(out).metrics()]
    assert epochs == list(range(len(epochs))), "one row per pass, in order, from one writer"
    assert RunDir(out).state() == "partial" and not (out / RunDir.LOCK).exists()


def test_a_stale_lock_file_is_taken_over_and_a_held_lock_refused(tmp_path: Path) -> None:
    """``.lock`` left by a crashed process (its flock gone with it) does not block; a lock held
    by a live process (here: this one, through another RunDir) does."""
    run = RunDir(tmp_path / "run")
    run.create()
    run.lock_path.write_text(json.dumps({"host": "elsewhere", "pid": 999999}) + "\n")
    assert run.state() == "new" and run.holder() is None
    with run.lock():
        holder = json.loads(run.lock_path.read_text())
        assert (holder["host"], holder["pid"]) == (platform.node(), os.getpid())
        other = RunDir(tmp_path / "run")
        assert other.state() == "locked" and other.holder()["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"), other.lock():
            pass
    assert not run.lock_path.exists() and run.state() == "new"


# ---------------------------------------------------------------- 5: unusable run directories
@pytest.mark.parametrize("case", ["file", "under a file", "device"])
def test_an_unusable_out_dir_or_device_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run directory\n")
    out, needles = {
        "file": (a_file, [f"out_dir {a_file} is a file", "choose another out_dir"]),
        "under a file": (a_file / "run", [f"lies under {a_file}, which is a file"]),
        "device": (tmp_path / "run", ["train.device='tpu'", "auto, cpu, cuda, cuda:N"]),
    }[case]
    extra = ["train.device=tpu"] if case == "device" else []
    result = regrow_train("--preset", "quickstart", f"out_dir={out}", *SHORT, *extra)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert all(needle in line for needle in needles), line
    assert a_file.read_text() == "not a run directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"], "nothing created"


def test_a_read_only_file_system_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys):
    """As a read-only mount answers (EROFS) — simulated, because CI runs as root, which writes into
    a 0o500 directory regardless (so a real chmod test could never run there): every
    open for writing and every mkdir inside the directory fails."""
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    inside = lambda path: os.fspath(path).startswith(str(read_only))  # noqa: E731
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def read_only_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writing:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def read_only_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    for out in (read_only, read_only / "run"):
        assert main(["train", "--preset", "quickstart", f"out_dir={out}", *SHORT]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"{out}" in line and "Read-only file system" in line, line
        assert f"make {read_only} writable, or choose another out_dir" in line, line
    assert list(read_only.iterdir()) == []


def test_a_full_disk_keeps_the_last_good_checkpoint_and_the_run_resumes(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """The checkpoint after pass 1 hits ENOSPC: one line saying what to do, exit 2, the pass-0
    checkpoint kept, no temporary left; once there is space the run resumes and finishes."""
    out = tmp_path / "run"
    real_replace = os.replace
    checkpoints = {"n": 0}

    def full_disk_replace(source, target, *args, **kwargs):
        if os.fspath(target).endswith(RunDir.CHECKPOINT):
            checkpoints["n"] += 1
            if checkpoints["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk_replace)
    argv = [
        "--preset",
        "quickstart",
        f"out_dir={out}",
        *SHORT,
        "train.epochs=3",
        "train.progress=false",
    ]
    assert main(["train", *argv, "train.checkpoint_every=1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {out / RunDir.CHECKPOINT}: No space left on device" in line
    assert f"the last good checkpoint {out / RunDir.CHECKPOINT} is kept" in line
    assert f"regrow train --resume {out}" in line
    kept = torch.load(out / RunDir.CHECKPOINT, weights_only=False)
    assert (kept["position"]["epoch"], kept["position"]["batch"]) == (1, 0)
    assert not list(out.glob(".*.tmp")) and RunDir(out).state() == "failed"

    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["train", "--resume", str(out)]) == 0
    assert RunDir(out).state() == "done"
    assert [row["epoch"] for row in RunDir(out).metrics()] == [0, 1, 2]


# ------------------------------------------------------------------ 6, 8: torn rows, leftovers
def test_a_torn_metrics_row_is_dropped_with_a_warning_and_the_run_resumes(
    tmp_path: Path, relative_partial_run
) -> None:
    run = tmp_path / "run"
    copy_tree(relative_partial_run, run)
    with (run / RunDir.METRICS).open("a") as handle:
        handle.write('{"epoch": 1, "step": 8')  # a kill (or a full disk) in the middle of a row
    result = regrow_train("--resume", str(run))
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "warning" in line)
    assert str(run / RunDir.METRICS) in warning and "torn last line" in warning
    assert [row["epoch"] for row in RunDir(run).metrics()] == [0, 1]
    assert RunDir(run).state() == "done"


def test_temporaries_of_killed_writes_are_removed_at_resume_and_after_each_checkpoint(
    tmp_path: Path, relative_partial_run, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    copy_tree(relative_partial_run, out)
    stale = [out / ".checkpoint.pt.k1ll3d0.tmp", out / ".metrics.jsonl.abcd1234.tmp"]
    mine = [out / ".notes.tmp", out / "checkpoint.pt.tmp", out / "keep.txt"]
    for path in stale + mine:
        path.write_bytes(b"x" * 1000)
    late = out / ".checkpoint.pt.after0start.tmp"
    original_begin = RunDir.begin

    def begin_then_a_leftover_appears(self, *args, **kwargs):
        original_begin(self, *args, **kwargs)
        late.write_bytes(b"x")  # after the start's cleanup: the next checkpoint write removes it

    monkeypatch.setattr(RunDir, "begin", begin_then_a_leftover_appears)
    assert train(config(out, "train.stop_at_step=50"), resume=True)["status"] == "finished"
    assert not any(path.exists() for path in [*stale, late])
    assert all(path.exists() for path in mine), "only the harness's own temporaries go"
    removed = next(line for line in capsys.readouterr().err.splitlines() if "removed" in line)
    assert all(path.name in removed for path in stale)


def test_a_lock_is_needed_to_remove_temporaries(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="needs the lock"):
        RunDir(tmp_path).remove_stale_temporaries()


# ---------------------------------------------------------------- 11: signals, exit statuses
@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_checkpoints_exits_128_plus_its_number_and_resume_finishes(
    tmp_path: Path, name: str, status: int
) -> None:
    out, log = tmp_path / "run", tmp_path / "run.log"
    process = start_regrow_train(
        "--preset", "quickstart", f"out_dir={out}", *MANY_PASSES, "train.epochs=100",
        "train.eval_every=1000", log=log,
    )  # fmt: skip
    wait_for_metrics(out, process, log)
    process.send_signal(getattr(signal, name))
    process.wait(timeout=120)
    stderr = log.read_text()
    assert process.returncode == status, stderr
    assert f"stopped ({name})" in stderr and "Traceback" not in stderr
    state = torch.load(out / RunDir.CHECKPOINT, weights_only=False)
    assert 0 < state["sparsifier"]["step_count"] < 100
    assert not list(out.glob(".checkpoint.pt.*")), "no temporary file is left behind"
    assert main(["train", "--resume", str(out)]) == 0
    summary = RunDir(out).summary()
    assert summary["steps"] == 100 and summary["epochs"] == summary["data_passes"] == 100


# ------------------------------------------------------------ 12, 13: a log, the file modes
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """3 passes with stderr a pipe (as under nohup or a cluster job) and umask 0o022."""
    out = tmp_path_factory.mktemp("logged") / "run"
    result = regrow_train(
        "--preset", "quickstart", f"out_dir={out}", "sparsity.method=static", "train.epochs=3",
        umask=0o022,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


PROGRESS = re.compile(
    r"regrow: run epoch (\d+) step (\d+)/132 loss \d+\.\d{4} lr [0-9.e-]+ "
    r"elapsed \d+:\d\d:\d\d left (\d+:\d\d:\d\d|\?)"
)


def test_progress_lines_when_stderr_is_not_a_terminal(logged_run) -> None:
    _, result = logged_run
    lines = [line for line in result.stderr.splitlines() if " epoch " in line]
    matches = [PROGRESS.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [(int(m[1]), int(m[2])) for m in matches] == [(0, 44), (1, 88), (2, 132)]


def test_a_progress_line_at_least_every_few_minutes_within_a_pass(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """With the interval at 0, the loop's periodic loss check (every 50 steps) adds a line."""
    monkeypatch.setattr(train_logging, "PLAIN_EVERY", 0.0)
    train(config(tmp_path / "run"))
    lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    assert [re.search(r" step (\d+)/", line)[1] for line in lines] == ["44", "50", "88"]


def test_run_directory_files_follow_the_umask(logged_run, tmp_path: Path) -> None:
    out, _ = logged_run
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*")}
    assert modes and set(modes.values()) == {oct(0o644)}, modes
    previous = os.umask(0o002)  # another umask, in this process: read at every write
    try:
        train(config(tmp_path / "run"))
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {oct(0o664)}, modes


def test_run_dir_errors_exit_2_through_the_harness_mapping() -> None:
    assert issubclass(RunDirError, ValueError) and RunDirError.exit_code == 2


# ------------------------------------------------------------------------ issue 18: 10 and 13


class FillingDisk(io.RawIOBase):
    """A file whose disk fills after ``room`` bytes: ``write`` raises ENOSPC from then on."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)


def test_a_disk_that_fills_inside_a_checkpoint_write_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """issue 18, item 10: ENOSPC partway through torch.save's writes reached the user as torch's
    RuntimeError, a traceback and exit 1; it is the full-disk line, exit 2, the last good
    checkpoint kept, and the run resumes once there is space."""
    out = tmp_path / "run"
    real_save, saves = torch.save, {"n": 0}

    def save(obj, handle, *args, **kwargs):
        saves["n"] += 1
        target = FillingDisk(handle, room=4096) if saves["n"] == 2 else handle
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = ["--preset", "quickstart", f"out_dir={out}", *SHORT, "train.epochs=3"]
    assert main(["train", *argv, "train.progress=false", "train.checkpoint_every=1"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write {out / RunDir.CHECKPOINT}: No space left on device" in line, line
    assert f"the last good checkpoint {out / RunDir.CHECKPOINT} is kept" in line, line
    monkeypatch.setattr(torch, "save", real_save)
    kept = torch.load(out / RunDir.CHECKPOINT, weights_only=False)
    assert (kept["position"]["epoch"], kept["position"]["batch"]) == (1, 0)
    assert not list(out.glob(".*.tmp")) and RunDir(out).state() == "failed"
    assert main(["train", "--resume", str(out)]) == 0
    assert [row["epoch"] for row in RunDir(out).metrics()] == [0, 1, 2]


@pytest.mark.parametrize("case", ["file", "under a file", "dangling link"])
def test_an_unusable_data_root_or_out_dir_link_is_one_line_naming_it(
    tmp_path: Path, capsys, case: str
) -> None:
    """issue 18, item 13: a data.root that is a file gave a bare "File exists: PATH" (and one
    under a file "Not a directory: PATH"); an out_dir that is a dangling link "File exists"."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = tmp_path / "run"
    if case == "dangling link":
        out.symlink_to(tmp_path / "gone")
        argv = ["--preset", "quickstart", f"out_dir={out}", *SHORT]
        expected = f"out_dir {out} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
    else:
        root = a_file if case == "file" else a_file / "cifar"
        argv = ["--preset", "cifar10_wrn22_2", f"out_dir={out}", f"data.root={root}"]
        argv.append("data.download=true")
        expected = f"data.root={root} " + (
            "is a file" if case == "file" else f"lies under {a_file}"
        )
    assert main(["train", *argv]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line, line
