"""Hugging Face models as they are (SPEC §1): GPT-2's ``Conv1D`` projections (a linear layer
stored ``[in, out]``) are linear layers with their rows along the output dimension, a tied head is
the embedding (one tensor, dense), nothing beyond the embeddings is the "first layer", and a model
with nothing to make sparse is refused with the reason. Tiny models built from configurations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow
from regrow.sparsity.layers import (
    fan_in_shape,
    input_meets_embedding_first,
    is_transposed_linear,
    rows_view,
)
from regrow.sparsity.methods.srigl import constant_fan_in_plan
from regrow.sparsity.plan import AllocationPlan

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # a tiny vocabulary has no GPT-2 bos/eos token

V, T, LAYERS = 50, 8, 2


def gpt2(tied: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=LAYERS, n_embd=32, n_head=2, vocab_size=V, n_positions=32
    )
    config.tie_word_embeddings = tied
    return transformers.GPT2LMHeadModel(config)


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=V,
    )
    return transformers.BertForMaskedLM(config)


def llama(tied: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=V,
    )
    config.tie_word_embeddings = tied
    return transformers.LlamaForCausalLM(config)


def per_block(prefix: str, names: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{b}.{name}.weight" for b in range(LAYERS) for name in names]


GPT2_PROJECTIONS = per_block(
    "transformer.h", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
)
BERT_PROJECTIONS = per_block(
    "bert.encoder.layer",
    (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
)
LLAMA_PROJECTIONS = per_block(
    "model.layers",
    (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ),
)

#: name → (build, the sparse tensors of the default plan, tensors that must stay dense). BERT's
#: masked-LM head keeps a hidden linear layer (``transform.dense``) before its tied decoder: a
#: linear layer, so sparse; an untied head is sparse as every last layer (SPEC §1).
CASES = {
    "gpt2": (
        gpt2,
        GPT2_PROJECTIONS,
        ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"],
    ),
    "gpt2_untied": (
        lambda: gpt2(tied=False),
        [*GPT2_PROJECTIONS, "lm_head.weight"],
        ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight"],
    ),
    "bert": (
        bert,
        [*BERT_PROJECTIONS, "cls.predictions.transform.dense.weight"],
        [
            "bert.embeddings.word_embeddings.weight",
            "bert.embeddings.position_embeddings.weight",
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.0.attention.output.LayerNorm.weight",
        ],
    ),
    "llama": (
        llama,
        [*LLAMA_PROJECTIONS, "lm_head.weight"],
        ["model.embed_tokens.weight", "model.norm.weight"],
    ),
    "llama_tied": (
        lambda: llama(tied=True),
        LLAMA_PROJECTIONS,
        ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"],
    ),
}


def train(model: nn.Module, sp: regrow.Sparsifier, optimizer, steps: int) -> None:
    """``steps`` batches of random token ids through the model's own loss, ``if sp.step():
    optimizer.step()``; after each, every inactive weight is zero."""
    generator = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    for _ in range(steps):
        ids = torch.randint(0, V, (4, T), generator=generator)
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        if sp.step():
            optimizer.step()
        for name, mask in sp.masks.items():
            assert torch.all(params[name][~mask] == 0), name


@pytest.mark.parametrize("case", sorted(CASES))
def test_rigl_makes_the_projections_sparse_and_keeps_embeddings_norms_and_tied_heads_dense(
    case: str,
) -> None:
    build, sparse, dense = CASES[case]
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = regrow.RigL(model, optimizer, sparsity=0.9, total_steps=100, delta_t=10)
    assert sp.names == sparse
    assert sp.plan.dense_names == []  # the input meets the embedding first: no stem kept dense
    train(model, sp, optimizer, 12)  # through the mask update at step 10
    assert sp.last_update_step == 10
    assert sp.global_density() == pytest.approx(0.1, abs=0.01)
    params = dict(model.named_parameters())
    for name in dense:
        assert name not in sp.masks and torch.all(params[name] != 0), f"{name} is not dense"
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (case in ("gpt2", "bert", "llama_tied"))
    if tied:
        assert torch.all(model.get_output_embeddings().weight != 0), "the tied head is dense"


def test_gpt2_conv1d_layers_are_transposed_linear_layers_in_the_plan() -> None:
    model = gpt2()
    c_attn = model.transformer.h[0].attn.c_attn
    assert is_transposed_linear(c_attn) and c_attn.weight.shape == (32, 96)
    assert not is_transposed_linear(nn.Conv1d(3, 4, 2)) and not is_transposed_linear(
        nn.Linear(3, 4)
    )
    plan = AllocationPlan.build(model, 0.9)
    assert all(layer.transposed for layer in plan.layers)
    assert plan.layers[0].out_fan_in == (96, 32) == fan_in_shape((32, 96), transposed=True)
    assert "32x96 (in x out)" in str(plan)
    assert plan.as_dict()["layers"][0]["transposed"] is True
    # Not so for nn.Linear models.
    assert not any(layer.transposed for layer in AllocationPlan.build(llama(), 0.9).layers)


@pytest.mark.parametrize("distribution", ["erk", "er", "uniform"])
def test_a_conv1d_gets_the_density_of_the_equivalent_linear_layer(distribution: str) -> None:
    """ERK and ER score ``in`` and ``out`` symmetrically: the stored layout changes nothing."""
    plan = AllocationPlan.build(gpt2(), 0.9, distribution)
    linear = {layer.name: layer.shape[::-1] for layer in plan.layers}  # [out, in]
    equivalent = AllocationPlan.build(linear, 0.9, distribution, dense_layers=[])
    assert plan.densities() == equivalent.densities()
    assert plan.active_counts() == equivalent.active_counts()
    # SRigL's constant fan-in budget is out · k with out the Conv1D's columns, as for the linear.
    rounded, rounded_linear = constant_fan_in_plan(plan), constant_fan_in_plan(equivalent)
    assert rounded.active_counts() == rounded_linear.active_counts()
    for layer in rounded.masked:
        assert layer.active % layer.shape[1] == 0


def test_srigl_keeps_a_constant_fan_in_along_the_output_dimension_of_conv1d() -> None:
    model = gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sp = regrow.SRigL(model, optimizer, sparsity=0.9, total_steps=100, delta_t=5)
    assert sp.names == GPT2_PROJECTIONS

    def check() -> None:
        for name, mask in sp.masks.items():
            outputs = mask.shape[1]
            per_neuron = mask.sum(dim=0)  # the output neurons are the columns of [in, out]
            active = per_neuron[per_neuron > 0]
            assert active.numel() > 0 and len(set(active.tolist())) == 1, name
            assert sp.fan_ins()[name] == int(active[0])
            assert sp.target_counts[name] % outputs == 0
            assert sp.ablated_neurons()[name] == torch.nonzero(per_neuron == 0).flatten().tolist()
            assert torch.equal(rows_view(mask, True), mask.t())

    check()
    # The rows of the stored [in, out] weight hold no constant count: the layout matters.
    assert any(len(set(mask.sum(dim=1).tolist())) > 1 for mask in sp.masks.values())
    train(model, sp, optimizer, 13)  # updates at steps 0, 5 and 10
    assert sp.last_update_step == 10
    check()


def test_tied_heads_are_one_tensor_and_dense_whatever_name_is_used() -> None:
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    plan = AllocationPlan.build(model, 0.9)
    assert "lm_head.weight" not in [layer.name for layer in plan.layers]
    # Naming the tied head dense is what the default does already (the same entry keeps an
    # untied head dense), not an error.
    assert AllocationPlan.build(model, 0.9, dense_layers=["lm_head"]) == plan
    untied = AllocationPlan.build(gpt2(tied=False), 0.9, dense_layers=["lm_head"])
    assert untied.dense_names == ["lm_head.weight"] and untied.names == GPT2_PROJECTIONS
    # Named in sparse_layers, any name of the shared tensor stands for it, once.
    chosen = AllocationPlan.build(
        model, 0.5, dense_layers=[], sparse_layers=["lm_head.weight", "transformer.wte"]
    )
    assert chosen.names == ["transformer.wte.weight"]


def test_bert_keeps_no_linear_layer_dense_although_a_walk_meets_a_query_projection_first() -> None:
    model = bert()
    assert input_meets_embedding_first(model)
    plan = AllocationPlan.build(model, 0.9)
    assert plan.names[0] == "bert.encoder.layer.0.attention.self.query.weight"
    assert plan.dense_names == []
    # dense_layers still names layers to keep dense.
    plan = AllocationPlan.build(model, 0.9, dense_layers=["bert.encoder.layer.0.*"])
    assert plan.dense_names == BERT_PROJECTIONS[:6]


class OnlyEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)


class TiedOnly(OnlyEmbedding):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.tokens.weight


def test_a_model_with_nothing_to_make_sparse_is_refused_with_the_reason() -> None:
    model = OnlyEmbedding()
    with pytest.raises(ValueError, match=r"no layer would be sparse.*Embeddings, norms") as error:
        regrow.RigL(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, total_steps=10)
    assert "sparse_layers" in str(error.value) and "method=dense" in str(error.value)
    tied = TiedOnly()
    with pytest.raises(ValueError, match=r"head\.weight is the tensor tokens\.weight, shared"):
        AllocationPlan.build(tied, 0.5)
    # A dense method has nothing to mask anyway; naming the tensor makes it sparse.
    assert AllocationPlan.build(model, 0.5, masked=False).layers == ()
    plan = AllocationPlan.build(tied, 0.5, sparse_layers=["head.weight"], dense_layers=[])
    assert plan.names == ["tokens.weight"]


class InOut(nn.Module):
    """A linear layer of another library stored ``[in, out]``, declared by the protocol."""

    weight_layout = "in_out"

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_a_module_declaring_an_in_out_weight_is_a_transposed_linear_layer() -> None:
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), InOut(12, 8), nn.ReLU(), nn.Linear(8, 3))
    plan = AllocationPlan.build(model, 0.5)
    assert plan.dense_names == ["0.weight"]  # no embedding: the stem stays dense, as before
    assert [layer.transposed for layer in plan.layers] == [False, True, False]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = regrow.SRigL(model, optimizer, 0.5, total_steps=100, delta_t=10)
    per_output = sp.masks["2.weight"].sum(dim=0)
    assert len(set(per_output.tolist())) == 1 and sp.target_counts["2.weight"] % 8 == 0
