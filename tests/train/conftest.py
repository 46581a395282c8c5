"""Fixtures shared by the run-level tests in tests/train: a tiny CIFAR-10 copy and a partial run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from regrow.train import train
from tests.helpers import write_cifar10
from tests.train.runs import config


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=16, test=16)  # 80 training images, 16 test images
    return root


@pytest.fixture(scope="module")
def relative_partial_run(tmp_path_factory) -> Path:
    """A run started with the relative ``out_dir=run`` and stopped at step 50 (mid pass 1); tests
    copy it (``cp -a``) and resume their copy."""
    origin = tmp_path_factory.mktemp("origin")
    here = Path.cwd()
    os.chdir(origin)
    try:
        assert train(config("run", "train.stop_at_step=50"))["status"] == "stopped"
    finally:
        os.chdir(here)
    return origin / "run"
