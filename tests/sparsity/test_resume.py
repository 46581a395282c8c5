"""Saving mid-run and loading into fresh objects continues bit-identically on the CPU (SPEC §9)."""

from __future__ import annotations

import functools
import io

import pytest
import torch
from torch import nn

import regrow
from tests.helpers import MODELS, OPTIMIZERS, batch, own_args

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
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sparsifier": sp.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    model2, optimizer2, sp2 = build(method, init_seed=123)
    model2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["optimizer"])
    sp2.load_state_dict(state["sparsifier"])
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
