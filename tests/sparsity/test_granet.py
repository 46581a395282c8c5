"""GraNet (SPEC §14): counts on the cubic schedule from the initial count after every update,
regeneration that keeps them and grows the largest dense gradients, initial masks at a lower
initial density, argument checks, the contract and resume at initial_density 0.5, and its FLOPs
(closed form against a step-by-step integral, the live counter and ``regrow flops``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import regrow
from regrow.cli import main
from regrow.flops import TrainingFlopsCounter, profile_model
from tests.helpers import MODELS, OPTIMIZERS, batch, restore, saved_and_loaded
from tests.sparsity.test_contract import test_contract as contract

TOTAL, DELTA_T, BEGIN, END = 120, 10, 10, 70


def make(model_name: str = "mlp", **kwargs) -> regrow.GraNet:
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    settings = {
        "sparsity": 0.9,
        "total_steps": TOTAL,
        "seed": 2,
        "delta_t": DELTA_T,
        "prune_begin": BEGIN,
        "prune_end": END,
        **kwargs,
    }
    return regrow.GraNet(model, optimizer, **settings)


def feed(sp: regrow.GraNet, model_name: str, index: int) -> bool:
    """One batch through backward and ``sp.step()``; the optimizer step if it is due."""
    x, y = batch(model_name, index)
    sp.optimizer.zero_grad()
    nn.functional.cross_entropy(sp.model(x), y).backward()
    stepped = sp.step()
    if stepped:
        sp.optimizer.step()
    return stepped


def start_counts(sp: regrow.GraNet, initial_density: float) -> dict[str, int]:
    """``N0`` from the model's own plan at sparsity ``1 − initial_density`` (full at 1)."""
    if initial_density == 1.0:
        return {name: p.numel() for name, p in zip(sp.names, sp.params, strict=True)}
    plan = regrow.AllocationPlan.build(sp.model, 1.0 - initial_density, "erk")
    return plan.active_counts()


def expected_count(step: int, start: int, final: int) -> int:
    p = min(max((step - BEGIN) / (END - BEGIN), 0.0), 1.0)
    return start - math.floor((start - final) * (1 - (1 - p) ** 3) + 1e-9)


# ------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("initial_density", [1.0, 0.5])
def test_counts_equal_the_schedule_after_every_update(initial_density: float) -> None:
    sp = make(initial_density=initial_density)
    start = start_counts(sp, initial_density)
    assert sp.active_counts() == start
    updates, moved = [], 0
    for index in range(TOTAL + 20):
        if sp.step_count >= TOTAL:
            break
        before = {name: mask.clone() for name, mask in sp.masks.items()}
        if feed(sp, "mlp", index):
            assert sp.active_counts() == before_counts(before)  # only updates change masks
            continue
        step = sp.last_update_step
        updates.append(step)
        counts = sp.active_counts()
        for name, final in sp.target_counts.items():
            assert counts[name] == expected_count(step, start[name], final), (step, name)
            # pruning removes, regeneration moves: some connection is new, unless f·n < 1
            moved += int((sp.masks[name] & ~before[name]).sum())
    assert updates == list(range(BEGIN, TOTAL, DELTA_T))  # 10..70 pruning, 80..110 regeneration
    assert sp.active_counts() == sp.target_counts and moved > 0


def before_counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


def test_regeneration_after_prune_end_keeps_the_budgets_and_moves_connections() -> None:
    sp = make(initial_density=0.5)
    index, seen = 0, []
    while sp.step_count < TOTAL:
        before = {name: mask.clone() for name, mask in sp.masks.items()}
        if not feed(sp, "mlp", index) and sp.last_update_step > END:
            assert sp.active_counts() == sp.target_counts
            seen.append(sum(int((sp.masks[n] & ~before[n]).sum()) for n in sp.names))
        index += 1
    assert len(seen) == 4 and seen[0] > 0  # steps 80, 90, 100, 110


@pytest.mark.parametrize("update_step", [40, 90])  # inside the pruning window, after it
def test_regeneration_drops_the_smallest_weights_and_grows_the_largest_gradients(
    update_step: int,
) -> None:
    sp = make(initial_density=0.5)
    index = 0
    while not (sp.step_count == update_step and sp.update_batch_due()):
        feed(sp, "mlp", index)
        index += 1
    x, y = batch("mlp", index)
    sp.optimizer.zero_grad()
    nn.functional.cross_entropy(sp.model(x), y).backward()
    old = {n: m.clone() for n, m in sp.masks.items()}
    weights = {n: p.detach().abs().clone() for n, p in zip(sp.names, sp.params, strict=True)}
    grads = {n: p.grad.abs().clone() for n, p in zip(sp.names, sp.params, strict=True)}
    counts = sp.active_counts()
    assert sp.step() is False and sp.last_update_step == update_step

    fraction = 0.5 / 2 * (1 + math.cos(math.pi * (update_step - BEGIN) / (TOTAL - BEGIN)))
    for name, final in sp.target_counts.items():
        count = expected_count(update_step, start_counts(sp, 0.5)[name], final)
        regrown, new = math.floor(fraction * count), sp.masks[name]
        assert int(new.sum()) == count <= counts[name]
        # Kept: the count − regrown largest |w| of the old active weights (unique: no tie there).
        k = count - regrown
        ordered = weights[name].masked_fill(~old[name], -1.0).reshape(-1).sort(descending=True)
        assert ordered.values[k - 1] > ordered.values[k]
        kept = old[name] & (weights[name] >= ordered.values[k - 1])
        assert int(kept.sum()) == k and not (kept & ~new).any(), name
        # Grown: `regrown` positions outside the kept ones, the largest |∇L| among them.
        grown = new & ~kept
        assert int(grown.sum()) == regrown > 0, name
        assert grads[name][grown].min() >= grads[name][~kept & ~grown].max(), name
        assert int((new & ~old[name]).sum()) > 0, "regeneration moves connections"


# ------------------------------------------------------------------------- initial masks
def test_initial_masks_at_half_density_hold_the_plans_counts_and_are_seeded() -> None:
    sp = make(initial_density=0.5)
    plan = regrow.AllocationPlan.build(sp.model, 0.5, "erk")
    assert sp.active_counts() == sp.initial_counts() == plan.active_counts()
    sizes = {n: p.numel() for n, p in zip(sp.names, sp.params, strict=True)}
    assert all(sp.target_counts[n] <= c <= sizes[n] for n, c in sp.active_counts().items())
    assert sum(sp.target_counts.values()) < sum(plan.active_counts().values()) < sum(sizes.values())
    again = make(initial_density=0.5)
    other = make(initial_density=0.5, seed=3)
    assert all(torch.equal(sp.masks[n], again.masks[n]) for n in sp.names)
    assert not all(torch.equal(sp.masks[n], other.masks[n]) for n in sp.names)
    # At the plan's own density nothing is pruned: N0 = K.
    assert make(initial_density=0.1).active_counts() == make().target_counts


def test_a_layer_with_a_density_of_its_own_starts_at_the_larger_of_it_and_initial_density() -> None:
    custom = {"2.weight": 0.75}
    sp = make(initial_density=0.5, custom_densities=custom)
    assert sp.target_counts["2.weight"] == sp.initial_counts()["2.weight"] == 0.75 * 64 * 32
    low = make(initial_density=0.5, custom_densities={"2.weight": 0.25})
    assert low.initial_counts()["2.weight"] == 0.5 * 64 * 32


def test_start_masks_are_refused_at_any_initial_density() -> None:
    for density, message in ((1.0, "starts dense"), (0.5, "initial_density=0.5")):
        sp = make(initial_density=density)
        with pytest.raises(ValueError, match=message):
            sp.start_from_masks({n: m.clone() for n, m in sp.masks.items()})


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"initial_density": 0.0}, "initial_density"),
        ({"initial_density": 1.5}, "initial_density"),
        ({"initial_density": 0.05}, "initial_density"),  # below the plan's density 0.1
        ({"alpha": 1.5}, "alpha"),
        ({"delta_t": 0}, "delta_t"),
        ({"drop_schedule": "step"}, "drop_schedule"),
        ({"prune_end": TOTAL}, "prune_end"),
        ({"prune_begin": 80}, "prune_begin"),  # after prune_end
        ({"t_end_fraction": 0.05}, "t_end_fraction"),  # regeneration ends before step 10
        ({"t_end_fraction": -0.1}, "t_end_fraction"),
    ],
)
def test_bad_arguments_are_one_value_error_line(kwargs: dict, names: str) -> None:
    with pytest.raises(ValueError, match=names) as error:
        make(**kwargs)
    assert "\n" not in str(error.value) and "allowed" in str(error.value).lower()


def test_defaults_and_pruning_alone() -> None:
    args = regrow.GraNet.Args()
    assert (args.initial_density, args.alpha, args.delta_t, args.t_end_fraction) == (
        1.0,
        0.5,
        1000,
        1.0,
    )
    assert (args.prune_begin, args.prune_end, args.drop_schedule) == (None, None, "cosine")
    model = MODELS["mlp"][0]()
    scaled = regrow.GraNet(model, OPTIMIZERS["sgd"](model.parameters()), total_steps=9766)
    assert (scaled.schedule.begin, scaled.schedule.end, scaled.t_end) == (2000, 7500, 9766)
    alone = make(alpha=0.0, t_end_fraction=0.0)  # alpha 0: no regeneration, no update after 70
    assert [s for s in range(TOTAL) if alone.update_due(s)] == list(range(BEGIN, END + 1, 10))


# ----------------------------------------------------------------------- contract, resume
@pytest.mark.parametrize(
    ("model_name", "optimizer_name"), [("conv", "sgd_nesterov"), ("gpt", "adamw"), ("mlp", "adam")]
)
def test_the_contract_holds_from_half_density(model_name: str, optimizer_name: str) -> None:
    contract("granet", model_name, optimizer_name, {"initial_density": 0.5})


def saved(sp: regrow.GraNet) -> dict:
    return saved_and_loaded(sp.model, sp.optimizer, sp)


@pytest.mark.parametrize("stop", [5, 11, 45, 90])  # before the first update, during, after
def test_resume_from_half_density_is_bit_identical(stop: int) -> None:
    reference = make("conv", initial_density=0.5)
    for index in range(140):
        feed(reference, "conv", index)
    resumed = make("conv", initial_density=0.5)
    for index in range(stop):
        feed(resumed, "conv", index)
    state = saved(resumed)
    fresh = make("conv", initial_density=0.5, seed=2)
    torch.nn.init.normal_(next(fresh.model.parameters()))
    restore(state, fresh.model, fresh.optimizer, fresh)
    for index in range(stop, 140):
        feed(fresh, "conv", index)
    for (name, a), b in zip(
        reference.model.state_dict().items(), fresh.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert (fresh.step_count, fresh.last_update_step) == (
        reference.step_count,
        reference.last_update_step,
    )


def test_a_state_of_another_initial_density_is_refused_before_the_first_update() -> None:
    dense = saved(make(initial_density=1.0))["sparsifier"]
    half = saved(make(initial_density=0.5))["sparsifier"]
    make(initial_density=0.5).load_state_dict(half)
    with pytest.raises(ValueError, match="GraNet's initial count"):
        make(initial_density=0.5).load_state_dict(dense)
    with pytest.raises(ValueError, match="full: GraNet starts dense"):
        make(initial_density=1.0).load_state_dict(half)


# --------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("initial_density", [1.0, 0.5])
def test_mean_inference_flops_is_the_step_by_step_integral(initial_density: float) -> None:
    model = MODELS["mlp"][0]()
    profile = profile_model(model, (20,))
    plan = regrow.AllocationPlan.build(model, 0.9, "erk")
    start = regrow.AllocationPlan.build(model, 1.0 - initial_density, "erk").densities()
    final = plan.densities()
    if initial_density == 1.0:
        start = dict.fromkeys(final, 1.0)
    args = regrow.GraNet.Args(
        initial_density=initial_density, delta_t=DELTA_T, prune_begin=BEGIN, prune_end=END
    )
    total, progress = 0.0, 0.0
    for step in range(TOTAL):  # an update comes before its step's optimizer step
        if step in range(BEGIN, END + 1, DELTA_T):
            progress = 1 - (1 - (step - BEGIN) / (END - BEGIN)) ** 3
        densities = {n: start[n] - (start[n] - final[n]) * progress for n in final}
        total += profile.inference_flops(densities)
    mean = regrow.GraNet.mean_inference_flops(profile, plan, args, TOTAL)
    assert mean == pytest.approx(total / TOTAL, rel=1e-12)
    cost = regrow.method_training_flops("granet", args, profile, plan, TOTAL)
    f_d = profile.dense_flops
    assert cost.train_flops_per_sample == pytest.approx((3 * mean * 10 + 2 * mean + f_d) / 11)


def test_the_live_counter_agrees_with_the_closed_form() -> None:
    """Updates every ΔT over the whole run (prune_begin 0), so the closed form's ΔT + 1 batches
    per update hold; the two differ only by rounding counts to whole weights."""
    sp = make("conv", initial_density=0.5, prune_begin=0, prune_end=60)
    counter = TrainingFlopsCounter.from_model(sp.model, (3, 8, 8), sp)
    index = 0
    while sp.step_count < TOTAL:
        feed(sp, "conv", index)
        counter.count_batch(sp, samples=8)
        index += 1
    assert index == TOTAL + TOTAL // DELTA_T
    cost = regrow.method_training_flops("granet", sp.args, counter.profile, sp.plan, TOTAL)
    assert counter.ratio == pytest.approx(cost.train_flops_ratio, rel=2e-3)
    static = regrow.method_training_flops(
        "static", regrow.Static.Args(), counter.profile, sp.plan, TOTAL
    )
    assert static.train_flops_ratio < cost.train_flops_ratio < 1


def test_regrow_flops_counts_granet_over_its_schedule(capsys) -> None:
    common = ["flops", "--model", "wrn22_2", "sparsity.sparsity=0.9", "--json"]
    results = {}
    for density in (1.0, 0.5):
        argv = [*common, "sparsity.method=granet", f"sparsity.args.initial_density={density}"]
        assert main(argv) == 0
        results[density] = json.loads(capsys.readouterr().out)
    assert main([*common, "sparsity.method=pruning"]) == 0
    pruning = json.loads(capsys.readouterr().out)
    dense_to_sparse, sparse_to_sparse = results[1.0], results[0.5]
    assert dense_to_sparse["pruning_schedule"] == pruning["pruning_schedule"]
    # From dense: Pruning's f_S up to the one step each pruning comes earlier.
    assert dense_to_sparse["mean_inference_flops"] == pytest.approx(
        pruning["mean_inference_flops"], rel=1e-3
    )
    assert dense_to_sparse["mean_inference_flops"] < pruning["mean_inference_flops"]
    assert sparse_to_sparse["mean_inference_flops"] < dense_to_sparse["mean_inference_flops"]
    assert 0 < sparse_to_sparse["train_flops_ratio"] < dense_to_sparse["train_flops_ratio"] < 1
