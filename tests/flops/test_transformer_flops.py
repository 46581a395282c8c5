"""FLOPs of the character-level GPT by hand (SPEC §7 with the weightless attention matmuls): every
linear layer ``outputs · (2 · density · fan_in + 1)``, attention's q kᵀ and its product with v
``2 · fan_in · outputs`` and always dense, embeddings and norms free; the table, the training
counter and ``regrow flops`` on the language-model task."""

from __future__ import annotations

import json

import pytest
import torch

import regrow
from regrow.cli import main
from regrow.flops import TrainingFlopsCounter, count_flops
from regrow.models.transformer import CharGPT

# The configuration counted by hand: vocabulary V, window T, model width d, heads h, blocks.
V, T, D, HEADS, LAYERS = 7, 5, 8, 2, 2
HEAD_DIM = D // HEADS  # 4


def model() -> CharGPT:
    torch.manual_seed(0)
    return CharGPT(V, block_size=T, d_model=D, layers=LAYERS, heads=HEADS)


def block_names(b: int) -> list[str]:
    """The rows of block ``b``, in the order its modules are registered."""
    return [
        f"blocks.{b}.attn.query.weight",
        f"blocks.{b}.attn.key.weight",
        f"blocks.{b}.attn.value.weight",
        f"blocks.{b}.attn.sdpa.scores",
        f"blocks.{b}.attn.sdpa.mix",
        f"blocks.{b}.attn.out.weight",
        f"blocks.{b}.fc.weight",
        f"blocks.{b}.proj.weight",
    ]


NAMES = [*block_names(0), *block_names(1), "head.weight"]


def hand_count(density: dict[str, float]) -> dict[str, float]:
    """Each row's FLOPs for one window of T = 5 tokens, written out from the numbers above
    (d = 8, 4d = 32, V = 7, 2 heads of 4); a layer missing from ``density`` is dense."""
    flops = {}
    for b in range(LAYERS):
        p = f"blocks.{b}."

        def dens(name: str, p: str = p) -> float:
            return density.get(p + name, 1.0)

        # q, k, v, out: each of the 5 × 8 outputs reads 8 inputs.
        for name in ("attn.query.weight", "attn.key.weight", "attn.value.weight"):
            flops[p + name] = 5 * 8 * (2 * dens(name) * 8 + 1)
        # scores: 2 heads × 5 × 5 dot products over head_dim 4; mix: 2 heads × 5 × 4 sums over 5.
        flops[p + "attn.sdpa.scores"] = 2 * 4 * (2 * 5 * 5)
        flops[p + "attn.sdpa.mix"] = 2 * 5 * (2 * 5 * 4)
        flops[p + "attn.out.weight"] = 5 * 8 * (2 * dens("attn.out.weight") * 8 + 1)
        # fc: 5 × 32 outputs reading 8; proj: 5 × 8 outputs reading 32.
        flops[p + "fc.weight"] = 5 * 32 * (2 * dens("fc.weight") * 8 + 1)
        flops[p + "proj.weight"] = 5 * 8 * (2 * dens("proj.weight") * 32 + 1)
    flops["head.weight"] = 5 * 7 * (2 * density.get("head.weight", 1.0) * 8 + 1)
    return flops


def rows(report) -> dict[str, float]:
    return {layer.name: layer.flops for layer in report.layers}


def test_the_hand_count_itself():
    dense = hand_count({})
    assert dense["blocks.0.attn.query.weight"] == 680  # 40 · 17
    assert dense["blocks.0.attn.sdpa.scores"] == dense["blocks.0.attn.sdpa.mix"] == 400
    assert dense["blocks.0.fc.weight"] == 2720 and dense["blocks.0.proj.weight"] == 2600
    assert dense["head.weight"] == 595
    assert sum(dense.values()) == 2 * (4 * 680 + 2 * 400 + 2720 + 2600) + 595 == 18_275


def test_dense_rows_match_the_hand_count_by_name_order_and_value():
    report = count_flops(model(), (T,))
    assert [layer.name for layer in report.layers] == NAMES  # no embedding, norm or bias row
    assert rows(report) == hand_count({})
    assert report.inference_flops == report.dense_inference_flops == 18_275
    attention = [layer for layer in report.layers if layer.kind == "matmul"]
    assert [layer.name for layer in attention] == [n for n in NAMES if ".sdpa." in n]
    assert all(layer.weight_shape == () and layer.density == 1.0 for layer in attention)


def test_explicit_densities_scale_only_their_layers():
    density = {
        "blocks.0.attn.query.weight": 0.5,
        "blocks.0.attn.key.weight": 0.25,
        "blocks.0.attn.value.weight": 0.75,
        "blocks.0.attn.out.weight": 0.125,
        "blocks.0.fc.weight": 0.5,
        "blocks.0.proj.weight": 0.25,
        "blocks.1.fc.weight": 0.0625,
        "head.weight": 0.5,
    }
    report = count_flops(model(), (T,), density)
    expected = hand_count(density)
    assert rows(report) == pytest.approx(expected)
    assert expected["blocks.0.attn.query.weight"] == 5 * 8 * (2 * 0.5 * 8 + 1) == 360
    assert expected["blocks.0.proj.weight"] == 5 * 8 * (2 * 0.25 * 32 + 1) == 680
    assert rows(report)["blocks.1.attn.query.weight"] == 680  # not named: dense
    assert rows(report)["blocks.0.attn.sdpa.scores"] == 400  # weightless: never sparse
    assert report.inference_flops == pytest.approx(sum(expected.values()))
    assert report.dense_inference_flops == 18_275
    # An embedding's or a norm's density is accepted and costs nothing.
    free = count_flops(model(), (T,), {"tokens.weight": 0.1, "norm.weight": 0.5})
    assert free.inference_flops == 18_275


def test_rigl_plan_at_0_8_erk_matches_the_hand_count():
    net = model()
    sp = regrow.RigL(
        net,
        torch.optim.AdamW(net.parameters()),
        sparsity=0.8,
        distribution="erk",
        total_steps=50,
        delta_t=10,
    )
    density = sp.densities()
    assert sorted(density) == sorted(
        n for n in NAMES if n.startswith("blocks.") and "sdpa" not in n
    )
    assert all(value < 1.0 for value in density.values())
    report = count_flops(net, (T,), sp)
    assert rows(report) == pytest.approx(hand_count(density))
    assert {layer.name: layer.density for layer in report.layers}["head.weight"] == 1.0
    assert report.inference_flops < 18_275
    assert report.inference_flops == pytest.approx(sum(hand_count(density).values()))
    # the plan's target densities (before rounding active counts down) are counted the same way
    planned = count_flops(net, (T,), sp.plan)
    assert rows(planned) == pytest.approx(hand_count(sp.plan.densities()))
    assert planned.inference_flops == pytest.approx(report.inference_flops, rel=0.01)


def test_attention_grows_with_the_square_of_the_window_and_linear_layers_linearly():
    short = rows(count_flops(model(), (3,)))
    assert short["blocks.0.attn.sdpa.scores"] == 2 * 4 * (2 * 3 * 3) == 144
    assert short["blocks.0.attn.sdpa.mix"] == 2 * 3 * (2 * 3 * 4) == 144
    assert short["blocks.0.attn.query.weight"] == 3 * 8 * (2 * 8 + 1)
    assert short["head.weight"] == 3 * 7 * (2 * 8 + 1)


def test_the_table_prints_the_attention_rows():
    table = count_flops(model(), (T,)).table()
    lines = table.splitlines()
    for name in ("blocks.0.attn.sdpa.scores", "blocks.1.attn.sdpa.mix"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert "4.0000e+02" in line and "1.0000" in line
    assert "tokens" not in table and "positions" not in table and "norm" not in table
    assert "1.8275e+04" in table


def test_training_counter_uses_the_same_counts():
    net = model()
    density = {name: 0.5 for name in NAMES if name.startswith("blocks.") and "sdpa" not in name}
    f_s = sum(hand_count(density).values())
    f_d = 18_275
    counter = TrainingFlopsCounter.from_model(net, (T,), density)
    assert counter.sparse_flops == pytest.approx(f_s) and counter.dense_flops == f_d
    counter.step(samples=4)
    counter.step(dense_backward=True, samples=4)
    assert counter.train_flops == pytest.approx(4 * 3 * f_s + 4 * (2 * f_s + f_d))
    assert counter.ratio == pytest.approx((5 * f_s + f_d) / (6 * f_d))


TEXT = ["flops", "model.name=char_gpt", "data.name=text", "data.block_size=16"]


def test_regrow_flops_on_the_language_model(capsys):
    assert main(TEXT) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.sdpa.scores" in out and "blocks.1.attn.sdpa.mix" in out
    assert "dense layers: head.weight" in out
    assert "tokens.weight" not in out and "norm" not in out

    assert main([*TEXT, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    layers = {layer["name"]: layer for layer in result["layers"]}
    # char_gpt: d_model 128, 4 heads of 32, T = 16
    assert layers["blocks.0.attn.sdpa.scores"]["flops"] == 2 * 32 * (4 * 16 * 16) == 65_536
    assert layers["blocks.1.attn.sdpa.mix"]["flops"] == 2 * 16 * (4 * 16 * 32) == 65_536
    assert layers["blocks.0.attn.query.weight"]["dense_flops"] == 16 * 128 * (2 * 128 + 1)
    vocabulary = layers["head.weight"]["shape"][0]
    assert layers["head.weight"]["density"] == 1.0
    assert layers["head.weight"]["flops"] == 16 * vocabulary * (2 * 128 + 1)
    assert layers["blocks.0.fc.weight"]["density"] < 1.0
    assert sum(layer["flops"] for layer in result["layers"]) == pytest.approx(
        result["inference_flops"]
    )
    assert result["train_flops_ratio"] < 1.0
