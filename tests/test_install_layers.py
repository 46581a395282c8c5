"""Dependencies by layer: ``pip install regrow`` (torch and numpy) is the whole library, and a
command whose extra is missing says which one to install in one line, status 2.

Each check runs in a subprocess whose import system refuses every optional module, so it holds
in the full environment and in one without the extras alike (CI runs this file in both).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regrow.cli.common import OPTIONAL_MODULES, missing_extra

#: Run first in every subprocess: the optional modules cannot be imported, installed or not. A
#: ``None`` in ``sys.modules`` makes ``import x`` raise ModuleNotFoundError (name ``x``) and
#: ``importlib.util.find_spec("x")`` answer ``None``, as for a package that is absent; a
#: ``sys.meta_path`` finder that raised would also break torch's own ``find_spec`` probes.
BLOCK_OPTIONAL = textwrap.dedent(
    """
    import sys

    BLOCKED = {"omegaconf", "yaml", "tqdm", "sklearn", "matplotlib", "optuna", "submitit",
               "tensorboard"}
    sys.modules.update(dict.fromkeys(BLOCKED))
    """
)

LIBRARY = textwrap.dedent(
    """
    import torch
    from torch import nn

    import regrow
    from regrow.flops import count_flops

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = regrow.RigL(model, optimizer, sparsity=0.5, total_steps=4, delta_t=1)
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.randn(2, 8)).sum().backward()
        if sparsifier.step():
            optimizer.step()
    report = count_flops(model, (8,), sparsifier)
    assert 0 < report.inference_flops < report.dense_inference_flops
    print("library ok", sorted(m for m in BLOCKED if sys.modules[m] is not None))
    """
)

CLI = "import runpy\nrunpy.run_module('regrow', run_name='__main__', alter_sys=True)\n"


def run_without_extras(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_OPTIONAL + code, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def test_import_regrow_and_the_library_need_no_extra():
    done = run_without_extras(LIBRARY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "library ok []"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "quickstart", "train.epochs=1"],
        ["train", "--help"],
        ["report", "some_study_dir"],
        ["quickstart"],
        ["sweep", "quickstart", "--dry-run"],
    ],
)
def test_a_command_names_its_missing_extra_in_one_line(argv, tmp_path):
    done = run_without_extras(CLI, *argv)
    command = argv[0]
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        f"regrow {command}: error: needs the harness extra (no module named 'yaml'): "
        'pip install "regrow[harness]"\n'
    )


def test_help_lists_every_command_without_the_extras():
    done = run_without_extras(CLI, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("train", "quickstart", "flops", "export", "bench-inference", "report", "sweep"):
        assert f"    {command} " in done.stdout or f"    {command}\n" in done.stdout
    assert 'pip install "regrow[harness]"' in done.stdout


def test_each_optional_module_maps_to_its_extra():
    line = missing_extra(
        ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib.pyplot")
    )
    assert (
        line
        == "needs the report extra (no module named 'matplotlib'): pip install \"regrow[report]\""
    )
    assert missing_extra(ModuleNotFoundError("x", name="optuna")).endswith('"regrow[search]"')
    assert missing_extra(ModuleNotFoundError("x", name="submitit")).endswith('"regrow[slurm]"')
    assert missing_extra(ModuleNotFoundError("x", name="numpy_not_optional")) is None
    assert missing_extra(ImportError("x", name="yaml")) is None  # only a module that is absent
    assert missing_extra(ValueError("yaml")) is None


def test_every_extra_the_cli_names_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    path = next(  # the repository root, wherever this file sits under tests/
        parent / "pyproject.toml"
        for parent in Path(__file__).resolve().parents
        if (parent / "pyproject.toml").exists()
    )
    with path.open("rb") as file:
        project = tomllib.load(file)["project"]
    assert sorted(project["dependencies"]) == sorted(
        d for d in project["dependencies"] if d.startswith(("torch", "numpy"))
    )
    extras = project["optional-dependencies"]
    assert set(OPTIONAL_MODULES.values()) <= set(extras)
    assert {"harness", "report", "search", "slurm", "all", "test"} <= set(extras)
