"""Saving mid-run and loading into fresh objects continues bit-identically on the CPU (SPEC §9)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import regrow
from tests.helpers import MODELS, OPTIMIZERS, batch, own_args, restore, saved_and_loaded

TOTAL = 60


def build(method: str, init_seed: int):
    model = MODELS["conv"][0]()
    if init_seed:  # a fresh model whose own initial weights differ
        for p in model.parameters():
            torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(init_seed))
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.get_method(method)(
        model,
        optimizer,
        sparsity=0.8,
        total_steps=TOTAL,
        seed=5,
        **own_args(method, delta_t=10, prune_begin=5, prune_end=40),
    )
    return model, optimizer, sp


def run(model, optimizer, sp, first: int, last: int) -> None:
    """Feed batches ``first .. last-1``."""
    for index in range(first, last):
        x, y = batch("conv", index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if sp.step():
            optimizer.step()


# RigL consumes batches 0, 11, 22 for its updates at steps 0, 10, 20; SET/SNFS/Pruning update
# after the optimizer steps 10, 20 (batches 10, 20). Stopping after batch 10, 11 or 12 saves right
# before, at and after an update.
@functools.cache
def uninterrupted(method: str) -> tuple[dict, int, int | None]:
    model, optimizer, sp = build(method, 0)
    run(model, optimizer, sp, 0, 70)
    return model.state_dict(), sp.step_count, sp.last_update_step


@pytest.mark.parametrize("stop", [10, 11, 12, 22])
@pytest.mark.parametrize("method", sorted(regrow.METHODS))
def test_resume_is_bit_identical(method: str, stop: int) -> None:
    reference, step_count, last_update = uninterrupted(method)
    model, optimizer, sp = build(method, 0)
    run(model, optimizer, sp, 0, stop)
    state = saved_and_loaded(model, optimizer, sp)

    model2, optimizer2, sp2 = build(method, init_seed=123)
    restore(state, model2, optimizer2, sp2)
    run(model2, optimizer2, sp2, stop, 70)

    for (name, a), b in zip(reference.items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (sp2.step_count, sp2.last_update_step) == (step_count, last_update)


def test_loading_a_mismatched_state_is_a_clear_error() -> None:
    _, _, sp = build("rigl", 0)
    _, _, other = build("set", 0)
    with pytest.raises(ValueError, match="from method 'set'"):
        sp.load_state_dict(other.state_dict())
    state = sp.state_dict()
    state["masks"].pop("3.weight")
    with pytest.raises(ValueError, match="saved masks are for layers"):
        sp.load_state_dict(state)


def ones_like_masks(state: dict) -> dict:
    return {**state, "masks": {k: torch.ones_like(m) for k, m in state["masks"].items()}}


@pytest.mark.parametrize("method", ["static", "rigl", "set", "srigl"])
def test_masks_whose_counts_contradict_the_allocation_are_refused(method: str) -> None:
    _, _, sp = build(method, 0)
    state = sp.state_dict()
    expected = sp.active_counts()["3.weight"]
    _, _, fresh = build(method, 0)
    masks_before = {k: m.clone() for k, m in fresh.masks.items()}
    with pytest.raises(ValueError, match=rf"3\.weight.* 1152 active .*{expected}"):
        fresh.load_state_dict(ones_like_masks(state))  # density 1.0 in a 0.8 sparsifier
    # Nothing was loaded.
    assert all(torch.equal(fresh.masks[k], m) for k, m in masks_before.items())
    assert fresh.active_counts() == sp.active_counts()


@pytest.mark.parametrize("method", ["pruning", "snip", "static"])
def test_a_state_saved_at_another_sparsity_is_refused(method: str) -> None:
    model, optimizer, sp = build(method, 0)
    run(model, optimizer, sp, 0, 30)  # pruning and SNIP have pruned by then
    model = MODELS["conv"][0]()
    other = regrow.get_method(method)(
        model,
        OPTIMIZERS["sgd_nesterov"](model.parameters()),
        sparsity=0.5,
        total_steps=TOTAL,
        **own_args(method, delta_t=10, prune_begin=5, prune_end=40),
    )
    with pytest.raises(ValueError, match=r"allocation"):
        other.load_state_dict(sp.state_dict())


def test_counts_that_change_legitimately_load() -> None:
    """Pruning before its first step (dense masks), redistribution (layer counts move, the total
    stays) and masks installed by start_from_masks (another run's layer counts) all resume."""
    _, _, pruning = build("pruning", 0)
    _, _, fresh = build("pruning", 0)
    fresh.load_state_dict(pruning.state_dict())  # full masks at step 0: its schedule's start

    def redistributing():
        model = MODELS["conv"][0]()
        optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
        sp = regrow.SET(
            model, optimizer, 0.8, total_steps=TOTAL, delta_t=10, redistribution="momentum"
        )
        return model, optimizer, sp

    model, optimizer, sp = redistributing()
    run(model, optimizer, sp, 0, 25)
    counts = sp.active_counts()
    assert counts != sp.target_counts  # moved between layers
    _, _, fresh = redistributing()
    fresh.load_state_dict(sp.state_dict())
    assert fresh.active_counts() == counts
    _, _, source = build("static", 0)
    masks = {k: m.clone() for k, m in source.masks.items()}
    masks["3.weight"].view(-1)[torch.nonzero(~masks["3.weight"].view(-1))[0]] = True  # one more
    _, _, started = build("static", 0)
    started.start_from_masks(masks)
    _, _, fresh = build("static", 0)
    fresh.load_state_dict(started.state_dict())
    assert fresh.active_counts() == started.active_counts() != started.target_counts
    fresh.load_state_dict(fresh.state_dict())  # and again, from the resumed one
