"""The quickstart's whole study (5 rows × 3 seeds, about a minute on 2 cores): marked slow, so CI
skips it; run it with `python -m pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from regrow.study.quickstart import run_quickstart


@pytest.mark.slow
def test_rigl_beats_set_static_and_its_step0_update_alone(tmp_path: Path) -> None:
    """At 97% sparsity: RigL > SET > Static, and RigL (first update at step 50) beats RigL with
    only its gradient-informed update at step 0: the gain is regrowth during training."""
    status, report = run_quickstart(str(tmp_path), seeds=3)
    assert status == 0 and report is not None
    accuracy = {c.values["tag"]: c.stats["test_accuracy"] for c in report.cells}
    assert all(stat.n == 3 for stat in accuracy.values())
    mean = {tag: stat.mean for tag, stat in accuracy.items()}
    assert mean["dense"] > mean["rigl"] > mean["rigl_step0_only"] + 1
    assert mean["rigl"] > mean["set"] + 2 > mean["static"] + 2
    flops = {c.values["tag"]: c.stats["train_flops_ratio"].mean for c in report.cells}
    assert flops["rigl"] < 0.05
