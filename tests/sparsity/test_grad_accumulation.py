"""grad_accumulation: the grow score of RigL and SRigL averages the dense gradients of the update
batch and the N − 1 batches before it (SPEC §3, §4); N = 1 is the paper's single batch."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

import regrow
from regrow.flops.training import TrainingFlopsCounter, train_flops_per_sample
from regrow.sparsity.schedules import drop_fraction
from tests.helpers import MODELS, OPTIMIZERS, batch, restore, saved_and_loaded
from tests.sparsity.test_contract import test_contract as run_contract
from tests.sparsity.test_methods import one_layer

GRADIENT_METHODS = ["rigl", "srigl"]


def build(method: str, init_seed: int = 0, **args):
    model = MODELS["mlp"][0]()
    if init_seed:  # a fresh model whose own initial weights differ
        for p in model.parameters():
            torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(init_seed))
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.get_method(method)(
        model, optimizer, sparsity=0.8, total_steps=60, seed=5, delta_t=10, **args
    )
    return model, optimizer, sp


def feed(model, optimizer, sp, first: int, last: int, seen: list | None = None) -> None:
    """Batches ``first .. last-1``; ``seen`` gets (step count, window due, buffer after, report)."""
    for index in range(first, last):
        x, y = batch("mlp", index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        step, window = sp.step_count, sp.window_batch_due()
        if sp.step():
            optimizer.step()
        if seen is not None:
            seen.append((step, window, sp.window_sum is not None, sp.last_batch))


# --------------------------------------------------------------------------- the grow score
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_the_grow_score_is_the_mean_of_the_windows_dense_gradients(method: str) -> None:
    """One layer, ``loss = Σ W ⊙ C`` so each batch's gradient is its ``C``; lr 0 keeps the
    weights. The first update, at step 5, grows the top |mean| of the gradients of steps 3, 4 and
    5 (the weights are all distinct, so the drop has no ties)."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(10, 30, generator=generator)
    kwargs = {"sparsity": 0.8, "distribution": "uniform", "total_steps": 40, "delta_t": 5}
    kwargs["begin_step"] = 5
    if method == "srigl":
        kwargs["ablation"] = False  # the grow set of every row is then a row-wise top-k
    model, optimizer, sp = one_layer(method, weight, grad_accumulation=3, **kwargs)
    gradients = [torch.randn(10, 30, generator=generator) for _ in range(6)]
    for gradient in gradients[:5]:  # the optimizer steps 0 .. 4
        optimizer.zero_grad()
        model.loss(gradient).backward()
        if sp.step():
            optimizer.step()
    assert sp.step_count == 5 and sp.update_batch_due()
    assert sp.window_batches is not None and int(sp.window_batches) == 2
    old = sp.masks["fc.weight"].clone()
    magnitude = model.fc.weight.detach().abs()
    optimizer.zero_grad()
    model.loss(gradients[5]).backward()
    assert sp.step() is False and sp.last_update_step == 5 and sp.window_sum is None

    # The drop (both methods): the n − k largest |w| of the active weights stay.
    active = int(old.sum())
    drop = int(drop_fraction(5, 0.3, 30) * active)
    keep = magnitude.masked_fill(~old, -1).flatten().topk(active - drop).indices
    kept = torch.zeros(300, dtype=torch.bool).index_fill_(0, keep, True).view(10, 30)
    mean = (gradients[3] + gradients[4] + gradients[5]) / 3
    assert torch.equal(grown(mean, kept, method), sp.masks["fc.weight"] & ~kept)
    assert not torch.equal(grown(gradients[5], kept, method), grown(mean, kept, method))


def grown(gradient: torch.Tensor, kept: torch.Tensor, method: str) -> torch.Tensor:
    """The positions an update grows by ``|gradient|`` after keeping ``kept``: RigL the top
    ``k`` of the layer (as many as were dropped), SRigL each row's top back to its fan-in 6."""
    scores = gradient.abs().masked_fill(kept, -1)
    if method == "rigl":
        top = scores.flatten().topk(300 // 5 - int(kept.sum())).indices
        return torch.zeros(300, dtype=torch.bool).index_fill_(0, top, True).view(10, 30)
    result = torch.zeros_like(kept)
    for row in range(10):
        top = scores[row].topk(6 - int(kept[row].sum())).indices
        result[row, top] = True
    return result


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_one_batch_is_the_default_and_the_same_as_not_passing_it(method: str) -> None:
    assert regrow.get_method(method).Args().grad_accumulation == 1
    runs = []
    for args in ({}, {"grad_accumulation": 1}):
        model, optimizer, sp = build(method, **args)
        seen: list = []
        feed(model, optimizer, sp, 0, 35, seen)
        assert not any(window or buffer for _, window, buffer, _ in seen)
        assert sp.state_dict()["method_state"] == {}
        runs.append((model.state_dict(), [report for *_, report in seen]))
    (first, reports), (second, reports_again) = runs
    assert reports == reports_again
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_the_buffer_lives_only_in_the_window_before_each_update(method: str) -> None:
    model, optimizer, sp = build(method, grad_accumulation=3)
    seen: list = []
    feed(model, optimizer, sp, 0, 60, seen)
    # Updates at steps 0, 10, .., 40 (T_end 45); the window: the two optimizer steps before each.
    windows = [step for step, window, *_ in seen if window]
    assert windows == [8, 9, 18, 19, 28, 29, 38, 39]
    for step, window, buffer, report in seen:
        update = not report.optimizer_step
        assert buffer == window, step  # created by the window, consumed by its update
        assert report.dense_backward == (window or update), step
    assert sp.window_sum is None and sp.state_dict()["method_state"] == {"gradient_window": None}


def test_a_window_at_the_start_holds_what_came_before() -> None:
    """The update at step 0 has no batch before it: it grows by its own gradient alone."""
    runs = []
    for n in (1, 4):
        model, optimizer, sp = build("rigl", grad_accumulation=n)
        feed(model, optimizer, sp, 0, 1)
        runs.append(sp.masks)
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])


def test_a_non_finite_window_batch_is_left_out_of_the_mean() -> None:
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(10, 30, generator=generator)
    model, optimizer, sp = one_layer(
        "rigl", weight, sparsity=0.8, total_steps=40, delta_t=5, grad_accumulation=3
    )
    gradients = [torch.randn(10, 30, generator=generator) for _ in range(6)]
    gradients[4][0, 0] = float("nan")
    for gradient in gradients:
        optimizer.zero_grad()
        model.loss(gradient).backward()
        if sp.step():
            optimizer.step()
    assert int(sp.window_batches) == 1
    assert torch.equal(sp.window_sum[0], gradients[5])


# ---------------------------------------------------------------------------- resume
@functools.cache
def uninterrupted(method: str) -> dict[str, torch.Tensor]:
    model, optimizer, sp = build(method, grad_accumulation=3)
    feed(model, optimizer, sp, 0, 40)
    return model.state_dict()


@pytest.mark.parametrize("stop", [10, 11, 12])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_a_run_stopped_inside_a_window_resumes_bit_identically(method: str, stop: int) -> None:
    """Batch ``i >= 1`` is optimizer step ``i - 1``: the window of the update at step 10 is
    batches 9 and 10, the update batch 11. Stopping after 10, 11 or 12 batches saves inside the
    window, at its end and right after the update."""
    reference = uninterrupted(method)
    model, optimizer, sp = build(method, grad_accumulation=3)
    feed(model, optimizer, sp, 0, stop)
    assert (sp.window_sum is not None) == (stop in (10, 11))
    state = saved_and_loaded(model, optimizer, sp)
    model, optimizer, sp = build(method, init_seed=123, grad_accumulation=3)
    restore(state, model, optimizer, sp)
    feed(model, optimizer, sp, stop, 40)
    for name, value in reference.items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_a_saved_window_of_other_layers_is_refused() -> None:
    _, optimizer, sp = build("rigl", grad_accumulation=3)
    feed(sp.model, optimizer, sp, 0, 10)
    state = sp.state_dict()
    state["method_state"]["gradient_window"]["sum"].pop("2.weight")
    _, _, fresh = build("rigl", grad_accumulation=3)
    with pytest.raises(ValueError, match=r"gradient window .* for 2\.weight"):
        fresh.load_state_dict(state)


# ------------------------------------------------------------------------ the argument
@pytest.mark.parametrize("bad", [0, -1, 1.5, "x", True])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_a_bad_value_is_one_value_error_naming_the_argument(method: str, bad) -> None:
    with pytest.raises(ValueError, match=rf"^grad_accumulation={bad!r} ") as error:
        build(method, grad_accumulation=bad)
    assert "allowed" in str(error.value)


def test_a_window_longer_than_the_update_interval_is_refused() -> None:
    build("rigl", grad_accumulation=11)  # the 10 batches since the last update and its own
    with pytest.raises(ValueError, match=r"grad_accumulation=12 .* <= 11"):
        build("rigl", grad_accumulation=12)


@pytest.mark.parametrize("method", ["set", "snfs", "static", "pruning"])
def test_methods_that_do_not_grow_by_the_batch_gradient_lack_it(method: str) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match=f"method {method} has no argument 'grad_accumulation'"):
        regrow.get_method(method)(
            model, OPTIMIZERS["sgd"](model.parameters()), total_steps=50, grad_accumulation=2
        )


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_the_contract_holds_with_a_window(method: str) -> None:
    run_contract(method, "mlp", "sgd_nesterov", {"grad_accumulation": 4})


# ----------------------------------------------------------------------------- FLOPs
def test_training_flops_charge_a_dense_backward_on_every_window_batch() -> None:
    model, optimizer, sp = build("rigl", grad_accumulation=3)
    feed(model, optimizer, sp, 0, 11)  # the update at step 0 and steps 0 .. 9
    counter = TrainingFlopsCounter.from_model(model, (20,), sp)
    for index in range(11, 22):  # one interval: the update at step 10, then steps 10 .. 19
        feed(model, optimizer, sp, index, index + 1)
        counter.count_batch(sp, samples=8)
    assert sp.last_update_step == 10 and sp.window_sum is not None  # 18, 19: the next window
    f_s, f_d = counter.sparse_flops, counter.dense_flops
    expected = train_flops_per_sample("rigl", f_s, f_d, delta_t=10, grad_accumulation=3)
    assert expected == pytest.approx((3 * f_s * 8 + 3 * (2 * f_s + f_d)) / 11)
    assert counter.train_flops == pytest.approx(expected * 8 * 11)
    assert train_flops_per_sample("rigl", f_s, f_d, 10, 1) == train_flops_per_sample(
        "rigl", f_s, f_d, 10
    )
    # The closed form of a run reads the argument from the method's Args.
    costs = [
        regrow.method_training_flops(
            "rigl", regrow.RigL.Args(delta_t=10, **args), counter.profile, sp.plan, 60
        )
        for args in ({}, {"grad_accumulation": 3})
    ]
    mean_f_s = costs[1].mean_inference_flops  # at the plan's real-valued densities
    assert costs[1].train_flops_per_sample == train_flops_per_sample(
        "rigl", mean_f_s, f_d, delta_t=10, grad_accumulation=3
    )
    assert costs[1].train_flops_per_sample > costs[0].train_flops_per_sample
    for bad in (0, 12, 2.5, True):
        with pytest.raises(ValueError, match="grad_accumulation"):
            train_flops_per_sample("rigl", f_s, f_d, delta_t=10, grad_accumulation=bad)


# --------------------------------------------------------------------- the compiled step
def test_a_compiled_run_routes_the_window_eagerly_and_matches_the_eager_run(
    tmp_path: Path, monkeypatch
) -> None:
    from regrow.train import load_config, train
    from tests.train.test_compile import recorded_updates

    updates = recorded_updates(monkeypatch)
    common = [
        "sparsity.method=rigl",
        "sparsity.args.delta_t=15",
        "sparsity.args.grad_accumulation=4",
        "train.epochs=1",
        "train.eval_every=1",
        "train.checkpoint_every=1",
        "train.progress=false",
    ]
    eager = train(load_config("quickstart", [*common, f"out_dir={tmp_path / 'eager'}"]))
    eager_updates = list(updates)
    updates.clear()
    compiled = train(
        load_config(
            "quickstart", [*common, "train.compile=true", f"out_dir={tmp_path / 'compiled'}"]
        )
    )
    assert [s for s, _ in updates] == [s for s, _ in eager_updates] and len(updates) >= 2
    for (step, masks), (_, eager_masks) in zip(updates, eager_updates, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(masks, eager_masks, strict=True)), step
    for key in ("steps", "train_flops"):
        assert compiled[key] == eager[key], key
