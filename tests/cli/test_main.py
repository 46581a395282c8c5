"""The ``regrow`` command line as a package, and ``regrow train --print-config``."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from regrow.cli import build_parser, main
from regrow.train import load_config
from regrow.train.config import descriptions


def test_one_module_per_subcommand_and_the_entry_point():
    for command in ("train", "quickstart", "flops"):
        module = importlib.import_module(f"regrow.cli.{command}")
        assert callable(getattr(module, f"add_{command}_parser"))
        assert callable(getattr(module, f"run_{command}"))
    assert build_parser().parse_args(["flops"]).command == "flops"
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("regrow") == "regrow.cli:main"


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["flops", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--match-flops" in out and "KEY=VALUE" in out


def comments(text: str) -> dict[str, str]:
    """``key: value  # comment`` lines → ``{"key: value": "comment"}``."""
    pairs = (re.match(r"^(\s*\S.*?)\s+# (.*)$", line) for line in text.splitlines())
    return {m.group(1).strip(): m.group(2) for m in pairs if m}


def test_print_config_describes_each_key_and_the_methods_own_arguments(capsys):
    argv = ["train", "--preset", "quickstart", "out_dir=x", "seed=4", "sparsity.args.alpha=0.5"]
    assert main([*argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    lines = comments(out)
    assert lines["seed: 4"] == descriptions()["seed"]
    assert lines["sparsity: 0.97"] == "fraction of zero weights over the sparse layers"
    assert lines["lr_milestones: [0.5, 0.75]"].startswith("learning-rate milestones")
    # RigL's arguments, resolved with their defaults, each with its description
    assert lines["delta_t: 100"] == "optimizer steps between mask updates (ΔT) (default 100)"
    assert lines["alpha: 0.5"].startswith("initial drop fraction")
    assert "redistribution: none" in lines
    assert "  args:" in out and "rigl's" in lines["args:"]


def test_print_config_is_loadable_as_a_preset(capsys, tmp_path: Path):
    overrides = ["out_dir=x", "sparsity.method=pruning", "sparsity.args.delta_t=7"]
    assert main(["train", "--preset", "cifar10_wrn22_2", *overrides, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "delta_t: 7" in out and "prune_begin: null" in out and "scope: layer" in out
    path = tmp_path / "printed.yaml"
    path.write_text(out)
    assert isinstance(yaml.safe_load(out), dict)
    printed, original = load_config(str(path)), load_config("cifar10_wrn22_2", overrides)
    assert printed.sparsity.method_args() == original.sparsity.method_args()
    printed.sparsity.args, original.sparsity.args = {}, {}
    assert printed == original


@pytest.mark.parametrize("method", ["static", "dense"])
def test_print_config_of_a_method_without_arguments(capsys, method: str):
    assert main(["train", "out_dir=x", f"sparsity.method={method}", "--print-config"]) == 0
    assert "args: {}" in capsys.readouterr().out


def test_version_and_bare_regrow_exit_0(capsys):
    import regrow

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"regrow {regrow.__version__}\n"
    assert main([]) == 0  # no subcommand: the help, on stdout, not an error
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("usage: regrow")
    for command in ("train", "quickstart", "flops", "--version"):
        assert command in captured.out


class _Stopped(Exception):
    """An exception the harness does not know, carrying its exit status (e.g. SIGTERM's)."""

    exit_code = 143


class _Terminated(KeyboardInterrupt):
    exit_code = 143


def test_run_harness_maps_statuses_to_one_line(capsys):
    from regrow.cli.common import run_harness
    from regrow.train import NonFiniteLossError

    def raising(error: BaseException):
        def work() -> int:
            raise error

        return work

    cases = [
        (_Stopped("stopped (SIGTERM) at step 7; resume with regrow train --resume r"), 143),
        (_Terminated("stopped (SIGTERM)"), 143),
        (KeyboardInterrupt(), 130),
        (NonFiniteLossError("loss is nan at step 3"), 3),
        (ValueError("line one\nline two"), 2),
        (PermissionError(13, "Permission denied", "/root/x"), 2),
    ]
    for error, status in cases:
        assert run_harness("train", raising(error)) == status
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("regrow train: "), err
    assert run_harness("train", raising(PermissionError(13, "Permission denied", "/x"))) == 2
    assert capsys.readouterr().err == "regrow train: error: Permission denied: /x\n"
    assert run_harness("train", raising(ValueError("a\nb"))) == 2
    assert capsys.readouterr().err == "regrow train: error: a; b\n"
    assert run_harness("train", raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "regrow train: interrupted\n"
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        run_harness("train", raising(RuntimeError("bug")))
    with pytest.raises(BrokenPipeError):  # main() ends quietly with 141
        run_harness("flops", raising(BrokenPipeError()))


# --- issue 18, item 12: options anywhere among KEY=VALUE arguments; errors name the subcommand
def test_options_between_key_value_arguments_as_sweep_takes_them(capsys):
    argv = ["flops", "--model", "wrn22_2", "sparsity.sparsity=0.9", "--json", "seed=1"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["sparsity"] == pytest.approx(0.9, abs=1e-4)
    argv = ["train", "--preset", "quickstart", "out_dir=x", "--print-config", "seed=4"]
    assert main(argv) == 0
    assert "seed: 4" in capsys.readouterr().out
    parser = build_parser()
    args = parser.parse_args(["quickstart", "train.epochs=1", "--seeds", "2", "seed_like=3"])
    assert (args.seeds, args.overrides) == (2, ["train.epochs=1", "seed_like=3"])
    args = parser.parse_args(["sweep", "main", "a=1", "--dry-run", "b=2"])
    assert (args.dry_run, args.overrides) == (True, ["a=1", "b=2"])


@pytest.mark.parametrize("command", ["train", "flops", "quickstart", "sweep", "report", "export"])
def test_an_unknown_option_is_one_line_naming_the_subcommand(capsys, command: str):
    positionals = {"sweep": ["main"], "report": ["runs/x"], "export": ["runs/x", "out"]}
    assert main([command, *positionals.get(command, []), "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"regrow {command}: error: unrecognized arguments: --bogus "
        f"(see `regrow {command} --help`)\n"
    )


# --- issue 18, item 11: Ctrl-C at any point of the start (torch's import included) is one line, 130
SRC = Path(__file__).resolve().parents[2] / "src"

#: A stand-in for torch whose import is interrupted: Ctrl-C while torch loads, every time.
INTERRUPTED_TORCH = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
raise SystemExit("the SIGINT was not delivered")
"""

#: What pip writes for the ``regrow`` console script.
CONSOLE_SCRIPT = """
import sys
from regrow.cli import main
if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize("form", ["python -m regrow", "regrow"])
def test_ctrl_c_while_torch_is_imported_is_one_line_and_130(tmp_path: Path, form: str):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(INTERRUPTED_TORCH)
    script = tmp_path / "bin" / "regrow"
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    start = ["-m", "regrow"] if form == "python -m regrow" else [str(script)]
    command = [sys.executable, *start, "train", "--preset", "quickstart", "out_dir=run"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(SRC)])}
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert "Traceback" not in done.stderr and done.stderr.count("\n") <= 1, done.stderr
    assert done.returncode == 130, done.stderr
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_main_builds_its_parser_or_imports_a_command(capsys, monkeypatch):
    import types

    import regrow.cli

    def interrupted(_subparsers):
        raise KeyboardInterrupt

    subcommands = [*regrow.cli._SUBCOMMANDS, ("late", interrupted)]
    monkeypatch.setattr(regrow.cli, "_SUBCOMMANDS", tuple(subcommands))
    assert main(["flops"]) == 130
    assert capsys.readouterr().err == "regrow: interrupted\n"
    monkeypatch.undo()

    class Interrupted(types.ModuleType):  # Ctrl-C while the handler imports its module
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "regrow.study.quickstart", Interrupted("q"))
    assert main(["quickstart", "--seeds", "1"]) == 130
    assert capsys.readouterr().err == "regrow quickstart: interrupted\n"


# --- issue 18, item 14: README's custom method imports from the working directory, no PYTHONPATH=.
README = Path(__file__).resolve().parents[2] / "README.md"


def test_readmes_custom_method_imports_from_the_working_directory(tmp_path: Path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "mymethods.py").write_text(next(b for b in blocks if "class NoisyRigL" in b))
    script = tmp_path / "bin" / "regrow"  # the console script: its folder, not the cwd, on sys.path
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    method = ["sparsity.method=mymethods:NoisyRigL", "sparsity.args.noise=0.2"]
    for argv in (
        ["train", "--preset", "quickstart", "out_dir=runs/noisy", *method, "--print-config"],
        ["flops", "--model", "digits_mlp", *method, "--json"],
    ):
        done = subprocess.run(
            [sys.executable, str(script), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert "noisy_rigl" in done.stdout


# --- issue 18, item 14: quickstart takes --out as sweep and report do (--out-dir still runs)
def test_quickstart_takes_out_like_sweep_and_report(capsys, monkeypatch, tmp_path: Path):
    import shlex

    from regrow.study import sweep

    parser = build_parser()
    assert parser.parse_args(["quickstart", "--out", "a"]).out == "a"
    assert parser.parse_args(["quickstart", "--out-dir", "b"]).out == "b"  # old commands
    assert parser.parse_args(["quickstart"]).out == "runs/quickstart"
    assert main(["quickstart", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--out DIR" in help_text and "--out-dir" not in help_text
    commands = []

    def interrupted(plan, executor, retry_failed, command):
        commands.append(command)
        return 130

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    out = str(tmp_path / "my runs" / "q")
    assert main(["quickstart", "--out-dir", out, "--seeds", "1", "train.epochs=1"]) == 130
    assert shlex.split(commands[0]) == [
        "regrow", "quickstart", "--out", out, "--seeds", "1", "train.epochs=1"
    ]  # fmt: skip
    assert main(["quickstart", "out_dir=x"]) == 2
    assert "(use --out)" in capsys.readouterr().err
