"""regrow.wrap_optimizer: in a loop that only calls optimizer.step(), the library's semantics —
the same masks and losses as the documented hand-written loop, no step on an update batch — while
LR schedulers, gradient scalers and checkpoints see the wrapped optimizer as it is."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import regrow
from regrow.sparsity.optim_state import state_tensors
from tests.helpers import MODELS, batch, loss

STEPS = 60


def build(model_name: str, method: str = "rigl"):
    model = MODELS[model_name][0]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    extra = {"delta_t": 7} if method in ("rigl", "set") else {}
    sp = regrow.get_method(method)(model, optimizer, sparsity=0.8, total_steps=STEPS, **extra)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=STEPS)
    return model, optimizer, sp, scheduler


def hand_written(model_name: str, method: str) -> tuple[list[dict], list[float]]:
    """README's loop: `if sparsifier.step(): optimizer.step()`."""
    model, optimizer, sp, scheduler = build(model_name, method)
    masks, losses, index = [], [], 0
    while sp.step_count < STEPS:
        optimizer.zero_grad()
        value = loss(model, *batch(model_name, index))
        value.backward()
        if sp.step():
            optimizer.step()
            scheduler.step()
        masks.append({n: m.clone() for n, m in sp.masks.items()})
        losses.append(float(value.detach()))
        index += 1
    return masks, losses


def wrapped(model_name: str, method: str, checks=None) -> tuple[list[dict], list[float]]:
    """A trainer's loop: it calls optimizer.step() and scheduler.step() on every batch."""
    model, optimizer, sp, _ = build(model_name, method)
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(wrapper, T_max=STEPS)
    masks, losses, index = [], [], 0
    while sp.step_count < STEPS:
        wrapper.zero_grad()
        value = loss(model, *batch(model_name, index))
        value.backward()
        wrapper.step()
        if sp.last_batch.optimizer_step:  # a trainer steps its scheduler after a real step
            scheduler.step()
        if checks:
            checks(model, optimizer, sp)
        masks.append({n: m.clone() for n, m in sp.masks.items()})
        losses.append(float(value.detach()))
        index += 1
    return masks, losses


@pytest.mark.parametrize("model_name", ["mlp", "gpt"])
@pytest.mark.parametrize("method", ["rigl", "set", "static"])
def test_the_wrapper_gives_the_hand_written_loops_masks_and_losses(model_name, method) -> None:
    expected_masks, expected_losses = hand_written(model_name, method)
    masks, losses = wrapped(model_name, method)
    assert losses == expected_losses
    assert len(masks) == len(expected_masks)
    for got, want in zip(masks, expected_masks, strict=True):
        assert all(torch.equal(got[name], want[name]) for name in want)
    if method != "static":
        assert any(not torch.equal(masks[0][n], masks[-1][n]) for n in masks[0])


def test_an_update_batch_takes_no_step_and_inactive_state_stays_zero() -> None:
    real_steps: list[int] = []

    def checks(model, optimizer, sp) -> None:
        for name, param in zip(sp.names, sp.params, strict=True):
            off = ~sp.masks[name]
            assert torch.all(param.detach()[off] == 0), name
            for state in state_tensors(optimizer, param, name):
                assert torch.all(state[off] == 0), name

    model, optimizer, sp, _ = build("mlp")
    optimizer.register_step_post_hook(lambda *args: real_steps.append(sp.step_count))
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    updates = 0
    for index in range(30):
        wrapper.zero_grad()
        loss(model, *batch("mlp", index)).backward()
        before = len(real_steps)
        result = wrapper.step()
        if not sp.last_batch.optimizer_step:
            updates += 1
            assert len(real_steps) == before and result is None  # no optimizer step
        else:
            assert len(real_steps) == before + 1
        checks(model, optimizer, sp)
    assert updates >= 3 and len(real_steps) == 30 - updates == sp.step_count


def test_it_is_the_wrapped_optimizer_to_schedulers_scalers_and_checkpoints() -> None:
    model, optimizer, sp, _ = build("mlp")
    real_steps: list[int] = []
    optimizer.register_step_post_hook(lambda *args: real_steps.append(1))
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    assert isinstance(wrapper, torch.optim.Optimizer)
    assert wrapper.param_groups is optimizer.param_groups and wrapper.state is optimizer.state
    assert wrapper.defaults is optimizer.defaults
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" is one
        scheduler = torch.optim.lr_scheduler.StepLR(wrapper, step_size=1, gamma=0.5)
        wrapper.zero_grad()
        loss(model, *batch("mlp", 0)).backward()
        wrapper.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-3)
    # A gradient scaler unscales through the shared groups, then steps the wrapper.
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    wrapper.zero_grad()
    scaler.scale(loss(model, *batch("mlp", 1))).backward()
    scaler.step(wrapper)
    scaler.update()
    assert sp.step_count == len(real_steps) >= 1  # the scaler's step went through the sparsifier
    assert wrapper.state_dict() == optimizer.state_dict()
    copy = pickle.loads(pickle.dumps(wrapper.state_dict()))
    wrapper.load_state_dict(copy)
    assert repr(wrapper).startswith("SparseOptimizer(RigL")


def test_a_scaled_loss_gives_the_unscaled_runs_masks() -> None:
    """A power-of-two scale is undone exactly before the sparsifier sees the gradients."""
    expected, _ = hand_written("mlp", "rigl")
    model, optimizer, sp, _ = build("mlp", "rigl")
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(wrapper, T_max=STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=10**6)
    index = 0
    while sp.step_count < STEPS:
        wrapper.zero_grad()
        scaler.scale(loss(model, *batch("mlp", index))).backward()
        scaler.step(wrapper)
        scaler.update()
        if sp.last_batch.optimizer_step:
            scheduler.step()
        index += 1
    assert all(torch.equal(sp.masks[n], expected[-1][n]) for n in sp.masks)


def test_a_closure_is_run_before_the_sparsifier_sees_the_gradients() -> None:
    model, optimizer, sp, _ = build("mlp")
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    x, y = batch("mlp", 0)

    def closure() -> torch.Tensor:
        wrapper.zero_grad()
        value = loss(model, x, y)
        value.backward()
        return value

    before = float(loss(model, x, y).detach())
    assert float(wrapper.step(closure).detach()) == before  # the closure's loss, returned
    assert (not sp.last_batch.optimizer_step) or sp.step_count == 1


def test_bad_wrapping_is_one_clear_error() -> None:
    model, optimizer, sp, _ = build("mlp")
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="built with another optimizer"):
        regrow.wrap_optimizer(other, sp)
    wrapper = regrow.wrap_optimizer(optimizer, sp)
    with pytest.raises(ValueError, match="already a SparseOptimizer"):
        regrow.wrap_optimizer(wrapper, sp)
    with pytest.raises(ValueError, match=r"not a torch\.optim\.Optimizer"):
        regrow.wrap_optimizer(object(), sp)


def test_strip_masks_gives_the_plain_model_with_the_same_outputs() -> None:
    model, optimizer, sp, _ = build("mlp")
    for index in range(12):
        optimizer.zero_grad()
        loss(model, *batch("mlp", index)).backward()
        if sp.step():
            optimizer.step()
    x, _ = batch("mlp", 99)
    plain = regrow.strip_masks(model)
    assert plain is not model and not [k for k in plain.state_dict() if k.endswith("_mask")]
    assert [k for k in model.state_dict() if k.endswith("_mask")]  # the copy only
    assert torch.equal(plain(x), model(x))
    same = regrow.strip_masks(model, inplace=True)
    assert same is model and not [k for k in model.state_dict() if k.endswith("_mask")]


def _wrapped_run(model, optimizer, sp, wrapper, scheduler, start: int, stop: int, accumulate=1):
    """Batches ``start``..``stop`` through the wrapper (each optimizer step over ``accumulate``
    half batches of size 8 / accumulate, losses divided by ``accumulate``)."""
    for index in range(start, stop):
        wrapper.zero_grad()
        x, y = batch("mlp", index)
        for part_x, part_y in zip(x.chunk(accumulate), y.chunk(accumulate), strict=True):
            (loss(model, part_x, part_y) / accumulate).backward()
        wrapper.step()
        if sp.last_batch.optimizer_step:
            scheduler.step()


def test_a_wrapped_run_resumed_from_its_state_dicts_equals_the_uninterrupted_one() -> None:
    full = build("mlp")
    full_wrapper = regrow.wrap_optimizer(full[1], full[2])
    _wrapped_run(full[0], full[1], full[2], full_wrapper, full[3], 0, 40)

    first = build("mlp")
    _wrapped_run(first[0], first[1], first[2], regrow.wrap_optimizer(first[1], first[2]),
                 first[3], 0, 17)  # fmt: skip
    saved = pickle.loads(pickle.dumps({
        "model": first[0].state_dict(), "optimizer": first[1].state_dict(),
        "sparsifier": first[2].state_dict(), "scheduler": first[3].state_dict(),
    }))  # fmt: skip
    model, optimizer, sp, scheduler = build("mlp")  # fresh objects, as after a restart
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    sp.load_state_dict(saved["sparsifier"])
    scheduler.load_state_dict(saved["scheduler"])
    _wrapped_run(model, optimizer, sp, regrow.wrap_optimizer(optimizer, sp), scheduler, 17, 40)
    assert sp.step_count == full[2].step_count
    for name in sp.masks:
        assert torch.equal(sp.masks[name], full[2].masks[name]), name
    for key, value in full[0].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_two_accumulated_half_batches_give_the_doubled_batchs_masks() -> None:
    one = build("mlp")
    _wrapped_run(one[0], one[1], one[2], regrow.wrap_optimizer(one[1], one[2]), one[3], 0, 40)
    two = build("mlp")
    wrapper = regrow.wrap_optimizer(two[1], two[2])
    _wrapped_run(two[0], two[1], two[2], wrapper, two[3], 0, 40, accumulate=2)
    assert two[2].step_count == one[2].step_count
    assert any(not torch.equal(m, build("mlp")[2].masks[n]) for n, m in one[2].masks.items())
    for name in one[2].masks:  # the same updates from the same (summed) gradients
        assert torch.equal(two[2].masks[name], one[2].masks[name]), name
    for key, value in one[0].state_dict().items():
        assert torch.allclose(two[0].state_dict()[key], value, atol=1e-6), key
