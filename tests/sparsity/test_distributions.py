"""Layer densities: uniform, ER, ERK (SPEC §2)."""

from __future__ import annotations

import math
import re

import pytest

from regrow import layer_densities
from regrow.sparsity.distributions import active_counts
from tests.helpers import resnet50_shapes, wrn22_2_shapes

SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.99]
SHAPE_LISTS = {"wrn22_2": wrn22_2_shapes(), "resnet50": resnet50_shapes()}


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("model", sorted(SHAPE_LISTS))
@pytest.mark.parametrize("distribution", ["er", "erk"])
def test_non_uniform_keeps_uniform_budget(model: str, sparsity: float, distribution: str) -> None:
    shapes = SHAPE_LISTS[model]
    uniform = active_counts(shapes, layer_densities(shapes, sparsity, "uniform"))
    other_densities = layer_densities(shapes, sparsity, distribution)
    other = active_counts(shapes, other_densities)
    total = sum(math.prod(s) for s in shapes.values())
    budget = (1 - sparsity) * total
    # Each layer rounds down once: the totals differ by less than one weight per layer.
    assert abs(sum(other.values()) - sum(uniform.values())) <= len(shapes)
    assert budget - len(shapes) <= sum(other.values()) <= budget
    assert all(0.0 <= d <= 1.0 for d in other_densities.values())
    assert other != uniform


def test_wrn_worked_values_from_spec() -> None:
    """SPEC §2: at S=0.8 ERK the three shortcuts and the linear layer are dense, 128→128 3×3
    convs ≈ 0.865 sparse, 32→32 ≈ 0.425; at S=0.9 the 16→32 and 32→64 shortcuts and fc are dense."""
    shapes = wrn22_2_shapes()
    assert sum(math.prod(s) for s in shapes.values()) == 1_076_480
    d8 = layer_densities(shapes, 0.8, "erk")
    dense8 = {name for name, d in d8.items() if d == 1.0}
    assert dense8 == {"g0.b0.shortcut", "g1.b0.shortcut", "g2.b0.shortcut", "fc"}
    assert 1 - d8["g2.b1.conv1"] == pytest.approx(0.865, abs=5e-4)
    assert 1 - d8["g0.b1.conv1"] == pytest.approx(0.425, abs=5e-4)
    d9 = layer_densities(shapes, 0.9, "erk")
    assert {name for name, d in d9.items() if d == 1.0} == {
        "g0.b0.shortcut",
        "g1.b0.shortcut",
        "fc",
    }


def test_densities_never_exceed_one_and_the_largest_become_dense() -> None:
    shapes = {"small": (4, 4), "big": (1000, 1000)}
    d = layer_densities(shapes, 0.5, "erk")
    assert d["small"] == 1.0
    # The big layer pays for the small one: total stays at half.
    assert d["small"] * 16 + d["big"] * 1e6 == pytest.approx(0.5 * (16 + 1e6))


def test_power_zero_is_uniform() -> None:
    shapes = wrn22_2_shapes()
    erk0 = layer_densities(shapes, 0.9, "erk", power=0.0)
    assert all(d == pytest.approx(0.1) for d in erk0.values())


def test_uniform_is_one_minus_sparsity() -> None:
    densities = layer_densities(wrn22_2_shapes(), 0.8, "uniform").values()
    assert all(d == pytest.approx(0.2) for d in densities)


def test_er_uses_only_the_neuron_dimensions() -> None:
    """ER scales with (n_in + n_out)/(n_in·n_out); the kernel size does not enter."""
    with_kernel = layer_densities({"a": (32, 16, 3, 3), "b": (64, 64, 5, 5)}, 0.9, "er")
    ratio = with_kernel["a"] / with_kernel["b"]
    assert ratio == pytest.approx(((16 + 32) / (16 * 32)) / ((64 + 64) / (64 * 64)))
    # ERK does see the kernel.
    erk = layer_densities({"a": (32, 16, 3, 3), "b": (64, 64, 5, 5)}, 0.9, "erk")
    assert erk["a"] / erk["b"] != pytest.approx(ratio)


def test_custom_layers_stay_out_of_the_budget() -> None:
    shapes = wrn22_2_shapes()
    custom = {"fc": 0.5, "g0.b0.conv1": 0.0}
    d = layer_densities(shapes, 0.9, "erk", custom=custom)
    assert d["fc"] == 0.5 and d["g0.b0.conv1"] == 0.0
    rest = {n: s for n, s in shapes.items() if n not in custom}
    kept = sum(d[n] * math.prod(s) for n, s in rest.items())
    assert kept == pytest.approx(0.1 * sum(math.prod(s) for s in rest.values()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, "0 <= sparsity < 1"),
        ({"sparsity": -0.1}, "0 <= sparsity < 1"),
        ({"sparsity": 0.5, "distribution": "gaussian"}, "'uniform', 'er', 'erk'"),
        ({"sparsity": 0.5, "custom": {"nope": 0.1}}, "nope"),
        ({"sparsity": 0.5, "custom": {"fc": 1.5}}, "[0, 1]"),
    ],
)
def test_bad_input_names_value_and_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        layer_densities(wrn22_2_shapes(), **kwargs)


@pytest.mark.parametrize("power", [400, -400])
def test_a_power_whose_scores_leave_the_float_range_is_named(power: float) -> None:
    """Found after issue 18's fixes: power=400 raised a raw ZeroDivisionError (the ERK scores of
    large layers rounded to zero), power=-400 an OverflowError."""
    with pytest.raises(ValueError, match=rf"power={float(power)!r} is too large in magnitude"):
        layer_densities({"a": (100, 100), "b": (10, 10)}, 0.9, "erk", power=power)
