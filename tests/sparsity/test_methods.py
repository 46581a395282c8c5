"""Method-specific behaviour: RigL (SPEC §3, §4), SNIP and Pruning (§5), SNFS, redistribution (§6),
mixed precision and determinism (§9), and errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import regrow
from regrow.sparsity.schedules import drop_fraction
from tests.helpers import MODELS, OPTIMIZERS, batch, own_args


class Layer(nn.Module):
    """One linear weight with a chosen loss gradient: ``loss = Σ W ⊙ C`` gives ``∂loss/∂W = C``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def loss(self, gradient: torch.Tensor) -> torch.Tensor:
        return (self.fc.weight * gradient).sum()


def one_layer(method: str, weight: torch.Tensor, **kwargs):
    model = Layer(weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = regrow.get_method(method)(model, optimizer, dense_layers=[], **kwargs)
    return model, optimizer, sp


def train(model_name: str, sp: regrow.Sparsifier, optimizer, steps: int, first_batch: int = 0):
    """Run until ``steps`` optimizer steps were taken; return the next batch index."""
    index = first_batch
    while sp.step_count < steps:
        x, y = batch(model_name, index)
        index += 1
        optimizer.zero_grad()
        nn.functional.cross_entropy(sp.model(x), y).backward()
        if sp.step():
            optimizer.step()
    return index


# ------------------------------------------------------------------------------------ RigL
def test_rigl_grows_exactly_the_top_k_gradients_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=generator)
    model, _optimizer, sp = one_layer(
        "rigl", weight, sparsity=0.75, distribution="uniform", total_steps=200, alpha=0.5
    )
    old = sp.masks["fc.weight"].clone()
    w_before = model.fc.weight.detach().clone()
    # Gradient values from a small set, so many ties straddle the top-k boundary.
    gradient = torch.randint(0, 4, (16, 16), generator=generator).float() * (-1) ** torch.randint(
        0, 2, (16, 16), generator=generator
    )
    model.loss(gradient).backward()
    reference = torch.autograd.grad(model.loss(gradient), model.fc.weight)[0]
    assert torch.equal(reference, gradient)

    assert sp.step() is False
    new = sp.masks["fc.weight"]
    active = int(old.sum())
    k = math.floor(0.5 * active)  # the drop fraction at step 0 is alpha
    assert int(new.sum()) == active
    # Drop, computed independently: keep the (n - k) largest |w| of the active weights.
    magnitudes = torch.where(old, w_before.abs(), -1.0).flatten()
    kept = torch.zeros(256, dtype=torch.bool)
    kept[magnitudes.argsort(descending=True)[: active - k]] = True
    kept = kept.view(16, 16)
    assert torch.all(new[kept])
    # Grow: exactly k positions outside the kept set, none with a smaller |g| than any position
    # left out (ties at the boundary may go either way).
    grown = new & ~kept
    assert int(grown.sum()) == k
    assert reference.abs()[grown].min() >= reference.abs()[~kept & ~new].max()
    assert int((reference.abs()[~kept] == reference.abs()[grown].min()).sum()) > int(
        (reference.abs()[grown] == reference.abs()[grown].min()).sum()
    ), "the test must exercise a tie at the top-k boundary"
    # Kept weights keep their value; connections that were inactive start at zero.
    assert torch.equal(model.fc.weight.detach()[kept], w_before[kept])
    assert torch.all(model.fc.weight.detach()[new & ~old] == 0)


def test_rigl_drop_removes_smallest_magnitudes_and_grow_count_matches() -> None:
    """With zero gradient on active weights and positive gradient elsewhere, dropped weights are
    never regrown: exactly floor(f·n) of the smallest |w| leave and as many new ones arrive."""
    weight = torch.arange(1, 401, dtype=torch.float32).reshape(20, 20) / 400
    model, optimizer, sp = one_layer(
        "rigl", weight, sparsity=0.5, distribution="uniform", total_steps=400, delta_t=10
    )
    for step in range(0, 300, 10):
        old = sp.masks["fc.weight"].clone()
        w = model.fc.weight.detach().clone()
        gradient = torch.where(old, 0.0, 1.0 + torch.rand(20, 20))
        optimizer.zero_grad()
        model.loss(gradient).backward()
        assert sp.step_count == step
        assert sp.step() is False
        new = sp.masks["fc.weight"]
        removed = old & ~new
        k = math.floor(drop_fraction(step, 0.3, 300) * 200)
        assert int(removed.sum()) == k
        assert int((new & ~old).sum()) == k
        if k:
            assert w[removed].abs().max() <= w[old & new].abs().min()
        # Nine ordinary steps to the next update.
        for _ in range(10 if step < 290 else 0):
            optimizer.zero_grad()
            model.loss(torch.zeros(20, 20)).backward()
            assert sp.step() is True
            optimizer.step()


def test_rigl_keeps_value_and_state_of_a_weight_dropped_and_regrown() -> None:
    """A position dropped (small |w|) but with the largest gradient is grown back in the same
    update; it keeps its value and its momentum (SPEC §4.3)."""
    weight = torch.tensor([[0.01, 0.5, 0.6, 0.7]])
    model = Layer(weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = regrow.RigL(
        model,
        optimizer,
        sparsity=0.0,
        distribution="uniform",
        total_steps=100,
        delta_t=1,
        alpha=0.5,
        dense_layers=[],
    )
    optimizer.zero_grad()
    model.loss(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).backward()
    assert sp.step() is False  # update at step 0: with density 1 every position stays
    optimizer.zero_grad()
    model.loss(torch.tensor([[1.0, 1.0, 1.0, 1.0]])).backward()
    assert sp.step()
    optimizer.step()
    momentum = optimizer.state[model.fc.weight]["momentum_buffer"].clone()
    value = model.fc.weight.detach().clone()
    # Make position 0 the smallest |w| (dropped) and the largest |g| (regrown).
    optimizer.zero_grad()
    model.loss(torch.tensor([[100.0, 0.0, 0.0, 0.0]])).backward()
    assert sp.step() is False and sp.last_update_step == 1
    assert torch.equal(model.fc.weight.detach(), value)
    assert torch.equal(optimizer.state[model.fc.weight]["momentum_buffer"], momentum)


def test_rigl_update_steps_and_no_optimizer_step_on_them() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.RigL(model, optimizer, sparsity=0.9, total_steps=100, delta_t=10)
    taken, updates, index = 0, [], 0
    while sp.step_count < 100:
        x, y = batch("mlp", index)
        index += 1
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        before = sp.step_count
        weights = [p.detach().clone() for p in model.parameters()]
        if sp.step():
            optimizer.step()
            taken += 1
        else:
            updates.append(before)
            assert sp.step_count == before
            # Only the topology changed: dense parameters (biases) did not move.
            assert torch.equal(model[0].bias, weights[1])
    assert updates == [0, 10, 20, 30, 40, 50, 60, 70]  # t_end = 75
    assert taken == 100 and index == 108


# ------------------------------------------------------------------------- SNIP, Pruning
def test_snip_keeps_the_largest_g_times_w_per_layer() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(10, 30, generator=generator)
    model, optimizer, sp = one_layer("snip", weight, sparsity=0.8, distribution="uniform")
    assert all(m.all() for m in sp.masks.values())  # starts dense
    gradient = torch.randn(10, 30, generator=generator)
    model.loss(gradient).backward()
    assert sp.step() is False and sp.step_count == 0
    mask = sp.masks["fc.weight"]
    scores = (gradient * weight).abs()
    assert int(mask.sum()) == 60
    assert scores[mask].min() >= scores[~mask].max()
    assert torch.all(model.fc.weight.detach()[~mask] == 0)
    optimizer.zero_grad()
    model.loss(gradient).backward()
    assert sp.step() is True  # static from now on


def test_pruning_follows_the_cubic_schedule_exactly() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.Pruning(
        model,
        optimizer,
        sparsity=0.9,
        distribution="uniform",
        total_steps=400,
        prune_begin=100,
        prune_end=300,
        delta_t=25,
    )
    sizes = {n: p.numel() for n, p in zip(sp.names, sp.params, strict=True)}
    index = 0
    for step in range(400):
        index = train("mlp", sp, optimizer, step + 1, index)
        last = max(
            (t for t in range(100, step + 1) if (t - 100) % 25 == 0 and t <= 300), default=None
        )
        for name, active in sp.active_counts().items():
            if last is None:
                assert active == sizes[name]
            else:
                final = math.floor(0.1 * sizes[name] + 1e-6)
                sparsity = 0.9 * (1 - (1 - (last - 100) / 200) ** 3)
                # s_t of this layer, as a count: N − round_down((N − K) · s_t / s_f)
                assert active == sizes[name] - math.floor(
                    (sizes[name] - final) * sparsity / 0.9 + 1e-9
                )
    assert sp.global_density() == pytest.approx(0.1, abs=1e-3)


def test_pruning_defaults_scale_the_paper_window() -> None:
    model = MODELS["mlp"][0]()
    sp = regrow.Pruning(model, OPTIMIZERS["adam"](model.parameters()), total_steps=5 * 97_656)
    assert (sp.schedule.begin, sp.schedule.end, sp.schedule.every) == (100_000, 375_000, 1000)


# --------------------------------------------------------------------- SNFS, redistribution
def test_snfs_average_is_an_ema_of_dense_gradients_and_ignores_non_finite() -> None:
    weight = torch.randn(4, 5)
    model, optimizer, sp = one_layer("snfs", weight, sparsity=0.5, total_steps=100, delta_t=50)
    g1, g2 = torch.randn(4, 5), torch.randn(4, 5)
    for g in (g1, g2):
        optimizer.zero_grad()
        model.loss(g).backward()
        assert sp.step()
        optimizer.step()
    expected = 0.9 * (0.1 * g1) + 0.1 * g2  # decay 0.9, starting from zero
    assert torch.allclose(sp.gradient_average.view(4, 5), expected, atol=1e-6)
    bad = g1.clone()
    bad[0, 0] = float("inf")
    saved = sp.gradient_average.clone()
    optimizer.zero_grad()
    model.loss(bad).backward()
    sp.step()
    assert torch.equal(sp.gradient_average, saved)


@pytest.mark.parametrize("statistic", ["momentum", "gradient"])
def test_redistribution_moves_weights_between_layers_but_keeps_the_total(statistic: str) -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.SET(
        model,
        optimizer,
        sparsity=0.8,
        distribution="uniform",
        total_steps=200,
        delta_t=10,
        redistribution=statistic,
        dense_layers=[],
    )
    start = sp.active_counts()
    train("mlp", sp, optimizer, 150)
    end = sp.active_counts()
    assert sum(end.values()) == sum(start.values())
    assert end != start
    assert all(end[n] <= p.numel() for n, p in zip(sp.names, sp.params, strict=True))


def test_redistribution_by_momentum_needs_momentum() -> None:
    model = MODELS["mlp"][0]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = regrow.SET(
        model, optimizer, sparsity=0.8, total_steps=50, delta_t=10, redistribution="momentum"
    )
    with pytest.raises(ValueError, match="momentum"):
        train("mlp", sp, optimizer, 5)


# ------------------------------------------------------------- non-finite, determinism, bf16
def test_non_finite_gradient_postpones_the_update_to_the_next_step() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.RigL(model, optimizer, sparsity=0.9, total_steps=100, delta_t=10)
    before = {n: m.clone() for n, m in sp.masks.items()}
    x, y = batch("mlp", 0)
    nn.functional.cross_entropy(model(x), y).backward()
    model[2].weight.grad[0, 0] = float("inf")
    assert sp.step() is False
    assert sp.last_update_step is None and sp.step_count == 0
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())
    optimizer.zero_grad()
    x, y = batch("mlp", 1)
    nn.functional.cross_entropy(model(x), y).backward()
    assert sp.step() is False and sp.last_update_step == 0
    assert any(not torch.equal(before[n], m) for n, m in sp.masks.items())


class Frozen(torch.optim.Optimizer):
    """An optimizer that leaves the weights alone, as GradScaler would on a skipped step."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    def step(self, closure=None) -> None:
        return None


def test_non_finite_gradient_postpones_an_after_step_update() -> None:
    model = MODELS["mlp"][0]()
    optimizer = Frozen(model.parameters())
    sp = regrow.SET(
        model, optimizer, sparsity=0.9, total_steps=100, delta_t=10, elementwise_optimizer=True
    )
    before = {n: m.clone() for n, m in sp.masks.items()}
    x, y = batch("mlp", 0)
    nn.functional.cross_entropy(model(x), y).backward()
    model[2].weight.grad[0, 0] = float("nan")
    assert sp.step()
    optimizer.step()
    assert sp.pending_update and sp.last_update_step is None
    assert all(torch.equal(before[n], m) for n, m in sp.masks.items())
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert sp.step()
    optimizer.step()
    assert not sp.pending_update and sp.last_update_step == 1


@pytest.mark.parametrize("method", ["static", "set", "rigl", "snfs"])
def test_same_seed_same_masks_different_seed_different_masks(method: str) -> None:
    def run(seed: int) -> dict:
        model = MODELS["conv"][0]()
        optimizer = OPTIMIZERS["adam"](model.parameters())
        sp = regrow.get_method(method)(
            model,
            optimizer,
            sparsity=0.8,
            total_steps=60,
            seed=seed,
            **own_args(method, delta_t=10),
        )
        train("conv", sp, optimizer, 35)
        return {n: m.clone() for n, m in sp.masks.items()}

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_masks_do_not_depend_on_the_global_rng() -> None:
    masks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        model = MODELS["mlp"][0]()
        sp = regrow.SET(
            model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.9, total_steps=10, delta_t=5
        )
        masks.append(sp.masks)
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_bfloat16_model_keeps_the_contract() -> None:
    model = MODELS["mlp"][0]().to(torch.bfloat16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = regrow.RigL(model, optimizer, sparsity=0.8, total_steps=60, delta_t=5)
    counts = sp.active_counts()
    index = 0
    while sp.step_count < 40:
        x, y = batch("mlp", index)
        index += 1
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.to(torch.bfloat16)), y).backward()
        if sp.step():
            optimizer.step()
    assert sp.active_counts() == counts and sp.last_update_step == 35
    for name, p in zip(sp.names, sp.params, strict=True):
        assert torch.all(p[~sp.masks[name]] == 0)


# ---------------------------------------------------------------------- interface, errors
def test_masks_are_registered_buffers_and_printable() -> None:
    model = MODELS["conv"][0]()
    sp = regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.9)
    state = model.state_dict()
    for name, mask in sp.masks.items():
        assert state[name + "_mask"].data_ptr() == mask.data_ptr()
    assert "0.weight" not in sp.masks  # the stem stays dense by default
    table = str(sp)
    assert "3.weight" in table and "total" in table and "active" in table
    assert set(sp.densities()) == set(sp.masks)


def test_moving_the_model_after_building_the_sparsifier_is_an_error() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    sp = regrow.Static(model, optimizer, sparsity=0.5)
    model.to(torch.float64)  # a move to CUDA after construction is caught the same way
    with pytest.raises(RuntimeError, match="before building the Static sparsifier"):
        sp.step()


def test_optimizer_step_without_sparsifier_step_is_an_error() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    regrow.Static(model, optimizer, sparsity=0.5)
    x, y = batch("mlp", 0)
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"step\(\)"):
        optimizer.step()


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("rigl", {"sparsity": 1.0, "total_steps": 10}, "0 <= sparsity < 1"),
        ("static", {"sparsity": -0.5}, "0 <= sparsity < 1"),
        ("static", {"sparsity": 0.5, "distribution": "normal"}, "'uniform', 'er', 'erk'"),
        (
            "static",
            {"sparsity": 0.5, "dense_layers": ["encoder"]},
            "'encoder' matches no sparse layer",
        ),
        ("rigl", {"sparsity": 0.5}, "total_steps"),
        ("rigl", {"sparsity": 0.5, "total_steps": 10, "alpha": 2.0}, "0 < alpha <= 1"),
        ("set", {"sparsity": 0.5, "total_steps": 10, "drop_schedule": "step"}, "cosine"),
        ("set", {"sparsity": 0.5, "total_steps": 10, "reinit": "xavier"}, "'zero', 'kaiming'"),
        ("set", {"sparsity": 0.5, "total_steps": 10, "redistribution": "x"}, "'momentum'"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_allowed_values(method, kwargs, message) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        regrow.get_method(method)(model, OPTIMIZERS["adam"](model.parameters()), **kwargs)


def test_unknown_method_lists_the_registry() -> None:
    with pytest.raises(
        ValueError,
        match="dense, granet, pruning, rigl, set, small_dense, snfs, snip, srigl, static",
    ):
        regrow.get_method("lottery")


def test_parameter_not_in_the_optimizer() -> None:
    model = MODELS["mlp"][0]()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"\['2.weight', '4.weight'\] are not in the optimizer"):
        regrow.Static(model, optimizer, sparsity=0.5)


@pytest.mark.parametrize("optimizer_class", [torch.optim.Rprop, torch.optim.LBFGS])
def test_optimizers_with_state_regrow_cannot_mask_are_refused(optimizer_class) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match="elementwise"):
        regrow.RigL(model, optimizer_class(model.parameters()), sparsity=0.5, total_steps=200)


def test_unknown_elementwise_optimizer_accepted_when_declared() -> None:
    class MySGD(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self.state[p]["trace"] = self.state[p].get("trace", 0) + p.grad
                        p.data.add_(self.state[p]["trace"], alpha=-group["lr"])

    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match="elementwise_optimizer=True"):
        regrow.RigL(model, MySGD(model.parameters()), sparsity=0.5, total_steps=200)
    optimizer = MySGD(model.parameters())
    sp = regrow.RigL(
        model, optimizer, sparsity=0.5, total_steps=40, delta_t=5, elementwise_optimizer=True
    )
    train("mlp", sp, optimizer, 12)
    for name, p in zip(sp.names, sp.params, strict=True):
        assert torch.all(optimizer.state[p]["trace"][~sp.masks[name]] == 0)


def test_the_base_class_refuses_a_method_that_changes_active_counts() -> None:
    class Leaky(regrow.SET):
        name = "leaky"

        def new_masks(self, step, grads):
            masks = super().new_masks(step, grads)
            masks[0].view(-1)[:] = True  # grows a whole layer
            return masks

    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = Leaky(model, optimizer, sparsity=0.8, total_steps=100, delta_t=10)
    with pytest.raises(RuntimeError, match=r"changed active counts in a mask update \(2.weight"):
        train("mlp", sp, optimizer, 2)


# ------------------------------------------------------------------------ method arguments
def test_an_argument_the_method_lacks_is_an_error_naming_its_arguments() -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match="method static has no argument 'alpha'"):
        regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.5, alpha=0.3)
    with pytest.raises(
        ValueError, match="its arguments are delta_t, prune_begin, prune_end, scope"
    ):
        regrow.Pruning(model, OPTIMIZERS["adam"](model.parameters()), total_steps=9, alpha=0.3)
    with pytest.raises(ValueError, match=r"decay=1\.0 is out of range"):
        regrow.SNFS(model, OPTIMIZERS["adam"](model.parameters()), total_steps=9, decay=1.0)
    with pytest.raises(ValueError, match=r"delta_t=2\.5 has the wrong type"):
        regrow.RigL(model, OPTIMIZERS["adam"](model.parameters()), total_steps=9, delta_t=2.5)


def test_resolved_arguments_carry_every_default() -> None:
    model = MODELS["mlp"][0]()
    sp = regrow.RigL(model, OPTIMIZERS["adam"](model.parameters()), total_steps=200, alpha=0.4)
    assert sp.args.as_dict() == {
        "delta_t": 100,
        "alpha": 0.4,
        "t_end_fraction": 0.75,
        "begin_step": 0,
        "drop_schedule": "cosine",
        "reinit": "zero",
        "redistribution": "none",
        "grad_accumulation": 1,
    }
    given = regrow.RigL.Args(delta_t=7)
    fresh = MODELS["mlp"][0]()
    other = regrow.RigL(
        fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), total_steps=100, args=given
    )
    assert other.schedule.delta_t == 7


def test_pruning_from_the_cifar10_preset_updates_every_1000_steps() -> None:
    from regrow.models import get_model
    from regrow.train import load_config

    config = load_config("cifar10_wrn22_2", ["sparsity.method=pruning", "out_dir=unused"])
    model = get_model("wrn22_2", width=0.25)
    sp = config.sparsity.method_class()(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        total_steps=97_656,
        args=config.sparsity.method_args(),
        **config.sparsity.plan_keys(),
    )
    pruning_steps = [t for t in range(97_656) if sp.update_due(t)]
    assert pruning_steps == list(range(20_000, 75_001, 1000))


# ------------------------------------------------------------------- global-scope pruning
def test_global_pruning_reaches_the_global_target_on_schedule_with_unequal_layers() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.Pruning(
        model, optimizer, sparsity=0.9, distribution="uniform", total_steps=200,
        prune_begin=40, prune_end=140, delta_t=20, scope="global",
    )  # fmt: skip
    size = sum(p.numel() for p in sp.params)
    final = sum(sp.target_counts.values())
    index = 0
    for step in range(200):
        index = train("mlp", sp, optimizer, step + 1, index)
        last = max((t for t in range(40, step + 1) if sp.update_due(t)), default=None)
        total = sum(sp.active_counts().values())
        if last is None:
            assert total == size
        else:
            expected = size - math.floor((size - final) * (1 - (1 - (last - 40) / 100) ** 3) + 1e-9)
            assert total == expected, step
    assert sum(sp.active_counts().values()) == final  # exactly the global budget
    densities = list(sp.densities().values())
    assert max(densities) - min(densities) > 0.01, "one threshold: layers end unequal"
    # the kept weights are the globally largest magnitudes at the last pruning step
    for name, p in zip(sp.names, sp.params, strict=True):
        assert torch.all(p[~sp.masks[name]] == 0)


# ------------------------------------------------------------------------------ Small-Dense
@pytest.mark.parametrize("model_name", ["wrn22_2", "resnet50_cifar"])
@pytest.mark.parametrize("sparsity", [0.8, 0.9])
def test_small_dense_matches_the_sparse_models_non_zeros(model_name: str, sparsity: float) -> None:
    from regrow.flops import kept_parameter_count, parameter_count
    from regrow.models import get_model_spec
    from regrow.sparsity.plan import AllocationPlan

    spec = get_model_spec(model_name)

    def build(width: float) -> nn.Module:
        return spec(num_classes=spec.num_classes, width=width)

    keys = {"sparsity": sparsity, "distribution": "erk"}
    width = regrow.SmallDense.model_width(build, 1.0, regrow.SmallDense.Args(), **keys)
    with torch.device("meta"):
        full, small = build(1.0), build(width)
    target = kept_parameter_count(full, AllocationPlan.build(full, **keys))
    assert width < 1.0
    assert abs(parameter_count(small) / target - 1) < 0.01


def test_a_second_sparsifier_on_a_sparsified_model_is_an_error() -> None:
    model = MODELS["mlp"][0]()
    regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.9)
    with pytest.raises(ValueError, match="already has masks"):
        regrow.RigL(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.5, total_steps=9)


def test_delta_t_longer_than_the_update_window_is_an_error() -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match="delta_t=100 is longer than the update window"):
        regrow.RigL(model, OPTIMIZERS["adam"](model.parameters()), total_steps=88, delta_t=100)


def test_a_window_of_length_zero_is_the_one_update_at_its_beginning() -> None:
    """t_end_fraction=0 asks for RigL's update at step 0 alone (the quickstart's control); with a
    constant drop schedule it drops α there, as the cosine schedule does at step 0."""
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    sp = regrow.RigL(
        model, optimizer, total_steps=88, delta_t=100, t_end_fraction=0.0,
        drop_schedule="constant",
    )  # fmt: skip
    before = {name: mask.clone() for name, mask in sp.masks.items()}
    updates = []
    for index in range(40):
        x, y = batch("mlp", index)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if sp.step():
            optimizer.step()
        updates += [sp.step_count] if sp.last_batch.masks_changed else []
    assert updates == [0]
    changed = sp.last_update_stats["changed_fraction"]
    assert 0 < changed <= 0.3
    assert any(not torch.equal(sp.masks[name], mask) for name, mask in before.items())


def test_momentum_redistribution_keeps_counts_at_rigls_first_update_then_moves_them() -> None:
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_nesterov"](model.parameters())
    sp = regrow.RigL(
        model, optimizer, sparsity=0.8, total_steps=100, delta_t=10, redistribution="momentum"
    )
    initial = sp.active_counts()
    train("mlp", sp, optimizer, 1)  # the update at step 0: no optimizer step yet, no momentum
    assert sp.last_update_step == 0 and sp.active_counts() == initial
    train("mlp", sp, optimizer, 60)
    counts = sp.active_counts()
    assert counts != initial and sum(counts.values()) == sum(initial.values())


@pytest.mark.parametrize("method", ["rigl", "srigl", "snip"])
def test_a_mask_update_without_gradients_is_refused(method: str) -> None:
    """An update batch scores by gradients: without ``loss.backward()`` there are none, and an
    update from nothing would drop and grow by zeros."""
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    sp = regrow.get_method(method)(
        model, optimizer, sparsity=0.5, total_steps=100, **own_args(method, delta_t=10)
    )
    masks = {name: mask.clone() for name, mask in sp.masks.items()}
    with pytest.raises(RuntimeError, match=r"no gradients.*call loss\.backward\(\) first"):
        sp.step()
    assert all(torch.equal(sp.masks[name], mask) for name, mask in masks.items())
    assert (sp.step_count, sp.last_update_step) == (0, None)
    train("mlp", sp, optimizer, 1)  # with gradients the same sparsifier updates as usual
    assert sp.last_update_step == 0


@pytest.mark.parametrize("method", ["rigl", "pruning", "static"])
@pytest.mark.parametrize("value", [2.7, "x", True, float("inf"), float("nan"), -3])
def test_total_steps_must_be_a_whole_number(method: str, value) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match=rf"total_steps={__import__('re').escape(repr(value))}"):
        regrow.get_method(method)(
            model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.5, total_steps=value
        )


def test_a_whole_float_is_accepted_as_total_steps() -> None:
    model = MODELS["mlp"][0]()
    sp = regrow.RigL(
        model, OPTIMIZERS["adam"](model.parameters()), 0.5, total_steps=100.0, delta_t=10
    )
    assert sp.total_steps == 100 and isinstance(sp.total_steps, int)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("static", {"seed": "x"}, "seed='x' is not an integer: allowed values are integers"),
        ("static", {"seed": 1.5}, "seed=1.5 is not an integer: allowed values are integers"),
        ("static", {"plan": 5}, "plan=5 is not an AllocationPlan: allowed values are None"),
        ("static", {"args": 5}, "args=5 is not a mapping: allowed values are None"),
        ("static", {"attach_hook": "x"}, "attach_hook='x' is not a bool: allowed values are"),
        ("static", {"elementwise_optimizer": 1}, "elementwise_optimizer=1 is not a bool"),
        ("rigl", {"delta_t": -1}, "delta_t=-1 is out of range: allowed values are an integer"),
        ("rigl", {"alpha": "x"}, "alpha='x' has the wrong type: allowed is float"),
        ("pruning", {"delta_t": 0}, "delta_t=0 is out of range: allowed values are an integer"),
    ],
)
def test_sparsifier_argument_errors_name_the_argument_value_and_allowed_values(
    method, kwargs, message
) -> None:
    model = MODELS["mlp"][0]()
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        regrow.get_method(method)(
            model,
            OPTIMIZERS["adam"](model.parameters()),
            **{"sparsity": 0.5, "total_steps": 100, **kwargs},
        )


def test_a_model_or_optimizer_of_the_wrong_kind_is_named() -> None:
    """Found after issue 18's fixes: ``regrow.RigL(5, opt)`` raised a raw AttributeError."""
    model = MODELS["mlp"][0]()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    with pytest.raises(ValueError, match=r"model=5 is not a torch\.nn\.Module"):
        regrow.RigL(5, optimizer, sparsity=0.5, total_steps=100)
    with pytest.raises(ValueError, match=r"optimizer='sgd' is not a torch\.optim\.Optimizer"):
        regrow.RigL(model, "sgd", sparsity=0.5, total_steps=100)


def test_start_from_masks_and_load_state_dict_name_what_is_wrong_with_their_masks() -> None:
    """Found after issue 18's fixes: ``start_from_masks(5)`` raised a raw TypeError and
    ``load_state_dict`` accepted float masks."""
    model = MODELS["mlp"][0]()
    sp = regrow.Static(model, OPTIMIZERS["adam"](model.parameters()), sparsity=0.5)
    with pytest.raises(ValueError, match="masks=5 is not a mapping"):
        sp.start_from_masks(5)
    state = sp.state_dict()
    name = sp.names[0]
    state["masks"] = {**state["masks"], name: state["masks"][name].float()}
    with pytest.raises(ValueError, match=rf"saved mask {name} is torch\.float32, not a bool"):
        sp.load_state_dict(state)
