"""``regrow flops``: table and JSON output in the train config's keys, the --match-flops and
--small-dense forms, the paper's reference numbers, errors, and output cut short by a pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regrow.cli import main

WRN = ["flops", "--model", "wrn22_2"]
IMAGENET = ["flops", "model.name=resnet50_imagenet"]
SRC = Path(__file__).resolve().parents[2] / "src"


def run_json(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def dense_names(result: dict) -> list[str]:
    return [layer["name"] for layer in result["plan"]["layers"] if layer["role"] == "dense"]


def subprocess_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def test_table_output(capsys):
    argv = [*WRN, "sparsity.sparsity=0.8", "sparsity.distribution=erk", "sparsity.method=rigl"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "group3.2.conv2.weight" in out and "128x128x3x3" in out
    assert "dense inference FLOPs" in out and "3.1588e+08" in out
    assert "x dense training" in out
    assert out.count("\n") > 23  # one row per conv/linear layer
    assert "delta_t=100" in out and "97,656 steps" in out


def test_json_keys_and_consistency(capsys):
    result = run_json(
        capsys,
        *WRN,
        "sparsity.sparsity=0.9",
        "sparsity.distribution=uniform",
        "sparsity.method=rigl",
    )
    for key in (
        "dense_inference_flops",
        "inference_flops",
        "inference_flops_ratio",
        "train_flops_per_sample",
        "train_flops_ratio",
        "plan",
        "method_args",
        "layers",
    ):
        assert key in result
    assert len(result["layers"]) == 23
    assert result["inference_flops_ratio"] == pytest.approx(
        result["inference_flops"] / result["dense_inference_flops"]
    )
    assert sum(layer["flops"] for layer in result["layers"]) == pytest.approx(
        result["inference_flops"]
    )
    stem = result["layers"][0]
    assert stem["name"] == "conv1.weight" and stem["density"] == 1.0  # first layer dense by default
    assert dense_names(result) == ["conv1.weight"]
    assert result["plan"]["sparsity"] == 0.9 and result["plan"]["distribution"] == "uniform"
    assert result["method_args"]["delta_t"] == 100  # resolved with the method's defaults
    f_s, f_d = result["inference_flops"], result["dense_inference_flops"]
    assert result["train_flops_ratio"] == pytest.approx(
        (300 * f_s + 2 * f_s + f_d) / 101 / (3 * f_d)
    )
    assert result["train_flops_per_sample"] == pytest.approx(3 * f_d * result["train_flops_ratio"])


def test_multiplier_delta_t_and_every_layer_sparse(capsys):
    uniform = [*WRN, "sparsity.sparsity=0.8", "sparsity.distribution=uniform"]
    one = run_json(capsys, *uniform, "sparsity.method=rigl")
    five = run_json(capsys, *uniform, "sparsity.method=rigl", "train.multiplier=5")
    assert five["train_flops_ratio"] == pytest.approx(5 * one["train_flops_ratio"])
    assert five["total_steps"] == 5 * one["total_steps"] == 5 * 97_656
    every = run_json(capsys, *uniform, "sparsity.method=rigl", "sparsity.args.delta_t=1")
    assert every["train_flops_ratio"] > one["train_flops_ratio"]
    all_sparse = run_json(capsys, *uniform, "sparsity.method=static", "sparsity.dense_layers=[]")
    assert dense_names(all_sparse) == []
    assert all_sparse["layers"][0]["density"] == pytest.approx(0.2)
    assert all_sparse["inference_flops"] < one["inference_flops"]


def test_method_specific_training_ratios(capsys):
    common = [*WRN, "sparsity.sparsity=0.8", "sparsity.distribution=erk"]
    static = run_json(capsys, *common, "sparsity.method=static")
    snfs = run_json(capsys, *common, "sparsity.method=snfs")
    pruning = run_json(capsys, *common, "sparsity.method=pruning")
    dense = run_json(capsys, *WRN, "sparsity.method=dense")
    small = run_json(capsys, *common, "sparsity.method=small_dense")
    r = static["inference_flops_ratio"]
    assert static["train_flops_ratio"] == pytest.approx(r)
    assert snfs["train_flops_ratio"] == pytest.approx((2 * r + 1) / 3)
    assert pruning["pruning_schedule"] == {
        "total_steps": 97656,
        "begin": 20000,
        "end": 75000,
        "every": 1000,
    }
    assert r < pruning["train_flops_ratio"] < 1
    assert pruning["mean_inference_flops"] > pruning["inference_flops"]
    assert dense["train_flops_ratio"] == 1.0 and dense["inference_flops_ratio"] == 1.0
    assert dense["sparsity"] == 0.0 and dense_names(dense) == [
        layer["name"] for layer in dense["layers"]
    ]
    assert 0 < small["model_width"] < 1 and small["train_flops_ratio"] == pytest.approx(
        small["inference_flops_ratio"]
    )
    # Small-Dense: the narrow model's FLOPs over the full-width dense model's
    assert small["dense_inference_flops"] == dense["dense_inference_flops"]
    assert small["inference_flops"] < small["dense_inference_flops"]


def test_paper_reference_numbers_on_resnet50_imagenet(capsys):
    rigl_5x = run_json(
        capsys, *IMAGENET, "sparsity.method=rigl", "sparsity.sparsity=0.8",
        "sparsity.distribution=erk", "sparsity.dense_layers=[]", "sparsity.args.delta_t=100",
        "train.multiplier=5",
    )  # fmt: skip
    assert rigl_5x["train_flops_ratio"] == pytest.approx(2.083, abs=5e-4)
    assert rigl_5x["inference_flops_ratio"] == pytest.approx(0.415, abs=5e-4)
    pruning = run_json(
        capsys, *IMAGENET, "sparsity.method=pruning", "sparsity.sparsity=0.8",
        "sparsity.distribution=uniform",
    )  # fmt: skip
    assert pruning["train_flops_ratio"] == pytest.approx(0.570, abs=5e-4)
    assert dense_names(pruning) == ["conv1.weight"]
    assert pruning["pruning_schedule"] == {
        "total_steps": 32000,
        "begin": 10000,
        "end": 25000,
        "every": 1000,
    }
    assert (pruning["method_args"]["prune_begin"], pruning["method_args"]["prune_end"]) == (
        10000,
        25000,
    )


def test_total_steps_and_a_given_pruning_window(capsys):
    common = [*IMAGENET, "sparsity.method=pruning", "train.multiplier=2"]
    scaled = run_json(capsys, *common)
    assert scaled["pruning_schedule"] == {
        "total_steps": 64000,
        "begin": 20000,
        "end": 50000,
        "every": 1000,
    }
    given = run_json(capsys, *common, "sparsity.args.prune_begin=5000", "--total-steps", "40000")
    assert given["pruning_schedule"] == {
        "total_steps": 40000,
        "begin": 5000,
        "end": 31250,  # not given: ImageNet's 25,000 of 32,000, scaled to the run
        "every": 1000,
    }
    cifar = run_json(capsys, *WRN, "sparsity.method=pruning", "--total-steps", "9766")
    assert cifar["pruning_schedule"] == {
        "total_steps": 9766,
        "begin": 2000,
        "end": 7500,
        "every": 1000,
    }


def test_a_users_own_method_is_counted_from_its_traits(capsys, tmp_path, monkeypatch):
    # Not registered: package.module:ClassName is imported and used as it is.
    (tmp_path / "my_methods.py").write_text(
        textwrap.dedent(
            """
            import torch
            import regrow
            from regrow.sparsity.base import Traits

            class DenseGradGrow(regrow.DynamicSparsifier):
                name = "dense_grad_grow_test"
                traits = Traits(
                    needs_total_steps=True, conserves_active_counts=True, dense_backward="always"
                )

                def grow_scores(self, step, index, grad):
                    return torch.zeros_like(self.params[index]) if grad is None else grad.abs()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    common = [*WRN, "sparsity.sparsity=0.8"]
    own = run_json(capsys, *common, "sparsity.method=my_methods:DenseGradGrow")
    snfs = run_json(capsys, *common, "sparsity.method=snfs")
    assert own["method"] == "dense_grad_grow_test"
    assert own["train_flops_ratio"] == pytest.approx(snfs["train_flops_ratio"])


def test_match_flops_form(capsys):
    argv = [*WRN, "sparsity.sparsity=0.8", "sparsity.distribution=erk", "--match-flops", "uniform"]
    result = run_json(capsys, *argv)
    assert result["matched_sparsity"] > 0.8
    assert result["inference_flops"] == pytest.approx(result["target_inference_flops"], rel=1e-6)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"erk at sparsity {result['matched_sparsity']:.6f}" in out and "same as uniform" in out
    ratio = run_json(capsys, *WRN, "--match-flops", "0.25")
    assert ratio["inference_flops_ratio"] == pytest.approx(0.25, rel=1e-6)


def test_small_dense_form(capsys):
    argv = [*WRN, "sparsity.sparsity=0.9", "sparsity.distribution=erk", "--small-dense"]
    result = run_json(capsys, *argv)
    assert 0 < result["model_width"] < 1
    assert (
        abs(result["small_dense_params"] - result["target_params"]) / result["target_params"] < 0.01
    )
    trained = run_json(capsys, *WRN, "sparsity.sparsity=0.9", "sparsity.method=small_dense")
    assert trained["model_width"] == result["model_width"]
    assert main(argv) == 0
    assert "Small-Dense width multiplier" in capsys.readouterr().out


def test_python_dash_m_regrow_json():
    argv = ["flops", "--model", "lenet300_100", "sparsity.sparsity=0.9", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "regrow", *argv],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "lenet300_100" and len(result["layers"]) == 3
    assert 0 < result["inference_flops_ratio"] < result["train_flops_ratio"] < 1


def test_output_cut_short_by_head_has_no_traceback():
    command = f"{sys.executable} -m regrow flops --model resnet50_imagenet | head -1"
    done = subprocess.run(
        command, shell=True, capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert done.stdout.startswith("model resnet50_imagenet") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    # The same with the reader gone before anything is written (the write surely fails).
    process = subprocess.Popen(
        [sys.executable, "-m", "regrow", "flops", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert err == "", err


# --- issue 18, item 13: an --input-shape with an empty or non-numeric size is refused
@pytest.mark.parametrize("shape", ["3,x,32", "3,,32", "3,32,32,", "3x", "3, 32, a"])
def test_an_input_shape_with_a_bad_size_is_one_line(capsys, shape: str):
    assert main([*WRN, "--input-shape", shape]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regrow flops: error: --input-shape {shape!r} is not a shape: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("shape", ["3,32,32", "3x32x32", "3, 32, 32"])
def test_an_input_shape_by_commas_or_x_is_read(capsys, shape: str):
    assert run_json(capsys, *WRN, "--input-shape", shape)["input_shape"] == [3, 32, 32]
