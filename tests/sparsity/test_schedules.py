"""Pure schedules: drop fraction (SPEC §3), update steps, cubic pruning (SPEC §5), redistribution (§6)."""

from __future__ import annotations

import math

import pytest

from regrow.sparsity.redistribution import redistribute
from regrow.sparsity.schedules import (
    PruningSchedule,
    UpdateSchedule,
    drop_fraction,
    gmp_sparsity,
    scaled_step,
)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.3), (375, 0.15), (750, 0.0), (250, 0.15 * (1 + math.cos(math.pi / 3))), (900, 0.0)],
)
def test_cosine_drop_fraction(step: int, expected: float) -> None:
    assert drop_fraction(step, 0.3, 750) == pytest.approx(expected)


def test_constant_and_linear() -> None:
    assert drop_fraction(500, 0.3, 1000, "constant") == 0.3
    assert drop_fraction(250, 0.4, 1000, "linear") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="'cosine', 'constant', 'linear'"):
        drop_fraction(0, 0.3, 10, "exp")


def test_update_steps_from_zero_to_t_end_inclusive() -> None:
    schedule = UpdateSchedule(delta_t=100, begin=0, end=750)
    assert [t for t in range(2000) if schedule.is_update_step(t)] == list(range(0, 701, 100))
    shifted = UpdateSchedule(delta_t=100, begin=50, end=350)
    assert [t for t in range(1000) if shifted.is_update_step(t)] == [50, 150, 250, 350]
    with pytest.raises(ValueError, match="delta_t"):
        UpdateSchedule(delta_t=0, begin=0, end=10)


def test_gmp_cubic_schedule() -> None:
    assert gmp_sparsity(20_000, 0.9, 20_000, 75_000) == 0.0
    assert gmp_sparsity(75_000, 0.9, 20_000, 75_000) == pytest.approx(0.9)
    assert gmp_sparsity(47_500, 0.9, 20_000, 75_000) == pytest.approx(0.9 * (1 - 0.5**3))
    assert gmp_sparsity(10, 0.9, 20_000, 75_000) == 0.0
    assert gmp_sparsity(99_999, 0.9, 20_000, 75_000) == pytest.approx(0.9)
    schedule = PruningSchedule(begin=20_000, end=75_000)
    assert schedule.active_count(75_000, 1000, 100) == 100
    assert schedule.active_count(47_500, 1000, 100) == 1000 - math.floor(900 * 0.875)


def test_scaled_step_maps_paper_steps() -> None:
    assert scaled_step(20_000, 97_656) == 20_000
    assert scaled_step(75_000, 5 * 97_656) == 375_000


def test_redistribute_is_proportional_capped_and_exact() -> None:
    assert redistribute(30, [1.0, 2.0, 3.0], [100, 100, 100]) == [5, 10, 15]
    counts = redistribute(30, [1.0, 1.0, 100.0], [100, 100, 4])
    assert counts[2] == 4 and sum(counts) == 30 and counts[0] == counts[1] == 13
    assert sum(redistribute(7, [1.0, 1.0, 1.0], [5, 5, 5])) == 7
    assert redistribute(6, [0.0, 0.0], [10, 2]) == [5, 1]
    with pytest.raises(ValueError, match="free positions"):
        redistribute(11, [1.0], [10])
