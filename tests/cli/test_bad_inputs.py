"""Nothing lost, nothing garbled: every bad input to ``regrow`` is one line on stderr naming the
input and what is allowed, exit status 2, never a traceback, never the library's internal wording.

The table below runs each case as a ``python -m regrow`` process (what a user sees, warnings on
stderr included: forked from one process that imported the CLI once, so the table costs seconds,
and a few in a process of their own) and in-process through :func:`regrow.cli.main`. Cases that
need a monkeypatch (no network) or a written data file run in-process only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from regrow.cli import main
from regrow.data import cifar as cifar_module
from regrow.train import ConfigError, load_config
from tests.helpers import fake_rows, write_cifar10, write_record

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parent

#: A digits run of one epoch: a case the CLI wrongly accepted would train for a second, not a minute.
#: ``regrow flops`` on WRN-22-2, the base of its bad-input cases.
WRN = ["flops", "--model", "wrn22_2"]

QUICK = ["--preset", "quickstart", "out_dir=run", "train.epochs=1"]

#: Preset files the cases below refer to, written into the cases' working directory.
PRESETS = {
    "syntax.yaml": "train:\n  epochs: [1, 2\nseed: 3\n",
    "list.yaml": "- train.epochs=3\n- seed=1\n",
    "scalar.yaml": "just a sentence\n",
    "typo.yaml": "seed: 1\ntrain:\n  lr: 0.1\n  epoch: 3\n",
}

#: (id, argv, what the one line must contain, what it must not contain)
CASES: list[tuple[str, list[str], list[str], list[str]]] = [
    # --- train: config keys and values
    (
        "unknown-key",
        ["train", *QUICK, "train.epoch=3"],
        ["'train.epoch'", "did you mean train.epochs?", "--print-config"],
        ["Known keys", "sparsity.custom_densities", "TrainConfig"],
    ),
    (
        "value-not-an-integer",
        ["train", *QUICK, "train.epochs=abc"],
        ["train.epochs='abc' is not an integer", "integers >= 1"],
        ["full_key", "object_type", "could not be converted", "Integer"],
    ),
    (
        "value-not-a-bool",
        ["train", *QUICK, "data.download=maybe"],
        ["data.download='maybe' is not true or false"],
        ["valid bool", "full_key"],
    ),
    ("negative-lr-gamma", ["train", *QUICK, "train.lr_gamma=-0.5"], ["train.lr_gamma=-0.5"], []),
    (
        "unknown-optimizer",
        ["train", *QUICK, "train.optimizer=adam"],
        ["train.optimizer='adam' is not allowed", "allowed values are sgd, adamw"],
        [],
    ),
    (
        "momentum-out-of-range",
        ["train", *QUICK, "train.momentum=1.5"],
        ["train.momentum=1.5", "0 <= x < 1"],
        [],
    ),
    ("section-as-value", ["train", *QUICK, "data=3"], ["data=3", "section"], ["subclass"]),
    (
        "missing-out-dir",
        ["train", "model.name=wrn22_2"],
        ["out_dir is not set", "out_dir=runs/"],
        [],
    ),
    ("unknown-model", ["train", *QUICK, "model.name=vgg16"], ["model.name='vgg16'"], []),
    (
        "unknown-method",
        ["train", *QUICK, "sparsity.method=lottery"],
        ["sparsity.method='lottery'", "rigl"],
        [],
    ),
    (
        "unknown-method-argument",
        ["train", *QUICK, "sparsity.args.foo=1"],
        ["'foo'", "delta_t"],
        [],
    ),
    (
        "batch-larger-than-the-data",
        ["train", *QUICK, "train.batch_size=4096"],
        ["train.batch_size=4096 is larger than the 1438 training images of digits"],
        ["drop_last", "samples would yield"],
    ),
    # --- train: presets
    (
        "preset-yaml-syntax",
        ["train", "--preset", "syntax.yaml", "out_dir=run"],
        ["syntax.yaml", "line 3, column 5", "not valid YAML"],
        ["Traceback", "ParserError"],
    ),
    (
        "preset-a-list",
        ["train", "--preset", "list.yaml", "out_dir=run"],
        ["list.yaml", "holds a list", "not a mapping"],
        ["incompatible container"],
    ),
    (
        "preset-a-scalar",
        ["train", "--preset", "scalar.yaml", "out_dir=run"],
        ["scalar.yaml", "'just a sentence'", "not a mapping"],
        [],
    ),
    (
        "preset-unknown-key",
        ["train", "--preset", "typo.yaml", "out_dir=run"],
        ["'train.epoch'", "typo.yaml, line 4", "did you mean train.epochs?"],
        [],
    ),
    ("preset-missing", ["train", "--preset", "gone.yaml", "out_dir=run"], ["gone.yaml"], []),
    # --- quickstart
    ("quickstart-zero-seeds", ["quickstart", "--seeds", "0"], ["--seeds 0", ">= 1"], []),
    ("quickstart-seeds-not-int", ["quickstart", "--seeds", "x"], ["--seeds", "'x'"], ["usage:"]),
    (
        "quickstart-own-key",
        ["quickstart", "--seeds", "1", "sparsity.method=set", "train.epochs=1"],
        ["'sparsity.method=set'", "quickstart sets sparsity.method"],
        [],
    ),
    # --- flops
    ("flops-input-shape", ["flops", "--input-shape", "x"], ["--input-shape 'x'"], []),
    ("flops-num-classes", ["flops", "--num-classes", "abc"], ["--num-classes", "'abc'"], ["usage"]),
    (
        "flops-unknown-key",
        ["flops", "sparsity.sparsty=0.9"],
        ["'sparsity.sparsty'", "did you mean sparsity.sparsity?"],
        ["Known keys", "train.tensorboard"],
    ),
    # --- the command itself
    ("unknown-command", ["nonsense"], ["'nonsense'", "train"], ["usage:"]),
]


BY_ID = {case[0]: case for case in CASES}
#: Cases also run as separate ``python -m regrow`` processes (the entry point itself, unforked).
OWN_PROCESS = ["preset-yaml-syntax", "unknown-command", "batch-larger-than-the-data"]

#: Runs in one child process: imports the CLI (and torch) once, then for each case forks and runs
#: ``python -m regrow ARGV`` there (``runpy``, as the interpreter does), its stdout and stderr in
#: files, an uncaught exception printed as the interpreter prints it. Prints {id: exit status}.
DRIVER = r"""
import json, os, runpy, sys, traceback
import regrow.cli
cases, folder = json.loads(sys.argv[1]), sys.argv[2]
statuses = {}
for case_id, argv in cases:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, suffix in ((1, ".out"), (2, ".err")):
                path = os.path.join(folder, case_id + suffix)
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["regrow", *argv]
            try:
                runpy.run_module("regrow", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if isinstance(exc.code, int) or exc.code is None:
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    statuses[case_id] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(statuses))
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def workdir(tmp_path_factory, name: str) -> Path:
    """A working directory for the cases, holding :data:`PRESETS` (one per way of running them,
    so their run directories never meet)."""
    cwd = tmp_path_factory.mktemp(name)
    for preset, text in PRESETS.items():
        (cwd / preset).write_text(text)
    return cwd


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Each case as a process: ``id -> (exit status, stdout, stderr)``; the :data:`OWN_PROCESS`
    ones as ``<id>/own`` too."""
    outputs = tmp_path_factory.mktemp("bad_inputs_out")
    forked, alone = workdir(tmp_path_factory, "forked"), workdir(tmp_path_factory, "alone")
    results: dict[str, tuple[int, str, str]] = {}

    def own(case_id: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "regrow", *BY_ID[case_id][1]]
        return subprocess.run(
            command, cwd=alone, env=_env(), capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=len(OWN_PROCESS)) as pool:
        pending = pool.map(own, OWN_PROCESS)
        if hasattr(os, "fork"):
            cases = json.dumps([[case_id, case[1]] for case_id, case in BY_ID.items()])
            command = [sys.executable, "-c", DRIVER, cases, str(outputs)]
            done = subprocess.run(
                command, cwd=forked, env=_env(), capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stderr[-3000:]
            for case_id, status in json.loads(done.stdout).items():
                out, err = ((outputs / f"{case_id}{s}").read_text() for s in (".out", ".err"))
                results[case_id] = (status, out, err)
        for case_id, result in zip(OWN_PROCESS, pending, strict=True):
            results[f"{case_id}/own"] = (result.returncode, result.stdout, result.stderr)
    return results


def check_one_line(argv: list[str], status: int, err: str, needles, absent) -> None:
    assert status == 2, err
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    command = argv[0] if argv[0] in ("train", "quickstart", "flops") else None
    assert err.startswith(f"regrow {command}: error: " if command else "regrow: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    for needle in absent:
        assert needle not in err, (needle, err)


@pytest.mark.parametrize("case_id", [*BY_ID, *(f"{c}/own" for c in OWN_PROCESS)])
def test_bad_input_as_a_process_is_one_line_exit_2(finished, case_id):
    _, argv, needles, absent = BY_ID[case_id.removesuffix("/own")]
    if case_id not in finished:
        pytest.skip(
            "needs os.fork (not on Windows) to run every case as a process; the same inputs are "
            "checked in-process by test_bad_input_in_process_is_one_line_exit_2"
        )
    status, out, err = finished[case_id]
    check_one_line(argv, status, err, needles, absent)
    assert out == ""


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_bad_input_in_process_is_one_line_exit_2(capsys, tmp_path_factory, monkeypatch, case_id):
    _, argv, needles, absent = BY_ID[case_id]
    monkeypatch.chdir(workdir(tmp_path_factory, "in_process"))
    status = main(argv)
    captured = capsys.readouterr()
    check_one_line(argv, status, captured.err, needles, absent)
    assert captured.out == ""


# ----------------------------------------------------------------------------------------------
# Through main() in-process: one line, status 2 (the subprocess adds nothing here)
# ----------------------------------------------------------------------------------------------


def one_error_line(capsys, argv: list[str], status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.lr_gamma=-0.2", ["train.lr_gamma=-0.2", "x > 0", "multiplied"]),
        ("train.lr_gamma=0", ["train.lr_gamma=0.0", "x > 0"]),
        ("train.weight_decay=-0.0005", ["train.weight_decay=-0.0005", "x >= 0"]),
        ("train.momentum=-0.1", ["train.momentum=-0.1", "0 <= x < 1"]),
        ("train.momentum=1", ["train.momentum=1.0", "0 <= x < 1"]),
        ("train.warmup_epochs=-1", ["train.warmup_epochs=-1.0", "x >= 0"]),
        ("model.width=0", ["model.width=0.0", "x > 0"]),
        ("train.lr=inf", ["train.lr=inf", "finite"]),
        ("train.multiplier=nan", ["train.multiplier=nan", "finite"]),
        ("train.momentum=0", ["train.nesterov=true needs train.momentum > 0"]),
    ],
)
def test_values_that_would_run_another_experiment_are_refused(capsys, override, needles):
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", ["out_dir=x", override])
    for needle in needles:
        assert needle in str(info.value)
    err = one_error_line(capsys, ["train", "--preset", "quickstart", "out_dir=x", override])
    assert needles[0] in err


def test_a_batch_larger_than_the_training_set_is_worded_in_config_keys(capsys, tmp_path):
    argv = ["train", "--preset", "quickstart", f"out_dir={tmp_path / 'run'}"]
    err = one_error_line(capsys, [*argv, "train.batch_size=2000", "data.limit_train=100"])
    assert "train.batch_size=2000 is larger than the 100 training images of digits" in err
    assert "lower train.batch_size" in err and "drop_last" not in err
    err = one_error_line(capsys, [*argv, "data.validation_size=5000"])
    assert "data.validation_size=5000" in err and "< 1438" in err


# ----------------------------------------------------------------------------------------------
# B: a download without a network; C: labels out of range in a data file
# ----------------------------------------------------------------------------------------------


def cifar10_argv(tmp_path: Path, *more: str) -> list[str]:
    return [
        "train", "--preset", "quickstart", f"out_dir={tmp_path / 'run'}", "data.name=cifar10",
        "model.name=wrn22_2", f"data.root={tmp_path / 'data'}", "train.epochs=1", *more,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "failure",
    [
        urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
    ],
    ids=["no-dns", "refused", "timeout"],
)
def test_download_without_network_says_where_to_put_the_archive(
    capsys, tmp_path, monkeypatch, failure
):
    tried = []

    def offline(url, *args, **kwargs):
        tried.append(url)
        raise failure

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    err = one_error_line(capsys, cifar10_argv(tmp_path, "data.download=true"))
    archive = cifar_module.ARCHIVES["cifar10"]
    root = tmp_path / "data"
    assert tried == [archive.url]  # nothing but the patched function was asked
    assert err.startswith("regrow train: error: could not download cifar-10-python.tar.gz")
    assert f"from {archive.url}" in err
    assert f"put it in {root}" in err and f"{root / 'cifar-10-batches-py'} exists" in err
    assert os.listdir(root) == []  # no partial download left behind


@pytest.mark.parametrize("bad", [[10], [-1], [10, -1, 12]], ids=["10", "-1", "several"])
def test_labels_out_of_range_are_refused_at_load(capsys, tmp_path, bad):
    write_cifar10(tmp_path / "data", per_batch=4)
    path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_2"
    labels = [3] * (4 - len(bad)) + bad
    write_record(path, {"data": fake_rows(4, seed=1), "labels": labels}, bytes_keys=True)
    err = one_error_line(capsys, cifar10_argv(tmp_path))
    assert str(path) in err and "'labels'" in err
    for value in bad:
        assert str(value) in err
    assert "0 to 9" in err and "10 classes" in err
    assert f"first at image {4 - len(bad)}" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------
# D: each command's own bad input through main(): regrow flops, argparse, train's method settings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["flops", "--model", "vgg16", "sparsity.sparsity=0.8"],
            ["'vgg16'", "wrn22_2", "resnet50_imagenet"],
        ),
        ([*WRN, "sparsity.sparsity=1.5"], ["1.5", "0 <= x < 1"]),
        ([*WRN, "sparsity.method=lottery"], ["'lottery'", "rigl", "small_dense"]),
        ([*WRN, "sparsity.distribution=gaussian"], ["'gaussian'", "erk"]),
        ([*WRN, "--match-flops", "0.001"], ["cannot reach", "'erk'"]),
        ([*WRN, "--match-flops", "normal"], ["'normal'", "uniform"]),
        ([*WRN, "sparsity.dense_layers=[stem]"], ["'stem'", "conv1.weight"]),
        ([*WRN, "train.multiplier=0"], ["train.multiplier"]),
        ([*WRN, "--input-shape", "1,28,28"], ["--input-shape", "(1, 28, 28)"]),
        ([*WRN, "--total-steps", "0"], ["--total-steps"]),
        # an unknown key: named, with the known ones
        ([*WRN, "sparsity.methd=rigl"], ["'sparsity.methd'", "sparsity.method"]),
        # a method argument the method does not have: the method's own arguments are listed
        (
            [*WRN, "sparsity.method=rigl", "sparsity.args.foo=1"],
            ["'foo'", "rigl", "delta_t, alpha"],
        ),
        ([*WRN, "sparsity.method=static", "sparsity.args.delta_t=5"], ["'delta_t'", "none"]),
        ([*WRN, "sparsity.method=pruning", "sparsity.args.scope=global"], ["scope=layer"]),
        ([*WRN, "sparsity.sparsity=abc"], ["abc", "sparsity.sparsity"]),
    ],
)
def test_bad_input_exits_2_naming_the_value(capsys, args, needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("regrow flops: error: ") and err.count("\n") == 1
    for needle in needles:
        assert needle in err


def test_argparse_errors_return_2(capsys):
    assert main(["flops", "--match-flops"]) == 2  # the value is missing
    assert main(["flops", "--small-dense", "--match-flops", "uniform"]) == 2  # one mode at a time
    assert main(["nonsense"]) == 2
    assert main([*WRN, "--total-steps", "abc"]) == 2
    assert "abc" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["flops", "--num-classes", "abc"], "--num-classes: invalid int value: 'abc'"),
        (["quickstart", "--seeds"], "--seeds: expected one argument"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argparse_errors_are_one_line_without_the_usage_block(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and needle in err
    assert err.startswith("regrow") and "--help" in err


def test_print_config_and_cli_errors_exit_2(capsys) -> None:
    assert main(["train", "--preset", "quickstart", "out_dir=x", "seed=4", "--print-config"]) == 0
    assert "seed: 4" in capsys.readouterr().out
    assert main(["train", "--preset", "quickstart", "out_dir=x", "sparsity.method=nope"]) == 2
    assert "sparsity.method='nope'" in capsys.readouterr().err


def test_an_argument_the_method_lacks_is_exit_2_naming_its_arguments(capsys) -> None:
    code = main(
        ["train", "--preset", "quickstart", "out_dir=x", "sparsity.method=set",
         "sparsity.args.decay=0.9"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "method set has no argument 'decay'" in err
    assert (
        "delta_t, alpha, t_end_fraction, begin_step, drop_schedule, reinit, redistribution" in err
    )
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sparsity.args.alpha=2", "alpha=2.0 is out of range"),
        ("sparsity.args.drop_schedule=step", "'cosine', 'constant', 'linear'"),
        ("sparsity.method=nowhere:Thing", "cannot be imported"),
        ("sparsity.method=json:dumps", "not a Sparsifier subclass"),
    ],
)
def test_bad_method_settings_are_exit_2(capsys, override: str, message: str) -> None:
    assert main(["train", "--preset", "quickstart", "out_dir=x", override]) == 2
    assert message in capsys.readouterr().err


# --- issue 18, item 13: a printed command is shell-quoted (a value with a space, a bracket)
def test_quickstarts_suggested_train_command_is_shell_quoted(capsys):
    import shlex

    assert main(["quickstart", "out_dir=my runs/q"]) == 2
    err = capsys.readouterr().err
    suggested = err.split("`")[1]
    assert shlex.split(suggested)[-2:] == ["out_dir=my runs/q", "out_dir=..."], err
