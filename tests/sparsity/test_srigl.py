"""SRigL (SPEC §11): constant fan-in from the first mask on, neuron ablation where a neuron has
too few salient weights (never in the output layer, never with the switch off), the layer's count
kept at ``a · (B // a)``, its arguments, resume and the FLOP entry points."""

from __future__ import annotations

import functools
import itertools
import json
import math

import pytest
import torch
from torch import nn

import regrow
from regrow.cli import main
from regrow.sparsity.methods.srigl import (
    ablated_neurons,
    ablation_threshold,
    constant_fan_in_count,
)
from tests.helpers import MODELS, OPTIMIZERS, batch, restore, saved_and_loaded


def rows(mask: torch.Tensor) -> torch.Tensor:
    """Active weights of each row of ``mask`` viewed as ``[out, fan_in]``."""
    return mask.reshape(mask.shape[0], -1).sum(dim=1)


def check_structure(sp: regrow.SRigL) -> dict[str, int]:
    """Every active row of a layer holds ``B // a`` weights, the count is ``a · (B // a)``;
    return each layer's number of active neurons."""
    neurons = {}
    for name, mask in sp.masks.items():
        per_row = rows(mask)
        active = int((per_row > 0).sum())
        budget = sp.target_counts[name]
        assert torch.all(per_row[per_row > 0] == budget // active), name
        assert sp.active_counts()[name] == active * (budget // active), name
        assert sp.fan_ins()[name] == budget // active
        assert len(sp.ablated_neurons()[name]) == mask.shape[0] - active
        neurons[name] = active
    return neurons


def make(model_name: str, optimizer_name: str = "sgd_momentum", **kwargs) -> regrow.SRigL:
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    settings = {"sparsity": 0.9, "total_steps": 200, "seed": 1, "delta_t": 20, **kwargs}
    return regrow.SRigL(model, optimizer, **settings)


def run(sp: regrow.SRigL, model_name: str, first: int, last: int, after_update=None) -> None:
    """Feed batches ``first .. last-1``; call ``after_update()`` after every mask update."""
    for index in range(first, last):
        x, y = batch(model_name, index)
        sp.optimizer.zero_grad()
        nn.functional.cross_entropy(sp.model(x), y).backward()
        if sp.step():
            sp.optimizer.step()
        elif after_update is not None:
            after_update()


# ------------------------------------------------------------------------ constant fan-in
@pytest.mark.parametrize("ablation", [True, False])
@pytest.mark.parametrize("model_name", ["mlp", "conv"])
def test_every_active_row_keeps_the_same_fan_in_at_every_update(model_name, ablation) -> None:
    # γ_sal = 0.5, so that the conv net ablates neurons (at 0.3 its threshold rounds down to 1).
    sp = make(model_name, ablation=ablation, min_salient_fraction=0.5)
    assert sp.active_counts() == sp.target_counts == sp.plan.active_counts()
    output = sp.names[-1]
    assert sp.output_layer == output
    seen: list[dict[str, int]] = [check_structure(sp)]
    snapshots = []

    def after_update() -> None:
        snapshots.append({n: m.clone() for n, m in sp.masks.items()})
        seen.append(check_structure(sp))
        assert seen[-1][output] == sp.masks[output].shape[0], "the output layer is never ablated"
        if not ablation:
            assert sp.active_counts() == sp.target_counts
            assert all(not v for v in sp.ablated_neurons().values())

    run(sp, model_name, 0, 220, after_update)
    if ablation and model_name == "conv":  # some layer lost neurons along the way
        assert any(n < sp.masks[name].shape[0] for s in seen for name, n in s.items())
    assert len(seen) == 1 + len([s for s in range(200) if sp.update_due(s)]) > 5
    changed = [not torch.equal(a[n], b[n]) for a, b in itertools.pairwise(snapshots) for n in a]
    assert any(changed), "the topology must move"


def test_initial_masks_round_the_plan_count_to_a_constant_fan_in_and_are_seeded() -> None:
    sp = make("conv", ablation=False)
    again = make("conv", ablation=False)
    other = make("conv", ablation=False, seed=2)
    for name, mask in sp.masks.items():
        out = mask.shape[0]
        count = sp.distribution_counts()[name]
        fan_in = math.floor(count / out + 0.5)  # the nearest, halves up
        assert torch.all(rows(mask) == fan_in), name
        assert sp.target_counts[name] == out * fan_in == constant_fan_in_count(mask.shape, count)
        assert abs(out * fan_in - count) <= out / 2
        assert torch.equal(mask, again.masks[name])
        assert not torch.equal(mask, other.masks[name])
    assert abs(sp.global_density() - 0.1) < 0.01
    assert constant_fan_in_count((4, 10), 6) == 8  # 1.5 rounds up
    assert constant_fan_in_count((4, 10), 5) == 4
    with pytest.raises(ValueError, match="at least one weight per neuron"):
        constant_fan_in_count((8, 10), 3)


# --------------------------------------------------------------------------- ablation
class TwoLayers(nn.Module):
    """A hidden and an output linear layer whose loss gradients are chosen: ``Σ W ⊙ G``."""

    def __init__(self, hidden: torch.Tensor, output: torch.Tensor) -> None:
        super().__init__()
        self.hidden = nn.Linear(hidden.shape[1], hidden.shape[0], bias=False)
        self.output = nn.Linear(output.shape[1], output.shape[0], bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(hidden)
            self.output.weight.copy_(output)

    def loss(self, g_hidden: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        return (self.hidden.weight * g_hidden).sum() + (self.output.weight * g_output).sum()


def concentrated(rows_out: int, cols: int, strong: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Weights and gradients large on the first ``strong`` rows, tiny or zero on the others."""
    generator = torch.Generator().manual_seed(seed)
    weight = 1e-3 * torch.rand(rows_out, cols, generator=generator)
    weight[:strong] = 1 + torch.rand(strong, cols, generator=generator)
    gradient = torch.zeros(rows_out, cols)
    gradient[:strong] = 1 + torch.rand(strong, cols, generator=generator)
    return weight, gradient


def concentrated_case(strong: int, **kwargs):
    hidden, g_hidden = concentrated(8, 16, strong, seed=0)
    output, g_output = concentrated(4, 8, 1, seed=1)  # the same shape of case, in the output
    model = TwoLayers(hidden, output)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    settings = {
        "sparsity": 0.75,
        "distribution": "uniform",
        "total_steps": 100,
        "alpha": 0.5,
        "delta_t": 10,
    }
    sp = regrow.SRigL(model, optimizer, dense_layers=[], **{**settings, **kwargs})
    return model, sp, g_hidden, g_output


def update(model: TwoLayers, sp: regrow.SRigL, g_hidden, g_output) -> None:
    """Feed gradient batches until the next mask update has run."""
    while True:
        sp.optimizer.zero_grad()
        model.loss(g_hidden, g_output).backward()
        if not sp.step():
            return
        sp.optimizer.step()


@pytest.mark.parametrize("strong", [4, 5])
def test_neurons_with_few_salient_weights_are_ablated_but_never_in_the_output_layer(
    strong: int,
) -> None:
    model, sp, g_hidden, g_output = concentrated_case(strong)
    assert sp.target_counts == {"hidden.weight": 32, "output.weight": 8}  # k = 4 and 2
    update(model, sp, g_hidden, g_output)
    mask = sp.masks["hidden.weight"]
    assert sp.ablated_neurons() == {"hidden.weight": list(range(strong, 8)), "output.weight": []}
    fan_in = 32 // strong  # 8 (count 32, kept exactly) or 6 (count 30 = 5 · 6)
    assert torch.all(rows(mask)[:strong] == fan_in) and torch.all(rows(mask)[strong:] == 0)
    assert sp.active_counts()["hidden.weight"] == strong * fan_in
    # The output layer's rows 1-3 have no salient weight either, yet keep their fan-in.
    assert torch.all(rows(sp.masks["output.weight"]) == 2)
    assert torch.all(model.hidden.weight.detach()[strong:] == 0)
    check_structure(sp)


def test_with_the_switch_off_the_same_case_never_ablates() -> None:
    model, sp, g_hidden, g_output = concentrated_case(4, ablation=False)
    for _ in range(4):
        update(model, sp, g_hidden, g_output)
        assert all(not neurons for neurons in sp.ablated_neurons().values())
        assert torch.all(rows(sp.masks["hidden.weight"]) == 4)
        assert sp.active_counts() == sp.target_counts


def test_an_ablated_neuron_returns_when_its_gradient_becomes_salient() -> None:
    model, sp, g_hidden, g_output = concentrated_case(5)
    update(model, sp, g_hidden, g_output)
    assert sp.ablated_neurons()["hidden.weight"] == [5, 6, 7]
    assert sp.active_counts()["hidden.weight"] == 30
    g_hidden = torch.ones(8, 16)
    g_hidden[5:] = 100.0  # the ablated rows now have by far the largest gradients
    update(model, sp, g_hidden, g_output)
    assert not {5, 6, 7} & set(sp.ablated_neurons()["hidden.weight"])
    check_structure(sp)


def test_ablation_keeps_enough_neurons_for_the_layers_budget() -> None:
    """Every row but the first falls below the threshold (4 salient weights: γ_sal = 1), but a
    budget of 32 over rows of 16 needs two active neurons: the most salient other one stays."""
    model, sp, g_hidden, g_output = concentrated_case(1, alpha=0.9, min_salient_fraction=1.0)
    # 28 weights are dropped, only the first row's 4 are kept; of the 28 largest gradients, 16
    # are the first row's and 12 of these 16 small ones: at most 3 salient weights in rows 1 and
    # 2, at most 2 in the others.
    g_hidden[1:, :2] = 1e-3
    g_hidden[1:3, 2] = 1e-3
    update(model, sp, g_hidden, g_output)
    ablated = sp.ablated_neurons()["hidden.weight"]
    survivor = {1, 2} - set(ablated)
    assert len(ablated) == 6 and 0 not in ablated and len(survivor) == 1
    per_row = rows(sp.masks["hidden.weight"])
    assert torch.all(per_row[per_row > 0] == 16)
    assert sp.active_counts()["hidden.weight"] == 32


def test_masks_without_a_constant_fan_in_are_refused(monkeypatch) -> None:
    model, sp, g_hidden, g_output = concentrated_case(4)
    unstructured = [torch.zeros_like(m) for m in sp.masks.values()]
    unstructured[0][:7, :4] = True  # 32 weights: 8 in the first row, 4 in six others
    unstructured[0][0, 4:8] = True
    unstructured[1].copy_(sp.masks["output.weight"])
    monkeypatch.setattr(sp, "new_masks", lambda step, grads: unstructured)
    with pytest.raises(RuntimeError, match=r"broke the constant fan-in of hidden\.weight"):
        update(model, sp, g_hidden, g_output)


# ---------------------------------------------------------------------------- arguments
def test_arguments_defaults_and_checks() -> None:
    args = regrow.SRigL.Args()
    assert (args.min_salient_fraction, args.ablation) == (0.3, True)
    assert (args.alpha, args.delta_t, args.t_end_fraction, args.drop_schedule) == (
        0.3,
        100,
        0.75,
        "cosine",
    )
    with pytest.raises(ValueError, match="redistribution='gradient' is not available"):
        make("mlp", redistribution="gradient")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="min_salient_fraction"):
            make("mlp", min_salient_fraction=bad)
    assert regrow.get_method("srigl") is regrow.SRigL


# ------------------------------------------------------------------------------- resume
def build_resumable() -> regrow.SRigL:
    return make("conv", "sgd_nesterov", sparsity=0.95, total_steps=100)


@functools.cache
def uninterrupted() -> tuple[dict, dict, tuple[int, int | None]]:
    reference = build_resumable()
    run(reference, "conv", 0, 110)
    state = {n: v.clone() for n, v in reference.model.state_dict().items()}
    return state, reference.ablated_neurons(), (reference.step_count, reference.last_update_step)


# Updates at steps 0, 20, 40, 60 spend batches 0, 21, 42, 63: stop right before the update at 40,
# right after it, and right after the one at 60. Two layers have an ablated neuron by then, so
# their counts are a · (B // a) = 30, not B = 32.
@pytest.mark.parametrize("stop", [42, 43, 64])
def test_resume_with_ablated_neurons_is_bit_identical(stop: int) -> None:
    reference, reference_ablated, counters = uninterrupted()
    assert any(reference_ablated.values()), "the case must ablate"

    sp = build_resumable()
    run(sp, "conv", 0, stop)
    assert sp.active_counts() != sp.target_counts
    state = saved_and_loaded(sp.model, sp.optimizer, sp)
    assert ablated_neurons(state["sparsifier"]["masks"]) == sp.ablated_neurons()

    fresh = build_resumable()
    restore(state, fresh.model, fresh.optimizer, fresh)
    assert fresh.ablated_neurons() == sp.ablated_neurons()
    assert fresh.active_counts() == sp.active_counts()
    run(fresh, "conv", stop, 110)
    for (name, a), b in zip(reference.items(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh.ablated_neurons() == reference_ablated
    assert (fresh.step_count, fresh.last_update_step) == counters


# -------------------------------------------------------------------------------- FLOPs
def test_regrow_flops_counts_srigl_at_its_constant_fan_in_budgets(capsys) -> None:
    argv = ["flops", "--model", "wrn22_2", "sparsity.method=srigl", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method_args"]["min_salient_fraction"] == 0.3
    assert 0 < result["train_flops_ratio"] < 1


@pytest.mark.parametrize(("fan_in", "expected"), [(2, 1), (4, 1), (7, 2), (10, 3)])
def test_the_ablation_threshold_is_the_references_rounded_down(fan_in: int, expected: int) -> None:
    """The SRigL reference ablates a neuron with fewer than max(1, int(γ·k)) salient weights;
    at γ = 0.3: k = 2 → 1 (0.6 rounds down to 0, at least 1), 4 → 1, 7 → 2 (not 2.1), 10 → 3."""
    assert ablation_threshold(0.3, fan_in) == expected
    assert ablation_threshold(1.0, fan_in) == fan_in


def fan_in_seven() -> regrow.SRigL:
    """SRigL over a 4 × 14 hidden layer at 50 %: a constant fan-in of 7, threshold 2 at γ = 0.3."""
    hidden, _ = concentrated(4, 14, 4, seed=0)
    output, _ = concentrated(4, 8, 4, seed=1)
    model = TwoLayers(hidden, output)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return regrow.SRigL(
        model, optimizer, sparsity=0.5, distribution="uniform", total_steps=100, delta_t=10,
        dense_layers=[],
    )  # fmt: skip


def test_a_neuron_at_the_rounded_down_threshold_stays_active() -> None:
    """Fan-in 7 at γ = 0.3: rows with 7, 3, 2 and 1 salient weights; the one with 2 stays (the
    real-valued 2.1 ablated it), the one with 1 goes."""
    sp = fan_in_seven()
    assert sp.target_counts["hidden.weight"] == 4 * 7
    kept = torch.zeros(4, 14, dtype=torch.bool)
    for row, salient in enumerate((7, 3, 2, 1)):
        kept[row, :salient] = True
    scores = torch.zeros(4, 14)
    alive = sp._surviving_neurons(10, "hidden.weight", kept, scores, grow=0)
    assert alive.tolist() == [True, True, True, False]


def test_saliency_counts_the_largest_gradients_over_the_whole_layer_as_the_reference() -> None:
    """The reference's salient set is the kept weights united with the K largest |∇L| over every
    position, kept ones included. Here both of those gradients sit on row 0's kept weights, so
    rows 2 and 3 keep 1 salient weight (< 2 at fan-in 7) and go; drawing the K from the positions
    not kept would have handed one to each of them, and they would have stayed."""
    sp = fan_in_seven()
    kept = torch.zeros(4, 14, dtype=torch.bool)
    for row, count in enumerate((7, 4, 1, 1)):
        kept[row, :count] = True
    scores = torch.zeros(4, 14)
    scores[0, :2] = 10.0  # the two largest gradients: on kept weights
    scores[2:, 5] = 1.0  # the next ones: a position not kept in each weak row
    alive = sp._surviving_neurons(10, "hidden.weight", kept, scores, grow=2)
    assert alive.tolist() == [True, True, False, False]
