"""The character-level GPT: causal, its output shape, the tied head, the default plan (the head
dense, embeddings, norms and biases outside it), width for Small-Dense, the block_size check and
the two registered sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow
from regrow.models import MODELS, get_model
from regrow.models.transformer import CharGPT
from regrow.sparsity.methods.small_dense import kept_parameter_count, parameter_count
from regrow.sparsity.plan import AllocationPlan

V, T = 11, 8


def tiny(**kwargs) -> CharGPT:
    torch.manual_seed(0)
    settings = {"block_size": T, "d_model": 16, "layers": 2, "heads": 2, **kwargs}
    return CharGPT(V, **settings)


def block_weights(layers: int) -> list[str]:
    return [
        f"blocks.{b}.{name}.weight"
        for b in range(layers)
        for name in ("attn.query", "attn.key", "attn.value", "attn.out", "fc", "proj")
    ]


def test_output_shape():
    model = tiny()
    tokens = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(0))
    assert model(tokens).shape == (3, T, V)
    assert model(tokens[:, :5]).shape == (3, 5, V)  # shorter than block_size is fine


@pytest.mark.parametrize("t", [0, 3, T - 1])
def test_causal_a_token_changes_no_earlier_logit_and_some_later_ones(t):
    model = tiny().eval()
    tokens = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, t] = (tokens[:, t] + 1) % V
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :t], after[:, :t]), "an earlier position saw a later token"
    difference = (before - after).abs().amax(dim=(0, 2))  # per position
    assert torch.all(difference[t:] > 1e-6), difference


def test_tied_head_shares_the_token_embedding_and_stays_dense_under_rigl():
    model = tiny(tied=True)
    assert model.head.weight is model.tokens.weight
    names = [name for name, _ in model.named_parameters()]
    assert "tokens.weight" in names and "head.weight" not in names  # one tensor, listed once
    untied = tiny()
    assert untied.head.weight is not untied.tokens.weight

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = regrow.RigL(model, optimizer, sparsity=0.9, total_steps=100, delta_t=10)
    assert sp.names == block_weights(2)  # all block weights sparse, the shared tensor not
    assert "tokens.weight" not in sp.masks and "head.weight" not in sp.masks
    generator = torch.Generator().manual_seed(2)
    for _ in range(12):  # through the mask update at step 10
        x = torch.randint(0, V, (4, T), generator=generator)
        y = torch.randint(0, V, (4, T), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        if sp.step():
            optimizer.step()
    assert sp.last_update_step == 10
    assert model.head.weight is model.tokens.weight
    assert torch.all(model.head.weight != 0), "the head (the embedding) is dense"
    assert sp.global_density() == pytest.approx(0.1, abs=0.01)
    # The tied head still costs its matmul, dense.
    head = {row.name: row for row in regrow.count_flops(model, (T,), sp).layers}["head.weight"]
    assert head.density == 1.0 and head.flops == T * V * (2 * 16 + 1)


def test_default_plan_keeps_the_head_dense_and_lists_no_embedding_norm_or_bias():
    model = tiny()
    plan = AllocationPlan.build(model, sparsity=0.9)
    assert [layer.name for layer in plan.layers] == [*block_weights(2), "head.weight"]
    assert plan.names == block_weights(2)
    assert plan.dense_names == ["head.weight"]
    assert all(layer.density < 1.0 for layer in plan.masked)
    text = str(plan)
    (head_line,) = [line for line in text.splitlines() if line.startswith("head.weight")]
    assert "dense" in head_line.split() and "1.0000" in head_line
    assert "not listed (always dense, outside the budget): embeddings, norms, biases" in text
    for absent in ("tokens", "positions", "norm1", "norm2", "norm.weight", "bias"):
        assert absent not in text.replace("embeddings, norms, biases", "")
    # Naming dense layers replaces the model's choice: [] makes the head sparse too.
    assert AllocationPlan.build(model, 0.9, dense_layers=[]).names == [
        *block_weights(2),
        "head.weight",
    ]
    # sparse_layers without the head: the model's choice does not name a candidate, no error.
    plan = AllocationPlan.build(model, 0.9, sparse_layers=["blocks.*.fc.weight"])
    assert plan.names == ["blocks.0.fc.weight", "blocks.1.fc.weight"]


def test_width_scales_d_model_as_a_multiple_of_heads():
    assert tiny(width=0.5).d_model == 8
    assert tiny(width=0.5).blocks[0].fc.out_features == 32
    assert CharGPT(V, 0.5, block_size=T, d_model=36, heads=6).d_model == 18
    assert CharGPT(V, 0.3, block_size=T, d_model=24, heads=4).d_model == 8  # 7.2 → 2 heads of 4
    assert CharGPT(V, 0.01, block_size=T, d_model=24, heads=4).d_model == 4  # at least heads
    with torch.device("meta"):
        assert get_model("char_gpt", width=0.5).d_model == 64


def test_small_dense_width_matches_the_sparse_parameter_count():
    heads = 4

    def build(width: float) -> CharGPT:
        return CharGPT(V, width, block_size=T, d_model=64, layers=2, heads=heads)

    with torch.device("meta"):
        full = build(1.0)
    target = kept_parameter_count(full, AllocationPlan.build(full, sparsity=0.9))
    width = regrow.SmallDense.model_width(
        build, 1.0, regrow.SmallDense.Args(), sparsity=0.9, distribution="erk"
    )
    with torch.device("meta"):
        small = build(width)
        counts = {
            d: parameter_count(CharGPT(V, block_size=T, d_model=d, layers=2, heads=heads))
            for d in range(heads, 64 + 1, heads)
        }
    assert small.d_model % heads == 0 and small.d_model < 64
    assert parameter_count(small) == counts[small.d_model]
    nearest = min(counts, key=lambda d: abs(counts[d] - target))
    assert small.d_model == nearest, (small.d_model, target, counts)


def test_a_sequence_longer_than_block_size_is_refused():
    model = tiny()
    with pytest.raises(ValueError, match="block_size") as info:
        model(torch.zeros(1, T + 1, dtype=torch.long))
    assert str(T) in str(info.value) and str(T + 1) in str(info.value)


@pytest.mark.parametrize("first", [T, 5, 1])
def test_cached_decode_gives_the_logits_of_the_whole_sequence(first):
    """``first`` tokens at once into an empty cache, then one per call: each call's logits equal
    those of ``forward`` on the whole sequence at its positions."""
    model = tiny().eval()
    tokens = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens)
        cache = model.new_cache(3)
        assert [tuple(c.shape) for c in cache] == [(3, 2, T, 8)] * 4  # keys, values per block
        assert not any(c.any() for c in cache)
        steps = [model.decode(tokens[:, :first], cache, 0)]
        steps += [model.decode(tokens[:, i : i + 1], cache, i) for i in range(first, T)]
    torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-5, atol=1e-5)
    assert all(c.abs().sum(dim=(0, 1, 3)).bool().all() for c in cache)  # every position


def test_decoding_past_block_size_is_refused():
    model = tiny().eval()
    with pytest.raises(ValueError, match="block_size"):
        model.decode(torch.zeros(1, 2, dtype=torch.long), model.new_cache(1), T - 1)


def test_both_registered_sizes_build():
    spec = MODELS["char_gpt"]
    assert spec.input_shape == (256,) and spec.num_classes == 128
    torch.manual_seed(0)
    small = get_model("char_gpt")
    assert isinstance(small, CharGPT) and small.d_model == 128 and len(small.blocks) == 2
    assert small(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 128)
    assert sum(small.get_parameter(n).numel() for n in block_weights(2)) == 393_216

    large_spec = MODELS["char_gpt_large"]
    assert large_spec.input_shape == (1024,) and large_spec.num_classes == 128
    with torch.device("meta"):
        large = get_model("char_gpt_large")
        assert large(torch.zeros(1, 1024, dtype=torch.long)).shape == (1, 1024, 128)
    assert large.d_model == 768 and len(large.blocks) == 12 and large.block_size == 1024
    assert all(block.attn.heads == 12 for block in large.blocks)
    assert all(p.is_meta for p in large.parameters())
    assert sum(large.get_parameter(n).numel() for n in block_weights(12)) == 84_934_656
    assert AllocationPlan.build(large, 0.9).dense_names == ["head.weight"]
