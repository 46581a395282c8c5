"""MEST (SPEC §15): the importance drop, the step-decayed mutation ratio, the hard and the soft
memory bound (counts, order of the halves, the method contract), resume between the halves, the
training FLOPs of the soft window, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.flops import TrainingFlopsCounter
from tests.helpers import MODELS, OPTIMIZERS, restore, saved_and_loaded, train_steps
from tests.sparsity.test_contract import check_transition, snapshot


def one_layer(**args):
    """A 2x4 linear layer at density 0.5 (4 active of 8), under an optimizer with lr 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = regrow.MEST(
        model, optimizer, 0.5, "uniform", 100, dense_layers=[], delta_t=10, seed=1, **args
    )
    return model[0].weight, sp


def prefer_the_free_positions(sp: regrow.MEST) -> None:
    """Grow only where no weight was active before the update, so every drop is visible."""
    sp.grow_scores = lambda step, i, grad: (~sp.masks[sp.names[i]]).float()


@pytest.mark.parametrize("grad_weight", [1.0, 0.0])
def test_the_drop_removes_the_lowest_importance(grad_weight: float) -> None:
    weight, sp = one_layer(alpha=0.5, drop_schedule="constant", grad_weight=grad_weight)
    prefer_the_free_positions(sp)
    mask = sp.masks["0.weight"].clone()
    active = mask.reshape(-1).nonzero().squeeze(1)
    with torch.no_grad():
        values, grads = torch.zeros(8), torch.zeros(8)
        values[active] = torch.tensor([0.1, -0.2, 0.3, -0.4])
        grads[active] = torch.tensor([0.5, 0.0, -0.01, 0.05])
        weight.copy_(values.view(2, 4))
    weight.grad = grads.view(2, 4).clone()
    # |w| + λ|g|: 0.6, 0.2, 0.31, 0.45 drops the 2nd and 3rd; |w| alone the 1st and 2nd.
    expected = active[[1, 2]] if grad_weight else active[[0, 1]]
    sp.finish_step()  # step 0 is an update; it reads the gradient as after an optimizer step
    dropped = (mask & ~sp.masks["0.weight"]).reshape(-1).nonzero().squeeze(1)
    assert sp.last_update_step == 0
    assert sorted(dropped.tolist()) == sorted(expected.tolist())
    assert sp.active_counts() == {"0.weight": 4}


def build(model_name="mlp", optimizer_name="sgd_nesterov", total=120, sparsity=0.8, **args):
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    sp = regrow.MEST(model, optimizer, sparsity, total_steps=total, seed=3, **args)
    return model, optimizer, sp


def test_the_mutation_ratio_decays_in_steps() -> None:
    args = {"alpha": 0.4, "mutation_decay": 0.5, "decay_every": 0.25, "delta_t": 10}
    model, optimizer, sp = build(total=200, sparsity=0.95, **args)  # decays every 50; T_end 150
    for name, p in zip(sp.names, sp.params, strict=True):  # room to grow only new positions
        assert p.numel() - sp.target_counts[name] >= 0.4 * sp.target_counts[name]
    assert [sp.drop_fraction(s) for s in (0, 49, 50, 99, 100, 150)] == pytest.approx(
        [0.4, 0.4, 0.2, 0.2, 0.1, 0.05]
    )
    prefer_the_free_positions(sp)
    dropped: dict[int, int] = {}

    def record(index: int) -> None:
        if sp.last_update_step == index:
            dropped[index] = sp.last_update_stats["dropped"]

    train_steps(model, optimizer, sp, "mlp", 0, 200, record)
    assert sorted(dropped) == list(range(0, 151, 10))
    for step, count in dropped.items():
        ratio = 0.4 * 0.5 ** (step // 50)
        assert count == sum(math.floor(ratio * b) for b in sp.target_counts.values()), step
    assert dropped[0] > dropped[50] > dropped[100] > dropped[150] > 0


def test_the_hard_bound_keeps_every_layer_count_after_every_update() -> None:
    model, optimizer, sp = build(delta_t=10)
    updates = []

    def check(index: int) -> None:
        assert sp.active_counts() == sp.target_counts
        if sp.last_update_step == index:
            updates.append(index)

    train_steps(model, optimizer, sp, "mlp", 0, 120, check)
    assert updates == list(range(0, 91, 10)) and sp.count_rule() == "layer"


SOFT = {"memory_bound": "soft", "delta_t": 10, "soft_steps": 4, "alpha": 0.5}


@pytest.mark.parametrize("margin", [0.05, 0.01])
def test_the_soft_bound_grows_first_then_drops_back_to_the_budget(margin: float) -> None:
    model, optimizer, sp = build(margin=margin, **SOFT)
    assert sp.count_rule() is None
    budget = sp.target_counts
    sizes = {n: p.numel() for n, p in zip(sp.names, sp.params, strict=True)}
    masks = {n: m.clone() for n, m in sp.masks.items()}
    halves: list[tuple[int, str]] = []

    def check(index: int) -> None:
        counts = sp.active_counts()
        for name, count in counts.items():
            assert budget[name] <= count <= budget[name] + math.floor(margin * sizes[name])
        if sp.last_update_step != index:
            assert all(torch.equal(sp.masks[n], masks[n]) for n in masks)
            return
        new = {n: m.clone() for n, m in sp.masks.items()}
        if not any(bool((masks[n] & ~new[n]).any()) for n in new):  # only added: a grow
            ratio = sp.drop_fraction(index)
            for name in new:
                extra = min(math.floor(ratio * budget[name]), math.floor(margin * sizes[name]))
                assert counts[name] == budget[name] + extra, (index, name)
            halves.append((index, "grow"))
        else:  # only removed, back at the budget
            assert all(not bool((new[n] & ~masks[n]).any()) for n in new)
            assert counts == budget
            halves.append((index, "drop"))
        masks.update(new)

    train_steps(model, optimizer, sp, "mlp", 0, 120, check)
    grows = list(range(0, 91, 10))
    assert halves == sorted([(s, "grow") for s in grows] + [(s + 4, "drop") for s in grows])
    assert sp.active_counts() == budget and sp.drop_at is None


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd_nesterov"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_the_soft_bound_keeps_the_contract(model_name: str, optimizer_name: str) -> None:
    """New connections start at zero with zero state, kept ones keep value and state, inactive
    weights and state stay zero, at both halves."""
    before: dict = {}
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    optimizer.register_step_post_hook(lambda *_: before.update(snapshot(sp)))
    sp = regrow.MEST(model, optimizer, 0.8, total_steps=60, seed=3, **SOFT)
    changed = []

    def check(*_):
        after = snapshot(sp)
        if sp.last_update_step == sp.step_count - 1:
            changed.append(check_transition(before, after, exchange_equal=False))
        for name, (mask, weight, states) in after.items():
            assert torch.all(weight[~mask] == 0), name
            assert all(torch.all(s[~mask] == 0) for s in states), name

    optimizer.register_step_post_hook(check)
    train_steps(model, optimizer, sp, model_name, 0, 60)
    assert len(changed) == 10 and all(c > 0 for c in changed)
    assert sp.active_counts() == sp.target_counts


def test_validate_masks_refuses_a_broken_soft_bound() -> None:
    _, _, sp = build(**SOFT)
    name = sp.names[0]
    over = [m.clone() for m in sp.masks.values()]
    over[0].view(-1)[(~over[0]).view(-1).nonzero()[0]] = True  # one above the budget
    sp._half = "drop"
    with pytest.raises(RuntimeError, match=rf"{name}.*after the drop half"):
        sp.validate_masks(over)
    under = [m.clone() for m in sp.masks.values()]
    under[0].view(-1)[under[0].view(-1).nonzero()[0]] = False
    sp._half = "grow"
    with pytest.raises(RuntimeError, match="soft memory bound"):
        sp.validate_masks(under)


def soft_conv(init_seed: int = 0):
    model = MODELS["conv"][0]()
    if init_seed:
        for p in model.parameters():
            torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(init_seed))
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.MEST(model, optimizer, 0.8, total_steps=60, seed=5, **SOFT)
    return model, optimizer, sp


@pytest.mark.parametrize("stop", [2, 12, 14, 15])
def test_a_soft_run_resumes_bit_identically_between_the_halves(stop: int) -> None:
    model, optimizer, sp = soft_conv()
    train_steps(model, optimizer, sp, "conv", 0, 70)
    reference = model.state_dict()

    model, optimizer, sp = soft_conv()
    train_steps(model, optimizer, sp, "conv", 0, stop)
    assert (sp.drop_at is not None) == (stop % 10 < 5)  # between a grow and its drop
    state = saved_and_loaded(model, optimizer, sp)
    model2, optimizer2, sp2 = soft_conv(init_seed=123)
    restore(state, model2, optimizer2, sp2)
    assert sp2.drop_at == sp.drop_at and sp2.active_counts() == sp.active_counts()
    train_steps(model2, optimizer2, sp2, "conv", stop, 70)
    for (name, a), b in zip(reference.items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_closed_form_flops_count_the_soft_window_as_measured() -> None:
    total = 120
    model, optimizer, sp = build(total=total, **SOFT)
    counter = TrainingFlopsCounter.from_model(model, (20,), sp)
    base = counter.sparse_flops  # f_S at the budgets

    def count(index: int) -> None:
        counter.count_batch(sp, samples=1)

    train_steps(model, optimizer, sp, "mlp", 0, total, count)
    measured_extra = counter.train_flops / (3 * total) - base
    soft = regrow.method_training_flops("mest", sp.args, counter.profile, sp.plan, total)
    hard = regrow.method_training_flops(
        "mest", regrow.MEST.Args(delta_t=10), counter.profile, sp.plan, total
    )
    f_plan = counter.profile.inference_flops(sp.plan)
    assert hard.mean_inference_flops == f_plan
    assert hard.train_flops_per_sample == 3 * f_plan
    assert measured_extra > 0
    assert soft.mean_inference_flops - f_plan == pytest.approx(measured_extra, rel=1e-9)
    assert soft.train_flops_per_sample == pytest.approx(3 * soft.mean_inference_flops)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"memory_bound": "medium"}, "memory_bound='medium' is unknown: allowed values are"),
        ({"drop_schedule": "exp"}, "'linear', 'step'"),
        ({"grad_weight": -1.0}, "grad_weight=-1.0 is out of range"),
        ({"margin": 0.0}, "0 < margin <= 1"),
        ({"mutation_decay": 1.5}, "0 <= mutation_decay <= 1"),
        ({"decay_every": 0}, "0 < decay_every <= 1"),
        ({"memory_bound": "soft", "soft_steps": 100}, "1 <= soft_steps < delta_t"),
        ({"memory_bound": "soft", "delta_t": 1}, "1 <= soft_steps < delta_t"),
        ({"memory_bound": "soft", "redistribution": "momentum"}, "memory_bound='hard'"),
    ],
)
def test_bad_arguments_are_one_value_error_line(args: dict, message: str) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError) as error:
        regrow.MEST(model, OPTIMIZERS["sgd"](model.parameters()), 0.8, total_steps=1000, **args)
    assert message in str(error.value) and "\n" not in str(error.value)
