"""Topology statistics: a metrics row at every mask update (ITOP rate, connections changed,
per-layer density), kept in the checkpoint and continued bit for bit by a resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import regrow
from regrow.cli import main
from regrow.sparsity.schedules import drop_fraction
from regrow.train import RunDir, load_config, train
from tests.helpers import MODELS, batch

SHORT = ["train.epochs=3", "train.eval_every=3", "train.checkpoint_every=3", "train.progress=false"]


def rigl(out_dir: Path, *extra: str) -> list[str]:
    return [
        "sparsity.method=rigl",
        "sparsity.args.delta_t=15",
        *SHORT,
        f"out_dir={out_dir}",
        *extra,
    ]


def test_every_rigl_update_writes_its_statistics(tmp_path: Path) -> None:
    summary = train(load_config("quickstart", rigl(tmp_path)))
    rows = RunDir(tmp_path).mask_updates()
    t_end = int(0.75 * summary["total_steps"])
    assert [row["step"] for row in rows] == list(range(0, t_end + 1, 15))
    layers = set(summary["layer_densities"])
    for row in rows:
        alpha_t = drop_fraction(row["step"], 0.3, t_end, "cosine")
        # Count-conserving: as many grown as dropped; a weight dropped and regrown at once is
        # not a change, so the changed fraction is at most the drop fraction of that step.
        assert row["grown"] == row["dropped"] > 0
        assert 0 < row["changed_fraction"] <= alpha_t + 1e-9
        assert set(row["layer_density"]) == layers
        for name, density in row["layer_density"].items():
            assert density == pytest.approx(summary["layer_densities"][name], abs=0.01), name
    rates = [row["itop_rate"] for row in rows]
    assert rates == sorted(rates), "the union of masks only grows"
    density = 1 - summary["target_sparsity"]
    # After the first update: the initial mask and the connections it grew.
    assert rates[0] == pytest.approx(density * (1 + rows[0]["changed_fraction"]), rel=0.02)
    assert rates[-1] > 1.5 * density  # many more weights than the final mask took part
    assert RunDir(tmp_path).metrics()[0]["epoch"] == 0  # pass rows stay what they were


def test_the_itop_rate_counts_the_union_of_masks() -> None:
    """By hand: the union of every mask so far over the sparse layers' size."""
    build, _, _ = MODELS["mlp"]
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = regrow.RigL(model, optimizer, sparsity=0.8, total_steps=100, delta_t=10)
    union = [mask.clone() for mask in sp.masks.values()]
    for index in range(25):
        x, y = batch("mlp", index)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if sp.step():
            optimizer.step()
        union = [u | m for u, m in zip(union, sp.masks.values(), strict=True)]
    expected = sum(int(u.sum()) for u in union) / sum(u.numel() for u in union)
    assert sp.itop_rate() == pytest.approx(expected)
    assert sp.itop_rate() > sp.global_density()


def test_static_writes_no_update_rows_and_pruning_reports_what_it_removed(tmp_path) -> None:
    train(
        load_config("quickstart", ["sparsity.method=static", *SHORT, f"out_dir={tmp_path / 's'}"])
    )
    assert RunDir(tmp_path / "s").mask_updates() == []
    args = [
        "sparsity.args.delta_t=20",
        "sparsity.args.prune_begin=10",
        "sparsity.args.prune_end=90",
    ]
    out = tmp_path / "p"
    train(load_config("quickstart", ["sparsity.method=pruning", *args, *SHORT, f"out_dir={out}"]))
    rows = RunDir(out).mask_updates()
    assert [row["step"] for row in rows] == [10, 30, 50, 70, 90]
    densities = [1.0] + [row["density"] for row in rows]
    for before, row in zip(densities, rows, strict=False):
        assert row["grown"] == 0
        assert row["changed_fraction"] == pytest.approx(1 - row["density"] / before, abs=1e-3)
        assert row["itop_rate"] == 1.0  # it started dense: every weight was active
    assert math.isclose(rows[-1]["density"], 0.03, abs_tol=0.002)


def test_a_resumed_run_writes_the_uninterrupted_update_rows(tmp_path: Path) -> None:
    """Stopped at step 50 (mid pass 1, three updates in) and resumed: the same update rows,
    the ITOP rate continuing from the checkpoint's union of masks."""
    train(load_config("quickstart", rigl(tmp_path / "whole")))
    train(load_config("quickstart", rigl(tmp_path / "part", "train.stop_at_step=50")))
    assert [row["step"] for row in RunDir(tmp_path / "part").mask_updates()] == [0, 15, 30, 45]
    assert main(["train", "--resume", str(tmp_path / "part")]) == 0
    assert RunDir(tmp_path / "part").mask_updates() == RunDir(tmp_path / "whole").mask_updates()
