"""The tiny CIFAR-10 fixture shared by the run-level tests in tests/train."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_cifar10


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, per_batch=16, test=16)  # 80 training images, 16 test images
    return root
