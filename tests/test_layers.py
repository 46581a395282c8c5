"""The import contracts of pyproject.toml hold for the package, and catch each upward import the
restructuring removed if it were put back (a copy of the package with the import added)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")

#: (file, the import put back, the contract that must then break)
UPWARD = [
    (
        "study/derived.py",
        "from ..cli.flops import flops_report",
        "Layers: imports only point down",
    ),
    (
        "train/loop.py",
        "from ..study.names import STUDY_FILE",
        "Layers: imports only point down",
    ),
    (
        "sparsity/methods/pruning.py",
        "from ...flops.training import method_training_flops",
        "The sparsity library imports nothing else of regrow",
    ),
    (
        "study/figures/common.py",
        "from .. import report",
        "No cycles between sibling packages or modules",
    ),
]


def _lint(tmp_path: Path, change: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` with this repository's contracts over a copy of ``src/regrow``, with one
    import line appended to one file when ``change`` says so."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "regrow", src / "regrow", ignore=shutil.ignore_patterns("*.pyc"))
    if change is not None:
        path = src / "regrow" / change[0]
        path.write_text(path.read_text(encoding="utf-8") + f"\n{change[1]}  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # the contracts as the repository states them
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],  # reads tmp_path/pyproject.toml
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") >= 5


@pytest.mark.parametrize("change", UPWARD, ids=[c[0] for c in UPWARD])
def test_an_upward_import_put_back_breaks_its_contract(tmp_path: Path, change) -> None:
    result = _lint(tmp_path, change[:2])
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(change[2]) for line in broken), result.stdout
