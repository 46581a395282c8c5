"""The allocation plan (SPEC §1, §2): one object for which tensors are sparse, their densities and
active counts, shared by the sparsifier and the FLOP API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regrow
from regrow.sparsity.distributions import active_counts, layer_densities
from regrow.sparsity.plan import AllocationPlan
from tests.helpers import MODELS, OPTIMIZERS


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 16)
        self.attention = nn.MultiheadAttention(16, 2)
        self.cross = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)  # separate q/k/v weights
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50)


def test_plan_matches_the_distribution_and_lists_dense_layers() -> None:
    model = MODELS["conv"][0]()
    plan = AllocationPlan.build(model, 0.8, "erk")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")}
    sparse = {n: s for n, s in shapes.items() if n in plan.names}
    assert plan.dense_names == ["0.weight"]  # the stem
    assert plan.densities() == layer_densities(sparse, 0.8, "erk")
    assert plan.active_counts() == active_counts(sparse, plan.densities())
    assert [layer.role for layer in plan.layers] == ["dense", "sparse", "sparse", "sparse"]
    text = str(plan)
    assert "0.weight" in text and "dense" in text and "total (masked)" in text


def test_a_sparsifier_and_the_flop_api_use_the_same_plan() -> None:
    model = MODELS["conv"][0]()
    sp = regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.9, seed=1)
    assert sp.plan == AllocationPlan.build(model, 0.9, "erk")
    assert sp.active_counts() == sp.plan.active_counts()
    profile = regrow.profile_model(model, (3, 8, 8))
    # the plan counts at target densities, the sparsifier at active/size (rounded down)
    assert profile.inference_flops(sp.plan) == pytest.approx(profile.inference_flops(sp), rel=1e-3)


def test_custom_densities_are_outside_the_budget() -> None:
    model = MODELS["mlp"][0]()
    plan = AllocationPlan.build(
        model, 0.5, "uniform", dense_layers=[], custom_densities={"4.weight": 1.0}
    )
    roles = {layer.name: layer.role for layer in plan.layers}
    assert roles == {"0.weight": "sparse", "2.weight": "sparse", "4.weight": "custom"}
    assert plan.densities() == {"0.weight": 0.5, "2.weight": 0.5, "4.weight": 1.0}
    with pytest.raises(ValueError, match="not sparse layers"):
        AllocationPlan.build(model, 0.5, custom_densities={"0.weight": 0.5})  # the dense stem


def test_attention_projections_are_sparse_embeddings_and_norms_dense() -> None:
    model = TinyTransformer()
    plan = AllocationPlan.build(model, 0.8, "erk", dense_layers=[])
    assert plan.names == [
        "attention.in_proj_weight",
        "attention.out_proj.weight",
        "cross.q_proj_weight",
        "cross.k_proj_weight",
        "cross.v_proj_weight",
        "cross.out_proj.weight",
        "head.weight",
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = regrow.Static(model, optimizer, plan=plan)
    weight = model.attention.in_proj_weight
    assert int((weight != 0).sum()) == plan.active_counts()["attention.in_proj_weight"]
    assert torch.all(model.embedding.weight != 0) and torch.all(model.norm.weight == 1)
    assert sp.global_density() == pytest.approx(0.2, abs=0.01)


def test_keeping_every_layer_dense_is_an_error() -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match="no layer would be sparse"):
        AllocationPlan.build(model, 0.9, dense_layers=["0", "2", "4"])


def test_dense_methods_have_an_all_dense_plan() -> None:
    model = MODELS["mlp"][0]()
    sp = regrow.Dense(model, OPTIMIZERS["adam"](model.parameters()))
    assert sp.names == [] and sp.plan.dense_names == ["0.weight", "2.weight", "4.weight"]


def test_a_one_layer_model_is_refused_unless_dense_layers_makes_its_layer_sparse() -> None:
    """The only candidate is the stem, which ``dense_layers=None`` keeps dense: no sparse layer
    would be left, so the plan says so instead of training a dense model as a sparse one."""
    model = nn.Linear(10, 3)
    with pytest.raises(ValueError, match=r"only .*'weight'.*dense_layers=None.*dense_layers=\[\]"):
        AllocationPlan.build(model, 0.9)
    with pytest.raises(ValueError, match=r"dense_layers=\[\]"):
        regrow.Static(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.9)
    plan = AllocationPlan.build(model, 0.9, dense_layers=[])
    assert plan.names == ["weight"] and plan.active_counts() == {"weight": 3}


def test_a_sparsity_that_leaves_a_layer_without_weights_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"sparsity=0\.99 .*1\.weight: 0 of 16.*2\.weight: 0 of 8"):
        AllocationPlan.build(model, 0.99)
    with pytest.raises(ValueError, match=r"sparsity=0\.99"):
        regrow.RigL(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.99, total_steps=100)
    # Only the layers left without weights are named.
    with pytest.raises(ValueError, match=r"layer 2\.weight: 0 of 8") as error:
        AllocationPlan.build(model, 0.9, "uniform", custom_densities={"1.weight": 0.5})
    assert "1.weight" not in str(error.value)
    # A density of 0 asked for by name is the user's choice, not a rounding accident.
    plan = AllocationPlan.build(model, 0.5, custom_densities={"1.weight": 0.0})
    assert plan.active_counts()["1.weight"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sparsity": "abc"},
            "sparsity='abc' is not a number: allowed values are 0 <= sparsity < 1",
        ),
        ({"sparsity": None}, "sparsity=None is not a number: allowed values are 0 <= sparsity < 1"),
        ({"sparsity": True}, "sparsity=True is not a number: allowed values are 0 <= sparsity < 1"),
        ({"distribution": None}, "distribution=None is unknown: allowed values are 'uniform'"),
        ({"power": "x"}, "power='x' is not a finite number: allowed values are finite numbers"),
        ({"power": float("nan")}, "power=nan is not a finite number: allowed values are"),
        ({"power": float("inf")}, "power=inf is not a finite number: allowed values are"),
        ({"dense_layers": 5}, "dense_layers=5 is not a list of names: allowed values are None"),
        ({"dense_layers": [5]}, "dense_layers=[5] is not a list of names: allowed values are"),
        ({"sparse_layers": 5}, "sparse_layers=5 is not a list of names: allowed values are None"),
        ({"custom_densities": 5}, "custom_densities=5 is not a mapping: allowed values are None"),
        (
            {"custom_densities": {"2.weight": "x"}},
            "custom_densities['2.weight']='x' is not a number: allowed values are in [0, 1]",
        ),
    ],
)
def test_every_shared_argument_error_names_the_argument_value_and_allowed_values(
    kwargs: dict, message: str
) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        AllocationPlan.build(model, **{"sparsity": 0.5, **kwargs})
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), **{"sparsity": 0.5, **kwargs})


def test_a_single_name_in_sparse_layers_is_one_entry() -> None:
    model = MODELS["mlp"][0]()
    plan = AllocationPlan.build(model, 0.5, sparse_layers="2.weight", dense_layers=[])
    assert plan.names == ["2.weight"]


def test_dense_layers_none_keeps_the_first_layer_the_input_meets_dense() -> None:
    """The stem of a CNN or MLP; for a model whose input meets an embedding first (registered
    before every candidate), that embedding, which is dense anyway: no candidate is kept dense."""
    model = TinyTransformer()
    assert AllocationPlan.build(model, 0.8) == AllocationPlan.build(model, 0.8, dense_layers=[])
    language_model = nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 20))
    assert AllocationPlan.build(language_model, 0.5).names == ["2.weight"]  # not refused
    late = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    late.add_module("positions", nn.Embedding(4, 8))  # registered after the first candidate
    assert AllocationPlan.build(late, 0.5).dense_names == ["0.weight"]
    # A model's own default_dense_layers still wins.
    language_model.default_dense_layers = ("2",)
    with pytest.raises(ValueError, match="no layer would be sparse"):
        AllocationPlan.build(language_model, 0.5)
