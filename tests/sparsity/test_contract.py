"""The contract every registered method must keep (SPEC §1, §4, §5), checked at every step.

For each method × model × optimizer (SGD plain, with momentum and Nesterov; Adam; AdamW), hundreds of
steps with weight decay (models: a small CNN, an MLP, and a one-block character-level transformer
trained on token ids with a per-position cross-entropy), checking:
- active counts follow the method's count rule: per layer or in total never change (dynamic
  methods), every active row holds the same share of the layer's budget (constant fan-in), or
  counts only ever fall (pruning methods); every masked method ends at the plan's budgets (in
  total, for a method whose rule is ``"total"``);
- mask updates happen exactly at the steps the method's ``update_due`` names;
- inactive weights, their gradients at optimizer time and their optimizer state are exactly zero;
- at every mask update, new connections start at zero with zero state, connections active before
  and after (including any dropped and regrown in the same update) keep value and state exactly,
  and the removed and added sets are disjoint and (without redistribution) of equal size.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.sparsity.optim_state import ELEMENTWISE_OPTIMIZERS, state_tensors
from tests.helpers import MODELS, OPTIMIZERS, batch, loss, own_args

STEPS = 240


def make(method: str, model_name: str, optimizer_name: str, **kwargs):
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    return model, optimizer, kwargs


def snapshot(sp: regrow.Sparsifier) -> dict:
    return {
        name: (
            sp.masks[name].clone(),
            p.detach().clone(),
            [s.clone() for s in state_tensors(sp.optimizer, p, name)],
        )
        for name, p in zip(sp.names, sp.params, strict=True)
    }


def check_transition(before: dict, after: dict, exchange_equal: bool) -> int:
    """Check one mask update; return how many connections changed."""
    changed = 0
    for name, (old, w_old, s_old) in before.items():
        new, w_new, s_new = after[name]
        added, removed, kept = new & ~old, old & ~new, old & new
        assert not (added & removed).any()
        if exchange_equal:
            assert int(added.sum()) == int(removed.sum()), name
        assert torch.all(w_new[added] == 0), f"{name}: new connections must start at zero"
        assert torch.equal(w_new[kept], w_old[kept]), f"{name}: kept weights must keep their value"
        assert torch.all(w_new[~new] == 0)
        if s_old and s_new:
            for a, b in zip(s_old, s_new, strict=True):
                assert torch.all(b[added] == 0), (
                    f"{name}: new connections must start with zero state"
                )
                assert torch.equal(b[kept], a[kept]), f"{name}: kept connections keep their state"
                assert torch.all(b[~new] == 0)
        changed += int(added.sum()) + int(removed.sum())
    return changed


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(regrow.METHODS))
def test_contract(
    method: str, model_name: str, optimizer_name: str, method_args: dict | None = None
) -> None:
    """Every expectation comes from the method's declared traits and count rule, not its name.
    ``method_args``: more arguments of the method (for tests that call this one)."""
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    before: dict = {}
    # Registered before the sparsifier's own hook, so it sees the weights right after the
    # optimizer step and before any after-step mask update.
    optimizer.register_step_post_hook(lambda *_: before.update(snapshot(sp)))
    sp = regrow.get_method(method)(
        model,
        optimizer,
        sparsity=0.8,
        distribution="erk",
        total_steps=STEPS,
        seed=3,
        **own_args(method, delta_t=15, prune_begin=30, prune_end=150),
        **(method_args or {}),
    )
    traits, rule = sp.traits, sp.count_rule()
    sizes = {n: p.numel() for n, p in zip(sp.names, sp.params, strict=True)}
    initial_counts = sp.active_counts()
    assert initial_counts == sp.initial_counts()
    assert all(sp.target_counts[n] <= c <= sizes[n] for n, c in initial_counts.items())
    updates, changed_total = [], 0

    def check_gradients(*_):
        for name, p in zip(sp.names, sp.params, strict=True):
            if p.grad is not None:
                assert torch.all(p.grad[~sp.masks[name]] == 0), f"{name}: inactive gradient"

    def check_after_step(*_):
        nonlocal changed_total
        after = snapshot(sp)
        if not traits.updates_before_step and sp.last_update_step == sp.step_count - 1:
            # an update ran in the sparsifier's hook, just before this one
            updates.append(sp.last_update_step)
            changed_total += check_transition(before, after, rule == "layer")
        for name, (mask, weight, states) in after.items():
            assert torch.all(weight[~mask] == 0), f"{name}: inactive weight is not zero"
            for state in states:
                assert torch.all(state[~mask] == 0), f"{name}: inactive optimizer state"

    optimizer.register_step_pre_hook(check_gradients)
    optimizer.register_step_post_hook(check_after_step)

    batches, previous = 0, initial_counts
    while sp.step_count < STEPS:
        x, y = batch(model_name, batches)
        batches += 1
        optimizer.zero_grad()
        loss(model, x, y).backward()
        pre = snapshot(sp)
        step_before = sp.step_count
        if sp.step():
            optimizer.step()
        else:
            assert traits.updates_before_step
            assert sp.step_count == step_before, "no optimizer step on an update iteration"
            updates.append(step_before)
            changed_total += check_transition(pre, snapshot(sp), rule == "layer")
        counts = sp.active_counts()
        if rule == "layer":
            assert counts == initial_counts, "active counts must never change"
        elif rule == "total":
            assert sum(counts.values()) == sum(initial_counts.values())
        elif rule == "fan_in":  # every active row holds budget // active rows
            for name, mask in sp.masks.items():
                rows = mask.reshape(mask.shape[0], -1).sum(dim=1)
                active = rows[rows > 0]
                assert torch.all(active == sp.target_counts[name] // len(active)), name
        else:  # a method that prunes only ever removes connections
            assert all(counts[n] <= previous[n] for n in counts)
        previous = counts

    assert updates == [s for s in range(STEPS) if sp.update_due(s)], "updates exactly on schedule"
    if rule is not None and updates:
        assert changed_total > 0, "dynamic methods must actually move connections"
    if traits.masked and rule == "fan_in":  # as close to the budget as a constant fan-in allows
        for name, mask in sp.masks.items():
            active_rows = int(mask.reshape(mask.shape[0], -1).any(dim=1).sum())
            assert sp.target_counts[name] - active_rows < counts[name] <= sp.target_counts[name]
    elif traits.masked:
        if rule == "total":  # the layers' counts move, their sum is the budget's
            assert sum(sp.active_counts().values()) == sum(sp.target_counts.values())
        else:
            assert sp.active_counts() == sp.target_counts, "the run ends at the plan's budgets"
        assert math.isclose(sp.global_density(), 0.2, abs_tol=0.01)
    else:
        assert sp.names == [] and updates == []


#: One configuration of every optimizer on regrow's allow-list (each with weight decay).
ALLOWLISTED = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=5e-4),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=5e-2),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-3, weight_decay=5e-4),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-3, weight_decay=5e-4),
    "RMSprop": lambda p: torch.optim.RMSprop(
        p, lr=1e-3, momentum=0.9, centered=True, weight_decay=5e-4
    ),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2, initial_accumulator_value=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p, weight_decay=5e-4),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=1e-2, weight_decay=5e-4),
}


def test_every_allowlisted_optimizer_is_covered() -> None:
    assert sorted(ALLOWLISTED) == sorted(ELEMENTWISE_OPTIMIZERS)


@pytest.mark.parametrize("optimizer_class", sorted(ALLOWLISTED))
@pytest.mark.parametrize("method", ["rigl", "set", "pruning"])
def test_contract_over_every_allowlisted_optimizer(
    method: str, optimizer_class: str, monkeypatch
) -> None:
    monkeypatch.setitem(OPTIMIZERS, optimizer_class, ALLOWLISTED[optimizer_class])
    test_contract(method, "mlp", optimizer_class)


@pytest.mark.parametrize("method", ["rigl", "set", "snfs"])
def test_kaiming_reinit_gives_new_connections_nonzero_values(method: str) -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.get_method(method)(
        model, optimizer, sparsity=0.8, total_steps=100, delta_t=5, reinit="kaiming"
    )
    old = {n: m.clone() for n, m in sp.masks.items()}
    for i in range(3):
        x, y = batch("mlp", i)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if sp.step():
            optimizer.step()
        if sp.last_update_step == 0:
            break
    grown = [(p.detach()[sp.masks[n] & ~old[n]]) for n, p in zip(sp.names, sp.params, strict=True)]
    values = torch.cat(grown)
    assert values.numel() > 0 and torch.all(values != 0)
