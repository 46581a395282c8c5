"""FLOP accounting (SPEC §7): hand-computed layers, the paper's reference totals, training formulas,
the live accumulator, Small-Dense widths and equal-FLOP matching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from regrow.flops import (
    PruningSchedule,
    TrainingFlopsCounter,
    count_flops,
    flops_at_sparsity,
    kept_parameter_count,
    matching_sparsity,
    parameter_count,
    profile_model,
    pruning_mean_flops,
    pruning_segments,
    small_dense_width,
    train_flops_per_sample,
    train_flops_ratio,
)
from regrow.models import MODELS, get_model
from regrow.sparsity.distributions import layer_densities
from regrow.sparsity.plan import AllocationPlan


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs)


def sparse_shapes(model: nn.Module, dense_layers=None) -> dict[str, tuple[int, ...]]:
    params = dict(model.named_parameters())
    return {
        n: tuple(params[n].shape)
        for n in AllocationPlan.build(model, dense_layers=dense_layers).names
    }


@pytest.fixture(scope="module")
def wrn():
    model = meta_model("wrn22_2")
    return model, profile_model(model, (3, 32, 32)), sparse_shapes(model)


# ------------------------------------------------------------------ hand-computed single layers


def test_conv_stride_1_with_padding_dense_and_sparse():
    conv = nn.Conv2d(3, 8, 3, stride=1, padding=1)
    # 10x10 output; 2·k·k·c_in·c_out·H·W + H·W·c_out
    assert count_flops(conv, (3, 10, 10)).inference_flops == 2 * 9 * 3 * 8 * 100 + 8 * 100
    sparse = count_flops(conv, (3, 10, 10), {"weight": 0.5})
    assert sparse.inference_flops == 2 * 0.5 * 9 * 3 * 8 * 100 + 8 * 100 == 22400
    assert sparse.dense_inference_flops == 44000
    assert sparse.inference_ratio == pytest.approx(22400 / 44000)


def test_conv_stride_2_with_padding():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    # H_out = floor((10 + 2 - 3) / 2) + 1 = 5; the +H·W·c_out term is there without a bias too.
    report = count_flops(conv, (3, 10, 10), {"weight": 0.25})
    assert report.layers[0].output_shape == (8, 5, 5)
    assert report.dense_inference_flops == 2 * 9 * 3 * 8 * 25 + 8 * 25 == 11000
    assert report.inference_flops == 2 * 0.25 * 9 * 3 * 8 * 25 + 8 * 25


def test_grouped_conv_counts_c_in_over_groups():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert count_flops(conv, (4, 6, 6)).inference_flops == 2 * 9 * (4 // 2) * 8 * 36 + 8 * 36


def test_linear_dense_and_sparse():
    linear = nn.Linear(20, 7)
    assert count_flops(linear, (20,)).inference_flops == 2 * 20 * 7 + 7
    assert count_flops(linear, (20,), {"weight": 0.25}).inference_flops == 2 * 0.25 * 140 + 7


def test_bn_pool_add_and_softmax_cost_nothing():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y = y + y
            y = nn.functional.max_pool2d(y, 2).mean((2, 3))
            return torch.softmax(self.fc(y), 1)

    report = count_flops(Net(), (3, 8, 8))
    assert [layer.name for layer in report.layers] == ["conv.weight", "fc.weight"]
    assert report.inference_flops == (2 * 27 * 4 * 64 + 4 * 64) + (2 * 4 * 5 + 5)


def test_meta_and_real_traces_agree_and_leave_the_model_untouched():
    model = get_model("wrn22_2")
    model.train()
    weight = model.conv1.weight.detach().clone()
    meta = profile_model(model, (3, 32, 32))
    real = profile_model(model, (3, 32, 32), device="real")
    assert meta.layers == real.layers
    assert model.training and all(m.training for m in model.modules())
    assert model.conv1.weight.device.type == "cpu"
    assert torch.equal(model.conv1.weight, weight)


def test_densities_from_an_object_with_densities_method_and_unknown_names():
    linear = nn.Linear(10, 10)

    class Live:
        def densities(self):
            return {"weight": 0.1}

    assert count_flops(linear, (10,), Live()).inference_flops == 2 * 0.1 * 100 + 10
    with pytest.raises(ValueError, match="not parameters"):
        count_flops(linear, (10,), {"wieght": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        count_flops(linear, (10,), {"weight": 1.5})


# ---------------------------------------------------------------------- the paper's references


def test_dense_wrn22_2_is_3_16e8(wrn):
    _, profile, _ = wrn
    assert profile.dense_flops == pytest.approx(3.16e8, rel=0.01)
    # 2·MACs (157,730,048) + one term per output element of every conv/linear layer (417,802)
    assert profile.dense_flops == 2 * 157_730_048 + 417_802


def test_dense_resnet50_imagenet_is_8_2e9_on_meta():
    model = meta_model("resnet50_imagenet")
    profile = profile_model(model, MODELS["resnet50_imagenet"].input_shape)
    assert len(profile.layers) == 54
    assert profile.dense_flops == pytest.approx(8.2e9, rel=0.01)


def test_erk_costs_more_flops_than_uniform_at_equal_sparsity(wrn):
    _, profile, shapes = wrn
    uniform = flops_at_sparsity(profile, shapes, 0.8, "uniform")
    erk = flops_at_sparsity(profile, shapes, 0.8, "erk")
    assert uniform < erk < profile.dense_flops


# ---------------------------------------------------------------------------- training formulas


def test_rigl_formula_delta_t_1_and_100():
    f_s, f_d = 1.0, 10.0
    assert train_flops_per_sample("rigl", f_s, f_d, delta_t=1) == (3 + 2 + 10) / 2
    assert train_flops_per_sample("rigl", f_s, f_d, delta_t=100) == (300 + 2 + 10) / 101
    # the rarer the dense backward, the closer to Static's 3 f_S
    assert (
        train_flops_per_sample("static", f_s, f_d)
        < train_flops_per_sample("rigl", f_s, f_d, delta_t=100)
        < train_flops_per_sample("rigl", f_s, f_d, delta_t=1)
    )
    assert train_flops_ratio("rigl", f_s, f_d, delta_t=100, multiplier=5) == pytest.approx(
        5 * (312 / 101) / 30
    )


def test_other_method_formulas():
    f_s, f_d = 2.0, 10.0
    # f_S is the forward cost of the trained model: the dense model's own for Dense
    assert train_flops_per_sample("dense", f_d, f_d) == 30.0
    for method in ("static", "set", "snip", "small_dense", "pruning"):
        assert train_flops_per_sample(method, f_s, f_d) == 6.0
    assert train_flops_per_sample("snfs", f_s, f_d) == 14.0
    assert train_flops_ratio("dense", f_d, f_d) == 1.0
    with pytest.raises(ValueError, match="rigl"):
        train_flops_per_sample("lottery", f_s, f_d)
    with pytest.raises(ValueError, match="delta_t"):
        train_flops_per_sample("rigl", f_s, f_d, delta_t=0)


def test_pruning_segments_on_a_schedule_with_known_mean():
    # prune at steps 0, 1, 2 (after the optimizer step): progress 0, 1 - 0.5^3, 1
    segments = pruning_segments(PruningSchedule(total_steps=4, begin=0, end=2, every=1))
    assert segments == [(1, 0.0), (1, 0.0), (1, 0.875), (1, 1.0)]
    # one-shot at step 49 of 100: 50 dense steps then 50 at the final sparsity
    one_shot = pruning_segments(PruningSchedule(total_steps=100, begin=49, end=49))
    assert one_shot == [(50, 0.0), (50, 1.0)]


def test_pruning_mean_flops_matches_a_step_by_step_integral():
    linear = nn.Linear(100, 100)
    profile = profile_model(linear, (100,))
    schedule = PruningSchedule()  # the paper's CIFAR run: 20k..75k of 97,656, every 1000
    pruning_steps = set(range(20_000, 75_001, 1000))
    progress, total = 0.0, 0.0
    for step in range(schedule.total_steps):  # brute force, independent of pruning_segments
        density = 1.0 - 0.9 * progress
        total += 2 * density * 100 * 100 + 100
        if step in pruning_steps:
            p = (step - 20_000) / 55_000
            progress = 1 - (1 - p) ** 3
    expected = total / schedule.total_steps
    assert pruning_mean_flops(profile, {"weight": 0.1}, schedule) == pytest.approx(expected)
    # known mean density: one-shot pruning halfway
    half = PruningSchedule(total_steps=100, begin=49, end=49)
    mean = pruning_mean_flops(profile, {"weight": 0.2}, half)
    assert mean == pytest.approx(
        0.5 * profile.dense_flops + 0.5 * profile.inference_flops({"weight": 0.2})
    )


def test_pruning_schedule_scales_with_the_run():
    scaled = PruningSchedule().scaled(2)
    assert (scaled.total_steps, scaled.begin, scaled.end, scaled.every) == (
        195_312,
        40_000,
        150_000,
        1000,
    )
    with pytest.raises(ValueError, match="begin"):
        PruningSchedule(total_steps=10, begin=5, end=2)


# --------------------------------------------------------------------------- live accumulator


def test_live_counter_equals_closed_forms_at_constant_density(wrn):
    _, profile, shapes = wrn
    densities = layer_densities(shapes, 0.9, "erk")
    f_s, f_d = profile.inference_flops(densities), profile.dense_flops

    static = TrainingFlopsCounter(profile, densities)
    for _ in range(7):
        static.step(samples=128)
    assert static.ratio == pytest.approx(train_flops_ratio("static", f_s, f_d))

    delta_t = 4
    rigl = TrainingFlopsCounter(profile, densities)
    for step in range(3 * (delta_t + 1)):
        running = rigl.step(dense_backward=step % (delta_t + 1) == 0, samples=128)
    assert running.ratio == pytest.approx(train_flops_ratio("rigl", f_s, f_d, delta_t=delta_t))
    assert running.train_flops == pytest.approx(
        train_flops_per_sample("rigl", f_s, f_d, delta_t) * 128 * 15
    )

    snfs = TrainingFlopsCounter(profile, densities)
    snfs.step(dense_backward=True)
    assert snfs.ratio == pytest.approx(train_flops_ratio("snfs", f_s, f_d))

    dense = TrainingFlopsCounter(profile)
    assert dense.step().ratio == 1.0


def test_live_counter_follows_changing_densities(wrn):
    _, profile, shapes = wrn
    sparse = layer_densities(shapes, 0.9, "uniform")
    counter = TrainingFlopsCounter(profile)  # starts dense
    counter.step(samples=10)
    counter.step(sparse, samples=10)
    counter.step(samples=10)  # keeps the last densities
    expected = (profile.dense_flops + 2 * profile.inference_flops(sparse)) / (
        3 * profile.dense_flops
    )
    assert counter.ratio == pytest.approx(expected)
    assert counter.ratio != pytest.approx(
        train_flops_ratio("static", profile.inference_flops(sparse), profile.dense_flops)
    )

    # stepping through a pruning schedule reproduces pruning_mean_flops
    final = layer_densities(shapes, 0.8, "erk")
    schedule = PruningSchedule(total_steps=40, begin=10, end=30, every=5)
    live = TrainingFlopsCounter(profile)
    current = {name: 1.0 for name in final}
    pruning_steps = set(schedule.pruning_steps())
    for step in range(schedule.total_steps):
        live.step(current)
        if step in pruning_steps:
            g = schedule.progress(step)
            current = {name: 1 - (1 - d) * g for name, d in final.items()}
    mean = pruning_mean_flops(profile, final, schedule)
    assert live.ratio == pytest.approx(train_flops_ratio("pruning", mean, profile.dense_flops))

    restored = TrainingFlopsCounter(profile)
    restored.load_state_dict(live.state_dict())
    assert restored.step().train_flops == live.step().train_flops


# ------------------------------------------------------------------- Small-Dense and matching


@pytest.mark.parametrize("sparsity", [0.8, 0.9])
def test_small_dense_width_matches_the_sparse_parameter_count(wrn, sparsity):
    model, _, shapes = wrn
    densities = layer_densities(shapes, sparsity, "erk")
    target = kept_parameter_count(model, densities)
    extra = parameter_count(model) - sum(math.prod(s) for s in shapes.values())
    assert target == extra + sum(
        math.floor(d * math.prod(shapes[n]) + 1e-6) for n, d in densities.items()
    )
    width = small_dense_width(lambda w: get_model("wrn22_2", width=w), target)
    assert 0 < width < 1
    params = parameter_count(meta_model("wrn22_2", width=width))
    assert abs(params - target) / target < 0.01


def test_matching_sparsity_gives_equal_flops(wrn):
    _, profile, shapes = wrn
    target = flops_at_sparsity(profile, shapes, 0.8, "uniform")
    matched = matching_sparsity(profile, shapes, target, "erk")
    assert matched > 0.8  # ERK spends more FLOPs per weight, so it must be sparser
    assert flops_at_sparsity(profile, shapes, matched, "erk") == pytest.approx(target, rel=1e-6)
    with pytest.raises(ValueError, match="cannot reach"):
        matching_sparsity(profile, shapes, 0.001 * profile.dense_flops, "erk")
    assert matching_sparsity(profile, shapes, profile.dense_flops, "erk") == 0.0
