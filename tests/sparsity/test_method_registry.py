"""A new method is one file: a method written outside the package (tests/sparsity/custom_method.py) gets the
contract test, training FLOPs, `regrow train` and `regrow flops` with no edit in the package; and a
method's own arguments reach it from a config, validated against its dataclass."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import regrow
from tests.helpers import MODELS, OPTIMIZERS
from tests.sparsity.test_contract import test_contract as contract

TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
CLASS = "custom_method:NoisyRigL"


@pytest.fixture
def noisy_rigl(monkeypatch):
    """The user's method, registered for one test (so registry listings elsewhere stay as they
    are). Imported as a top-level module from its folder, as a user's file would be."""
    monkeypatch.syspath_prepend(str(TESTS))
    cls = regrow.register(importlib.import_module("custom_method").NoisyRigL)
    yield cls
    regrow.METHODS.pop(cls.name, None)


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_user_method_passes_the_contract_test(noisy_rigl, model_name, optimizer_name) -> None:
    contract(noisy_rigl.name, model_name, optimizer_name)


def test_a_user_method_gets_training_flops_from_its_traits(noisy_rigl) -> None:
    f_s, f_d = 1.0, 10.0
    assert regrow.train_flops_per_sample(CLASS, f_s, f_d, delta_t=50) == pytest.approx(
        (150 + 2 + 10) / 51
    )
    model = MODELS["mlp"][0]()
    profile = regrow.profile_model(model, (20,))
    plan = regrow.AllocationPlan.build(model, 0.9, "erk")
    ours = regrow.method_training_flops(noisy_rigl, noisy_rigl.Args(), profile, plan, 1000)
    rigl = regrow.method_training_flops("rigl", regrow.RigL.Args(), profile, plan, 1000)
    assert ours == rigl  # the same traits and default ΔT: the same cost


def test_a_user_method_trains_through_the_cli_by_import_path(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "regrow", "train", "--preset", "quickstart", f"out_dir={out}",
        "train.epochs=2", f"sparsity.method={CLASS}", "sparsity.args.noise=0.5",
        "sparsity.args.delta_t=10",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_args"]["noise"] == 0.5 and summary["method_args"]["delta_t"] == 10
    assert summary["method_args"]["alpha"] == 0.3  # resolved default
    assert 0.96 < summary["sparsity"] < 0.98


def test_a_user_method_is_counted_by_regrow_flops() -> None:
    def flops(method: str) -> dict:
        command = [
            sys.executable, "-m", "regrow", "flops", "--model", "wrn22_2", "--json",
            f"sparsity.method={method}", "sparsity.args.delta_t=50",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    ours, rigl = flops(CLASS), flops("rigl")
    assert ours["method"] == "noisy_rigl" and ours["method_args"]["noise"] == 0.1
    assert ours["train_flops_ratio"] == pytest.approx(rigl["train_flops_ratio"])
    assert 0.3 < ours["train_flops_ratio"] < 0.4  # ERK 0.8 on WRN-22-2 with ΔT = 50
