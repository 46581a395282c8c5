"""Structured masks (``structure``, SPEC §19): the selection, the plan, every method that keeps a
structure trained with each, the refusals, resume, FLOPs and the config key.

The structure of a mask is checked here by an implementation of its own (:func:`satisfies`), not
by :meth:`LayerStructure.check`, so a bug shared by both cannot hide.
"""

from __future__ import annotations

import math

import pytest
import torch

import regrow
from regrow.flops import profile_model
from regrow.sparsity.optim_state import state_tensors
from regrow.sparsity.plan import AllocationPlan
from regrow.sparsity.selection import topk_mask
from regrow.sparsity.structure import parse_structure
from tests.helpers import (
    MODELS,
    OPTIMIZERS,
    own_args,
    restore,
    saved_and_loaded,
    train_steps,
    wrn22_2_shapes,
)

SUPPORTING = ["static", "set", "rigl", "snfs", "pruning", "snip", "mest", "granet"]
STRUCTURES = ["2:4", "kernel", "block:2"]
STEPS = 50


def satisfies(mask: torch.Tensor, structure: str) -> bool:
    """Whether ``mask`` (a conv ``[o, i, k, k]`` or linear ``[o, i]`` mask) keeps ``structure``:
    kernels all on or off, B×B blocks of ``[o, fan_in]`` all on or off, N:M groups along the input
    dimension at most n (or the balanced bound above n/m). A layer it does not divide passes."""
    if structure == "kernel":
        if mask.dim() < 4 or mask[0, 0].numel() == 1:
            return True
        sums = mask.flatten(2).sum(dim=2)
        return bool(((sums == 0) | (sums == mask[0, 0].numel())).all())
    if structure.startswith("block:"):
        b = int(structure.split(":")[1])
        rows = mask.reshape(mask.shape[0], -1)
        if rows.shape[0] % b or rows.shape[1] % b:
            return True
        sums = rows.reshape(rows.shape[0] // b, b, -1, b).sum(dim=(1, 3))
        return bool(((sums == 0) | (sums == b * b)).all())
    n, m = map(int, structure.split(":"))
    lanes = mask.permute(0, *range(2, mask.dim()), 1) if mask.dim() > 2 else mask
    if lanes.shape[-1] % m:
        return True
    sums = lanes.reshape(-1, m).sum(dim=1)
    return bool((sums <= max(n, math.ceil(int(mask.sum()) / sums.numel()))).all())


# ------------------------------------------------------------------------- parsing and select
def test_parse_structure_accepts_the_forms_and_refuses_others_in_one_line() -> None:
    assert str(parse_structure("2:4")) == "2:4" and parse_structure("2:4").max_density == 0.5
    assert str(parse_structure("Block:4")) == "block:4"
    assert parse_structure("kernel").family == "kernel"
    for bad in ("4:4", "0:4", "block:1", "blocks", "2-4", ""):
        with pytest.raises(ValueError, match="allowed forms") as info:
            parse_structure(bad)
        assert repr(bad) in str(info.value) and "\n" not in str(info.value)


def test_unstructured_select_is_topk_mask() -> None:
    layer = parse_structure("unstructured").for_layer((6, 5))
    scores = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    excluded = scores < 0.2
    got = layer.select(scores, 9, torch.Generator().manual_seed(1), excluded)
    assert torch.equal(got, topk_mask(scores, 9, torch.Generator().manual_seed(1), excluded))


def test_kernel_select_takes_whole_kernels_by_mean_score() -> None:
    layer = parse_structure("kernel").for_layer((2, 2, 3, 3))
    scores = torch.zeros(2, 2, 3, 3)
    scores[0, 1] = 1.0  # mean 1
    scores[1, 0, 0, 0] = 5.0  # mean 5/9: below (0, 1), above the rest
    scores[1, 1, 1, 1] = 100.0  # the highest mean, but excluded below
    excluded = torch.zeros_like(scores, dtype=torch.bool)
    excluded[1, 1, 0, 0] = True  # one element excludes the whole kernel
    mask = layer.select(scores, 2 * 9 + 4, torch.Generator().manual_seed(0), excluded)
    expected = torch.zeros_like(excluded)
    expected[0, 1] = expected[1, 0] = True  # 22 // 9 = 2 kernels
    assert torch.equal(mask, expected)
    assert layer.check(mask) and not layer.check(mask & (scores != 5.0))


def test_block_select_takes_whole_blocks_of_the_rows_view() -> None:
    layer = parse_structure("block:2").for_layer((4, 4))
    scores = torch.arange(16.0).view(4, 4)  # block means rise to the bottom right
    mask = layer.select(scores, 8, torch.Generator().manual_seed(0))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:, :] = True
    assert torch.equal(mask, expected) and satisfies(mask, "block:2")
    # A transposed weight [in, out] is blocked over its [out, in] view: the same blocks here.
    flipped = parse_structure("block:2").for_layer((4, 4), transposed=True)
    assert torch.equal(flipped.select(scores, 8, torch.Generator().manual_seed(0)), expected)


def greedy_nm(scores: torch.Tensor, count: int, n: int, m: int, occupied: torch.Tensor):
    """The reference: best scores first, each taken while its group has room."""
    flat, room = scores.reshape(-1), n - occupied.reshape(-1, m).sum(dim=1)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    for i in torch.argsort(flat, descending=True).tolist():
        if int(chosen.sum()) == count:
            break
        if not occupied.reshape(-1)[i] and room[i // m] > 0:
            chosen[i], room[i // m] = True, room[i // m] - 1
    return chosen.view(scores.shape)


@pytest.mark.parametrize("seed", range(5))
def test_nm_select_is_the_greedy_optimum_and_counts_occupied_positions(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(4, 16, generator=generator)
    occupied = (torch.rand(4, 16, generator=generator) < 0.25) & (scores < 0.5)
    occupied.view(-1, 4)[:, 2:] &= False  # at most 2 per group, the 2:4 bound
    layer = parse_structure("2:4").for_layer((4, 16))
    free = 32 - int(occupied.sum())
    for count in (0, 5, free // 2, free):
        got = layer.select(scores, count, generator, excluded=occupied, occupied=occupied)
        assert torch.equal(got, greedy_nm(scores, count, 2, 4, occupied)), count
        assert satisfies(got | occupied, "2:4") and int(got.sum()) == count


def test_nm_groups_run_along_a_convs_input_channels() -> None:
    layer = parse_structure("2:4").for_layer((3, 8, 2, 2))
    mask = layer.select(torch.rand(3, 8, 2, 2), 48, torch.Generator().manual_seed(0))
    assert int(mask.sum()) == 48 and bool((mask.sum(dim=1) == 4).all())  # 2 per group of 4
    bad = torch.zeros(3, 8, 2, 2, dtype=torch.bool)
    bad[0, :3, 0, 0] = True  # three in the first group of input channels
    assert not layer.check(bad) and not satisfies(bad, "2:4")


def test_ties_are_broken_by_the_seed_alone() -> None:
    for structure, shape, count in (("2:4", (4, 8), 10), ("block:2", (4, 8), 16)):
        layer = parse_structure(structure).for_layer(shape)
        scores = torch.ones(shape)
        masks = [layer.select(scores, count, torch.Generator().manual_seed(s)) for s in range(6)]
        again = layer.select(scores, count, torch.Generator().manual_seed(0))
        assert torch.equal(masks[0], again)
        assert all(satisfies(m, structure) and int(m.sum()) == count for m in masks)
        assert len({tuple(m.reshape(-1).tolist()) for m in masks}) > 1, structure


# -------------------------------------------------------------------------------- the plan
def test_plan_caps_nm_densities_and_prints_the_structure() -> None:
    shapes = wrn22_2_shapes()
    plan = AllocationPlan.build(shapes, 0.5, "erk", structure="2:4")
    assert all(layer.active == layer.size // 2 for layer in plan.masked)  # 50 % in every layer
    sparser = AllocationPlan.build(shapes, 0.8, "erk", structure="2:4")
    assert max(sparser.densities().values()) <= 0.5
    assert math.isclose(sparser.global_density(), 0.2, abs_tol=1e-3)  # the cap's excess moves
    assert "structure='2:4'" in str(sparser) and sparser.as_dict()["structure"] == "2:4"
    with pytest.raises(ValueError, match=r"sparsity >= 0\.5"):
        AllocationPlan.build(shapes, 0.4, "erk", structure="2:4")


def test_plan_rounds_counts_to_units_and_names_element_wise_layers() -> None:
    plan = AllocationPlan.build(wrn22_2_shapes(), 0.9, "erk", dense_layers=[], structure="block:4")
    units = plan.units()
    assert units["fc"].startswith("element (10x128")  # 10 rows: no 4x4 blocks
    assert units["g0.b0.conv1"] == "4x4 block"
    assert all(x.active % 16 == 0 for x in plan.masked if x.name != "fc")
    kernel = AllocationPlan.build(wrn22_2_shapes(), 0.9, "erk", dense_layers=[], structure="kernel")
    assert all(x.active % 9 == 0 for x in kernel.masked if x.shape[2:] == (3, 3))
    assert "3x3 kernel" in str(kernel) and "element (1x1 kernel)" in str(kernel)


def test_the_quickstart_mlp_runs_every_layer_sparse_with_block_4_and_2_4() -> None:
    mlp = {"0.weight": (300, 64), "1.weight": (100, 300), "2.weight": (10, 100)}
    for structure in ("block:4", "2:4"):
        plan = AllocationPlan.build(mlp, 0.9, "erk", dense_layers=[], structure=structure)
        assert len(plan.masked) == 3 and plan.structure == structure


# ------------------------------------------------------------- every method × every structure
def build(method: str, model_name: str, structure: str, **extra):
    model = MODELS[model_name][0]()
    optimizer = OPTIMIZERS["sgd_momentum"](model.parameters())
    sp = regrow.get_method(method)(
        model,
        optimizer,
        sparsity=0.8,
        total_steps=STEPS,
        seed=3,
        structure=structure,
        **own_args(method, delta_t=8, prune_begin=5, prune_end=35),
        **extra,
    )
    return model, optimizer, sp


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", SUPPORTING)
def test_every_update_keeps_the_structure_and_the_count_rule(method: str, structure: str) -> None:
    model_name = "conv" if structure != "block:2" else "mlp"
    model, optimizer, sp = build(method, model_name, structure)
    rule, start = sp.count_rule(), sp.active_counts()
    units = {n: sp.layer_structure(n).unit for n in sp.names}
    seen = {"previous": start, "updates": 0}

    def check() -> None:
        counts = sp.active_counts()
        for name, p in zip(sp.names, sp.params, strict=True):
            mask = sp.masks[name]
            assert satisfies(mask, structure), name
            assert counts[name] % units[name] == 0, name
            assert torch.all(p[~mask] == 0), name
            for state in state_tensors(optimizer, p, name):
                assert torch.all(state[~mask] == 0), name
        if rule == "layer":
            assert counts == start
        elif rule is None:
            assert all(counts[n] <= seen["previous"][n] for n in counts)
        seen["updates"] += counts != seen["previous"] or sp.last_batch.masks_changed
        seen["previous"] = counts

    check()
    train_steps(model, optimizer, sp, model_name, 0, STEPS + 10, lambda _: check())
    assert seen["updates"] > 0 or not any(sp.update_due(s) for s in range(STEPS))
    assert sp.active_counts() == sp.target_counts, "the run ends at the plan's budgets"
    if structure == "2:4":  # at the budget every group holds at most n
        assert all(satisfies(m, "2:4") for m in sp.masks.values())
    if structure == "kernel":  # the conv net's 3x3 conv is kernel-structured
        assert sp.layer_structure("3.weight").unit == 9


@pytest.mark.parametrize("method", ["rigl", "set", "pruning", "snip"])
def test_the_registry_contract_holds_with_a_structure(method: str) -> None:
    from tests.sparsity.test_contract import test_contract

    test_contract(method, "conv", "adam", {"structure": "2:4"})
    test_contract(method, "conv", "sgd_nesterov", {"structure": "kernel"})


@pytest.mark.parametrize(
    ("method", "structure"), [("rigl", "kernel"), ("snfs", "2:4"), ("granet", "block:2")]
)
def test_resume_is_bit_identical(method: str, structure: str) -> None:
    model_name = "conv" if structure != "block:2" else "mlp"
    model, optimizer, sp = build(method, model_name, structure)
    train_steps(model, optimizer, sp, model_name, 0, 60)
    reference = model.state_dict()
    model, optimizer, sp = build(method, model_name, structure)
    train_steps(model, optimizer, sp, model_name, 0, 17)
    state = saved_and_loaded(model, optimizer, sp)
    model2, optimizer2, sp2 = build(method, model_name, structure)
    restore(state, model2, optimizer2, sp2)
    train_steps(model2, optimizer2, sp2, model_name, 17, 60)
    for (name, a), b in zip(reference.items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_redistribution_moves_whole_units_when_every_layer_has_the_same() -> None:
    model, optimizer, sp = build("snfs", "conv", "2:4", redistribution="momentum")
    total = sum(sp.active_counts().values())
    train_steps(model, optimizer, sp, "conv", 0, STEPS)
    assert sum(sp.active_counts().values()) == total
    assert all(satisfies(m, "2:4") for m in sp.masks.values())


# -------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("method", "structure", "extra", "match"),
    [
        ("srigl", "2:4", {}, "SRigL cannot keep structure='2:4'"),
        ("chase", "kernel", {}, "Chase cannot keep structure='kernel'"),
        ("pruning", "block:2", {"scope": "global"}, "Pruning cannot keep"),
        ("mest", "2:4", {"memory_bound": "soft"}, "MEST cannot keep"),
        ("rigl", "kernel", {"redistribution": "momentum"}, "units differ in size"),
    ],
)
def test_unsupported_combinations_are_refused_in_one_line(method, structure, extra, match) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build(method, "conv", structure, **extra)
    assert "\n" not in str(info.value)


def test_loading_masks_that_break_the_structure_is_refused() -> None:
    _, _, sp = build("set", "conv", "kernel")
    state = sp.state_dict()
    mask = state["masks"]["3.weight"]
    on = torch.nonzero(mask)[0]
    mask[tuple(on)] = False  # one weight off in an active kernel
    mask[tuple(torch.nonzero(~mask)[-1])] = True
    with pytest.raises(ValueError, match="break this SET's structure 'kernel'"):
        sp.load_state_dict(state)


def test_a_plan_of_another_structure_is_refused() -> None:
    model = MODELS["mlp"][0]()
    plan = AllocationPlan.build(model, 0.8, structure="2:4")
    optimizer = OPTIMIZERS["sgd"](model.parameters())
    with pytest.raises(ValueError, match="differs from the plan's structure '2:4'"):
        regrow.get_method("static")(model, optimizer, plan=plan, structure="kernel")


# ----------------------------------------------------------------------------- FLOPs, config
def test_inference_flops_of_a_structured_run_count_its_masks_elements() -> None:
    model, optimizer, sp = build("rigl", "conv", "kernel")
    train_steps(model, optimizer, sp, "conv", 0, 20)
    profile = profile_model(model, MODELS["conv"][1])
    by_mask = {n: int(m.sum()) / m.numel() for n, m in sp.masks.items()}
    assert profile.inference_flops(sp) == profile.inference_flops(by_mask)
    plan = AllocationPlan.build(MODELS["conv"][0](), 0.8, structure="kernel")
    assert profile.inference_flops(plan) == pytest.approx(profile.inference_flops(by_mask))


def test_config_key_is_validated_and_reaches_the_plan(tmp_path) -> None:
    from regrow.train import load_config
    from regrow.train.config_errors import ConfigError

    base = [f"out_dir={tmp_path}", "sparsity.method=set"]
    config = load_config(None, [*base, "sparsity.structure='2:4'"])
    assert config.sparsity.plan_keys()["structure"] == "2:4"
    with pytest.raises(ConfigError, match=r"sparsity\.structure='3:3' is not a structure"):
        load_config(None, [*base, "sparsity.structure='3:3'"])
    with pytest.raises(ConfigError, match="quote it"):  # YAML's base-60 reading of 2:4
        load_config(None, [*base, "sparsity.structure=2:4"])
    with pytest.raises(ConfigError, match=r"not kept by sparsity\.method=srigl"):
        load_config(
            None, [f"out_dir={tmp_path}", "sparsity.method=srigl", "sparsity.structure=kernel"]
        )
