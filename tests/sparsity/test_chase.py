"""Chase (SPEC §16): one global drop and grow that keeps the total (each layer's count moves),
channels removed on the cubic schedule by their unmasked mean magnitude and never regrown (also
across a resume), the output layer never losing one, the measured FLOP counter, its arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.flops import TrainingFlopsCounter, profile_model
from tests.helpers import MODELS, OPTIMIZERS, batch, loss, restore, saved_and_loaded

TOTAL = 200


def make(model_name: str = "mlp", **kwargs) -> regrow.Chase:
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    settings = {"sparsity": 0.9, "total_steps": TOTAL, "seed": 1, "delta_t": 10, **kwargs}
    return regrow.Chase(model, optimizer, **settings)


def run(sp: regrow.Chase, model_name: str, first: int, last: int, after_update=None) -> None:
    """Feed batches ``first .. last-1``; call ``after_update()`` after every mask update."""
    for index in range(first, last):
        x, y = batch(model_name, index)
        sp.optimizer.zero_grad()
        loss(sp.model, x, y).backward()
        if sp.step():
            sp.optimizer.step()
        elif after_update is not None:
            after_update()


def empty_rows(sp: regrow.Chase, name: str) -> set[int]:
    return set(torch.nonzero(~sp.rows(name, sp.masks[name]).any(dim=1)).flatten().tolist())


# ------------------------------------------------------------------ counts and the schedule
@pytest.mark.parametrize("model_name", ["mlp", "conv", "gpt"])
def test_total_is_kept_at_every_update_while_layers_and_channels_move(model_name) -> None:
    sp = make(model_name)
    budget = sum(sp.target_counts.values())
    output = sp.plan.output_layer
    counts, removed = [], [sp.removed_channels()]

    def after_update() -> None:
        step = sp.last_update_step
        assert sum(sp.active_counts().values()) == budget
        now = sp.removed_channels()
        total = sum(len(r) for r in now.values())
        if sp.channel_removal_due(step):
            assert total == sp.scheduled_removed(step)
        else:
            assert total == sum(len(r) for r in removed[-1].values())
        for name, rows in now.items():
            assert set(removed[-1][name]) <= set(rows), f"{name}: a removed channel came back"
            assert set(rows) <= empty_rows(sp, name), f"{name}: a removed channel holds weights"
            assert len(sp.removed[name]) - len(rows) >= max(1, sp.min_channels[name])
        if output is not None:
            assert now[output] == [], "the output layer never loses a channel"
        counts.append(sp.active_counts())
        removed.append(now)

    run(sp, model_name, 0, TOTAL + 20, after_update)
    assert len(counts) == len([s for s in range(TOTAL) if sp.update_due(s)])
    assert any(c != sp.target_counts for c in counts), "the global update moves layers' counts"
    final = sum(len(r) for r in removed[-1].values())
    eligible = sum(len(sp.removed[n]) for n in sp.eligible)
    assert final == min(math.floor(0.5 * eligible), sp.channel_capacity()) > 0


@pytest.mark.parametrize("schedule", ["cubic", "linear"])
def test_removed_count_follows_the_ramp_over_the_window(schedule) -> None:
    sp = make("conv", channel_schedule=schedule, channel_every=2, channel_sparsity=0.3)
    steps = [s for s in range(TOTAL) if sp.channel_removal_due(s)]
    updates = [s for s in range(TOTAL) if sp.update_due(s)]
    assert steps == updates[::2] and sp.channel_steps == (steps[0], steps[-1])
    eligible = sum(len(sp.removed[n]) for n in sp.eligible)
    for step in steps:
        p = (step - steps[0]) / (steps[-1] - steps[0])
        ramp = 1 - (1 - p) ** 3 if schedule == "cubic" else p
        expected = math.floor(0.3 * eligible * ramp + 1e-9)
        assert sp.scheduled_removed(step) == min(expected, sp.channel_capacity())
    assert sp.scheduled_removed(steps[-1]) == math.floor(0.3 * eligible)
    ends = make("conv", channel_end_fraction=0.5)
    assert max(s for s in range(TOTAL) if ends.channel_removal_due(s)) <= 0.5 * TOTAL


# ------------------------------------------------------------ hand-checked global selection
class ThreeLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6, bias=False)
        self.b = nn.Linear(6, 6, bias=False)
        self.c = nn.Linear(6, 2, bias=False)


def hand_made(**kwargs) -> regrow.Chase:
    """Three sparse layers at density 0.5 with distinct weights, layer ``a`` the weakest."""
    model = ThreeLayers()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = regrow.Chase(
        model,
        optimizer,
        sparsity=0.5,
        distribution="uniform",
        total_steps=100,
        dense_layers=[],
        delta_t=10,
        alpha=0.3,
        **kwargs,
    )
    values = torch.randperm(84, generator=torch.Generator().manual_seed(7)).float() + 1
    with torch.no_grad():
        for scale, name, p in zip((0.01, 1.0, 1.0), sp.names, sp.params, strict=True):
            count = p.numel()
            p.copy_(values[:count].view(p.shape) * scale * sp.masks[name])
            values = values[count:]
    return sp


def set_gradients(sp: regrow.Chase, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for p in sp.params:
        p.grad = torch.randn(p.shape, generator=generator)
        grads.append(p.grad.clone())
    return grads


@pytest.mark.parametrize("accumulation", [1, 2])
def test_drop_and_grow_take_the_global_top_k_over_all_layers(accumulation) -> None:
    """With ``grad_accumulation=2`` the grow score is ``|mean|`` of the update batch's dense
    gradient and the one before it (RigL's window, inherited)."""
    begin = accumulation - 1
    sp = hand_made(channel_sparsity=0.0, grad_accumulation=accumulation, begin_step=begin)
    window = set_gradients(sp, 2) if accumulation == 2 else None
    if window is not None:
        assert sp.step()  # an ordinary batch of the window: its dense gradient is kept
        sp.optimizer.step()
    old = [sp.masks[n].clone() for n in sp.names]
    weights = [p.detach().clone() for p in sp.params]
    grads = set_gradients(sp, 3)
    assert not sp.step() and sp.last_update_step == begin  # the update spends this batch
    if window is not None:
        grads = [(a + b) / 2 for a, b in zip(window, grads, strict=True)]
    total = sum(int(m.sum()) for m in old)
    drop = math.floor(sp.drop_fraction(begin) * total)
    # By hand: the (layer, index) of every active weight, smallest |w| first, over all layers.
    active = [
        (float(w.reshape(-1)[i].abs()), layer, i)
        for layer, (m, w) in enumerate(zip(old, weights, strict=True))
        for i in torch.nonzero(m.reshape(-1)).flatten().tolist()
    ]
    dropped = {(layer, i) for _, layer, i in sorted(active)[:drop]}
    kept = {(layer, i) for _, layer, i in active} - dropped
    free = [
        (-float(g.reshape(-1)[i].abs()), layer, i)
        for layer, g in enumerate(grads)
        for i in range(g.numel())
        if (layer, i) not in kept
    ]
    grown = {(layer, i) for _, layer, i in sorted(free)[:drop]}
    for layer, name in enumerate(sp.names):
        expected = torch.zeros(old[layer].numel(), dtype=torch.bool)
        for _, i in [x for x in kept | grown if x[0] == layer]:
            expected[i] = True
        assert torch.equal(sp.masks[name].reshape(-1), expected), name
    assert all(layer == 0 for layer, _ in dropped), "the weakest layer gives every weight"
    assert sp.active_counts()[sp.names[0]] < sp.target_counts[sp.names[0]]
    assert sum(sp.active_counts().values()) == total


def test_channels_of_smallest_umm_go_first_over_all_layers_down_to_each_minimum() -> None:
    # channel_end_fraction=0: one removal, the final one, at the update of step 0.
    sp = hand_made(channel_sparsity=0.5, channel_end_fraction=0.0, min_channel_fraction=0.5)
    assert sp.channel_steps == (0, 0) and sp.eligible == sp.names[:2]
    assert sp.min_channels == {sp.names[0]: 1, sp.names[1]: 1, sp.names[2]: 1}
    umm = {
        name: (p.detach().abs().sum(dim=1) / p.shape[1]).tolist()  # zeros of the mask included
        for name, p in zip(sp.names[:2], sp.params, strict=False)
    }
    target = sp.scheduled_removed(0)
    assert target == 6
    # By hand: lowest UMM first over both layers, a layer stopping at its minimum of 1 channel.
    order = sorted((u, name, r) for name, values in umm.items() for r, u in enumerate(values))
    expected: dict[str, list[int]] = {name: [] for name in sp.names}
    for _, name, r in order:
        if sum(map(len, expected.values())) < target and len(expected[name]) < 5:
            expected[name].append(r)
    assert len(expected[sp.names[0]]) == 5 and len(expected[sp.names[1]]) == 1
    set_gradients(sp, 4)
    sp.step()
    assert {n: sorted(r) for n, r in expected.items()} == sp.removed_channels()
    for name, rows in sp.removed_channels().items():
        assert set(rows) <= empty_rows(sp, name)
    assert sum(sp.active_counts().values()) == sum(sp.target_counts.values())


# ------------------------------------------------------------------------ output and resume
def test_output_layer_never_loses_a_channel_even_at_high_channel_sparsity() -> None:
    sp = make("mlp", channel_sparsity=0.9, min_channel_fraction=0.0, sparsity=0.95)
    output = sp.names[-1]
    assert sp.plan.output_layer == output and output not in sp.eligible
    run(sp, "mlp", 0, TOTAL)
    assert sp.removed_channels()[output] == []
    assert all(len(sp.removed[n]) - len(sp.removed_channels()[n]) >= 1 for n in sp.eligible)
    eligible = sum(len(sp.removed[n]) for n in sp.eligible)
    final = sum(len(r) for r in sp.removed_channels().values())
    assert final == min(math.floor(0.9 * eligible), sp.channel_capacity()) > 0


def test_removed_channels_are_saved_and_stay_removed_after_a_resume() -> None:
    reference = make("conv")
    run(reference, "conv", 0, TOTAL)
    sp = make("conv")
    run(sp, "conv", 0, 75)  # mid-window: some channels removed, more to come
    middle = sp.removed_channels()
    assert 0 < sum(map(len, middle.values())) < sum(map(len, reference.removed_channels().values()))
    state = saved_and_loaded(sp.model, sp.optimizer, sp)
    again = make("conv")
    restore(state, again.model, again.optimizer, again)
    assert again.removed_channels() == middle
    run(again, "conv", 75, TOTAL)
    assert again.removed_channels() == reference.removed_channels()
    for name in again.names:
        assert set(middle[name]) <= set(again.removed_channels()[name])
        assert torch.equal(again.masks[name], reference.masks[name])
    broken = dict(state["sparsifier"])
    broken["method_state"] = {**state["sparsifier"]["method_state"], "removed_channels": {}}
    with pytest.raises(ValueError, match="removed_channels"):
        make("conv").load_state_dict(broken)


@pytest.mark.parametrize("model_name", ["mlp", "conv"])
def test_trained_masks_have_empty_rows_in_every_layer_but_the_output(model_name) -> None:
    """What `regrow export` turns into smaller layers: whole empty rows."""
    sp = make(model_name)
    run(sp, model_name, 0, TOTAL)
    for name in sp.eligible:
        assert len(empty_rows(sp, name)) >= len(sp.removed_channels()[name]) > 0, name


# ---------------------------------------------------------------------------------- FLOPs
def test_training_flops_are_measured_by_the_counter_not_a_closed_form() -> None:
    sp = make("conv")
    profile = profile_model(sp.model, (3, 8, 8))
    with pytest.raises(ValueError, match="measured during training"):
        regrow.method_training_flops("chase", sp.args, profile, sp.plan, TOTAL)
    counter = TrainingFlopsCounter(profile, sp)
    expected, f_d, updates = 0.0, profile.dense_flops, []
    for index in range(60):
        x, y = batch("conv", index)
        sp.optimizer.zero_grad()
        loss(sp.model, x, y).backward()
        step = sp.step_count
        if sp.step():
            sp.optimizer.step()
        else:
            updates.append(step)
        f_s = profile.inference_flops(sp.densities())
        expected += 8 * (2 * f_s + f_d if not sp.last_batch.optimizer_step else 3 * f_s)
        counter.count_batch(sp, samples=8)
    assert updates == [s for s in range(sp.step_count) if sp.update_due(s)]
    assert math.isclose(counter.train_flops, expected, rel_tol=1e-12)
    assert sp.densities() != sp.plan.densities()  # so the plan's f_S would be wrong


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"channel_sparsity": 1.0}, "channel_sparsity"),
        ({"channel_sparsity": -0.1}, "channel_sparsity"),
        ({"channel_schedule": "cosine"}, "channel_schedule"),
        ({"channel_every": 0}, "channel_every"),
        ({"channel_end_fraction": 0.9}, "channel_end_fraction"),
        ({"min_channel_fraction": 1.5}, "min_channel_fraction"),
        ({"redistribution": "momentum"}, "redistribution"),
        ({"sparsity": 0.1, "channel_sparsity": 0.9}, "channel_sparsity"),
        ({"channel_end_fraction": 0.05, "begin_step": 20}, "channel_end_fraction"),
    ],
)
def test_bad_arguments_are_one_value_error_line_naming_them(settings, named) -> None:
    with pytest.raises(ValueError, match=named) as error:
        make("mlp", **settings)
    assert "\n" not in str(error.value)
