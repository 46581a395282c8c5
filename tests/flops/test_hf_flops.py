"""FLOPs of Hugging Face models (SPEC §7): a ``Conv1D`` (a linear layer stored ``[in, out]``) is
counted as the linear layer it is, ``T · out · (2 · d · in + 1)``; the input of a model that meets
an embedding first is token ids; a tied head costs its matmul, dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # a tiny vocabulary has no GPT-2 bos/eos token

from transformers.pytorch_utils import Conv1D  # noqa: E402

V, T, D = 50, 8, 32


def gpt2(tied: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=D, n_head=2, vocab_size=V, n_positions=32)
    config.tie_word_embeddings = tied
    return transformers.GPT2LMHeadModel(config)


def test_gpt2_conv1d_layers_count_as_linear_layers_at_the_live_densities() -> None:
    model = gpt2()
    sp = regrow.RigL(
        model, torch.optim.AdamW(model.parameters()), sparsity=0.9, total_steps=100, delta_t=10
    )
    report = regrow.count_flops(model, (T,), sp)  # token ids: the input meets an embedding
    rows = {row.name: row for row in report.layers}
    densities = sp.densities()
    conv1d = {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, Conv1D)
    }
    assert set(conv1d) == set(sp.names) and len(conv1d) == 8
    for name, module in conv1d.items():
        n_in, n_out = module.weight.shape
        row = rows[name]
        assert row.kind == "linear" and row.output_shape == (T, n_out)
        assert row.density == densities[name] < 1
        assert row.flops == pytest.approx(T * n_out * (2 * densities[name] * n_in + 1))
        assert row.dense_flops == T * n_out * (2 * n_in + 1)
    # The tied head (the embedding) costs its matmul, dense; nothing else is counted (GPT-2's
    # attention matmuls are no module of their own).
    head = rows["lm_head.weight"]
    assert head.density == 1.0 and head.flops == T * V * (2 * D + 1)
    assert set(rows) == {*conv1d, "lm_head.weight"}
    assert report.inference_flops == pytest.approx(sum(row.flops for row in report.layers))
    # Saying so gives the same count; the plan's target densities give nearly the same.
    assert regrow.count_flops(model, (T,), sp, input_dtype=torch.long) == report
    planned = regrow.profile_model(model, (T,)).inference_flops(sp.plan)
    assert planned == pytest.approx(report.inference_flops, rel=1e-3)


def test_a_conv1d_costs_what_the_equivalent_linear_layer_costs() -> None:
    torch.manual_seed(0)
    conv1d, linear = Conv1D(12, 5), nn.Linear(5, 12)  # Conv1D(nf=out, nx=in)
    assert conv1d.weight.shape == (5, 12) and linear.weight.shape == (12, 5)
    for densities in (None, {"weight": 0.25}):
        a = regrow.count_flops(conv1d, (T, 5), densities)
        b = regrow.count_flops(linear, (T, 5), densities)
        assert a.inference_flops == b.inference_flops
        assert a.layers[0].kind == b.layers[0].kind == "linear"
    assert a.inference_flops == T * 12 * (2 * 0.25 * 5 + 1)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_bert_and_llama_count_every_linear_layer(family: str) -> None:
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(
            hidden_size=D,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=V,
        )
        model = transformers.BertForMaskedLM(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=D,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=V,
        )
        model = transformers.LlamaForCausalLM(config)
    sp = regrow.SET(
        model, torch.optim.AdamW(model.parameters()), sparsity=0.8, total_steps=100, delta_t=10
    )
    report = regrow.count_flops(model, (T,), sp)
    linear = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {row.name for row in report.layers} == set(linear)
    densities = sp.densities()
    for row in report.layers:
        n_out, n_in = linear[row.name].weight.shape
        density = densities.get(row.name, 1.0)
        assert row.flops == pytest.approx(T * n_out * (2 * density * n_in + 1))


def test_input_dtype_must_be_a_dtype_and_a_float_sample_says_what_to_pass() -> None:
    model = gpt2()
    with pytest.raises(ValueError, match=r"input_dtype='long' is not a torch\.dtype"):
        regrow.count_flops(model, (T,), input_dtype="long")
    with pytest.raises(ValueError, match=r"token ids: input_dtype=torch\.long"):
        regrow.count_flops(model, (T,), input_dtype=torch.float32)
