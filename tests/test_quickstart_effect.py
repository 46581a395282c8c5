"""The quickstart's whole study (4 methods × 3 seeds, about 40 s on 2 cores): marked slow, so CI
skips it; run it with `python -m pytest -m slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regrow.experiments.quickstart import run_quickstart


@pytest.mark.slow
def test_rigl_beats_set_and_static_at_97_percent_sparsity(tmp_path: Path) -> None:
    run_quickstart(str(tmp_path), seeds=3)
    results = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert results["rigl"]["accuracy_mean"] > results["set"]["accuracy_mean"] + 5
    assert results["set"]["accuracy_mean"] > results["static"]["accuracy_mean"]
    assert results["dense"]["accuracy_mean"] > results["rigl"]["accuracy_mean"]
    assert results["rigl"]["train_flops_ratio"] < 0.05
