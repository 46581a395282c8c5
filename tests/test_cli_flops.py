"""``regrow flops``: table and JSON output, the --match-flops and --small-dense forms, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regrow.cli import main

WRN = ["flops", "--model", "wrn22_2"]


def run_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_output(capsys):
    argv = [*WRN, "--sparsity", "0.8", "--distribution", "erk", "--method", "rigl"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "group3.2.conv2.weight" in out and "128x128x3x3" in out
    assert "dense inference FLOPs" in out and "3.1588e+08" in out
    assert "x dense training" in out
    assert out.count("\n") > 23  # one row per conv/linear layer


def test_json_keys_and_consistency(capsys):
    result = run_json(
        capsys, *WRN, "--sparsity", "0.9", "--distribution", "uniform", "--method", "rigl"
    )
    for key in (
        "dense_inference_flops",
        "inference_flops",
        "inference_ratio",
        "train_ratio",
        "layers",
    ):
        assert key in result
    assert len(result["layers"]) == 23
    assert result["inference_ratio"] == pytest.approx(
        result["inference_flops"] / result["dense_inference_flops"]
    )
    assert sum(layer["flops"] for layer in result["layers"]) == pytest.approx(
        result["inference_flops"]
    )
    stem = result["layers"][0]
    assert stem["name"] == "conv1.weight" and stem["density"] == 1.0  # first layer dense by default
    assert result["dense_layers"] == ["conv1.weight"]
    f_s, f_d = result["inference_flops"], result["dense_inference_flops"]
    assert result["train_ratio"] == pytest.approx((300 * f_s + 2 * f_s + f_d) / 101 / (3 * f_d))


def test_multiplier_delta_t_and_dense_layers_none(capsys):
    one = run_json(
        capsys, *WRN, "--sparsity", "0.8", "--distribution", "uniform", "--method", "rigl"
    )
    five = run_json(
        capsys, *WRN, "--sparsity", "0.8", "--distribution", "uniform", "--method", "rigl",
        "--multiplier", "5",
    )  # fmt: skip
    assert five["train_ratio"] == pytest.approx(5 * one["train_ratio"])
    every = run_json(
        capsys, *WRN, "--sparsity", "0.8", "--distribution", "uniform", "--method", "rigl",
        "--delta-t", "1",
    )  # fmt: skip
    assert every["train_ratio"] > one["train_ratio"]
    all_sparse = run_json(
        capsys, *WRN, "--sparsity", "0.8", "--distribution", "uniform", "--method", "static",
        "--dense-layers", "none",
    )  # fmt: skip
    assert all_sparse["dense_layers"] == []
    assert all_sparse["layers"][0]["density"] == pytest.approx(0.2)
    assert all_sparse["inference_flops"] < one["inference_flops"]


def test_method_specific_training_ratios(capsys):
    common = [*WRN, "--sparsity", "0.8", "--distribution", "erk"]
    static = run_json(capsys, *common, "--method", "static")
    snfs = run_json(capsys, *common, "--method", "snfs")
    pruning = run_json(capsys, *common, "--method", "pruning")
    dense = run_json(capsys, *WRN, "--method", "dense")
    small = run_json(capsys, *common, "--method", "small_dense")
    r = static["inference_ratio"]
    assert static["train_ratio"] == pytest.approx(r)
    assert snfs["train_ratio"] == pytest.approx((2 * r + 1) / 3)
    assert pruning["pruning_schedule"] == {
        "total_steps": 97656,
        "begin": 20000,
        "end": 75000,
        "every": 1000,
    }
    assert r < pruning["train_ratio"] < 1
    assert dense["train_ratio"] == 1.0 and dense["inference_ratio"] == 1.0
    assert 0 < small["width"] < 1 and small["train_ratio"] == pytest.approx(
        small["inference_ratio"]
    )


def test_match_flops_form(capsys):
    result = run_json(
        capsys, *WRN, "--sparsity", "0.8", "--distribution", "erk", "--match-flops", "uniform"
    )
    assert result["matched_sparsity"] > 0.8
    assert result["inference_flops"] == pytest.approx(result["target_inference_flops"], rel=1e-6)
    assert (
        main([*WRN, "--sparsity", "0.8", "--distribution", "erk", "--match-flops", "uniform"]) == 0
    )
    out = capsys.readouterr().out
    assert f"erk at sparsity {result['matched_sparsity']:.6f}" in out and "same as uniform" in out


def test_small_dense_form(capsys):
    result = run_json(capsys, *WRN, "--sparsity", "0.9", "--distribution", "erk", "--small-dense")
    assert 0 < result["width"] < 1
    assert (
        abs(result["small_dense_params"] - result["target_params"]) / result["target_params"] < 0.01
    )
    assert main([*WRN, "--sparsity", "0.9", "--distribution", "erk", "--small-dense"]) == 0
    assert "Small-Dense width multiplier" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["flops", "--model", "vgg16", "--sparsity", "0.8"],
            ["'vgg16'", "wrn22_2", "resnet50_imagenet"],
        ),
        ([*WRN, "--sparsity", "1.5"], ["1.5", "0 <= --sparsity < 1"]),
        ([*WRN, "--sparsity", "0.8", "--method", "lottery"], ["'lottery'", "rigl", "small_dense"]),
        ([*WRN, "--sparsity", "0.8", "--distribution", "gaussian"], ["'gaussian'", "erk"]),
        ([*WRN, "--sparsity", "0.8", "--match-flops", "0.001"], ["cannot reach", "'erk'"]),
        ([*WRN, "--sparsity", "0.8", "--match-flops", "normal"], ["'normal'", "uniform"]),
        ([*WRN, "--sparsity", "0.8", "--dense-layers", "stem"], ["'stem'", "conv1.weight"]),
        ([*WRN, "--method", "rigl"], ["--sparsity is required"]),
        ([*WRN, "--sparsity", "0.8", "--multiplier", "0"], ["--multiplier"]),
        ([*WRN, "--sparsity", "0.8", "--input-shape", "1,28,28"], ["--input-shape", "(1, 28, 28)"]),
    ],
)
def test_bad_input_exits_2_naming_the_value(capsys, args, needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err


def test_argparse_errors_return_2(capsys):
    assert main(["flops"]) == 2  # --model missing
    assert main(["nonsense"]) == 2
    assert main([*WRN, "--sparsity", "abc"]) == 2
    assert "abc" in capsys.readouterr().err


def test_python_dash_m_regrow_json():
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["flops", "--model", "lenet300_100", "--sparsity", "0.9", "--method", "rigl", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "regrow", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "lenet300_100" and len(result["layers"]) == 3
    assert 0 < result["inference_ratio"] < result["train_ratio"] < 1
