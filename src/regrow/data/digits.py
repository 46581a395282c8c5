"""The embedded default dataset: scikit-learn's bundled 8×8 handwritten digits.

1,797 images of the digits 0–9 (the UCI optdigits test set), shipped inside scikit-learn, so it
needs no download and no data folder: the harness's smoke runs, examples and CLI tests train on it
in seconds on a CPU.

Images are returned flattened, as float32 ``[N, 64]`` scaled to [0, 1] (the raw values are 0–16),
which is what an MLP takes (``LeNet300100(in_features=64)``); ``x.view(-1, 1, 8, 8)`` recovers the
images. The train/test split is stratified (20% of each class is held out) and drawn from a fixed
seed, so it is the same in every run whatever the training seed.
"""

from __future__ import annotations

import torch

__all__ = ["DIGITS_SPLIT_SEED", "load_digits", "stratified_split"]

#: The seed of the fixed train/test split (not the run's seed: the test set never changes).
DIGITS_SPLIT_SEED = 0


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)``: ``round(test_fraction · n_c)`` random samples of each class ``c``
    go to test, drawn from a generator seeded by ``seed``; both index sets are sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction={test_fraction} is out of range: allowed values are 0 < test_fraction < 1."
        )
    generator = torch.Generator().manual_seed(seed)
    test_parts = []
    for value in torch.unique(labels).tolist():
        members = torch.nonzero(labels == value).flatten()
        shuffled = members[torch.randperm(members.numel(), generator=generator)]
        test_parts.append(shuffled[: round(test_fraction * members.numel())])
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def load_digits(
    test_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits as ``(train_x, train_y, test_x, test_y)``: float32 ``[N, 64]`` in [0, 1] and
    int64 labels 0–9, split by :func:`stratified_split` with :data:`DIGITS_SPLIT_SEED`
    (1,438 train / 359 test at the default 20%)."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ModuleNotFoundError as error:
        # Same class and name, so the CLI still recognises the missing extra.
        raise ModuleNotFoundError(
            "the 'digits' dataset is scikit-learn's bundled copy: install it with "
            '`pip install "regrow[harness]"`, or train on cifar10/cifar100 instead',
            name=error.name,
        ) from error
    bunch = sklearn_load_digits()
    images = torch.from_numpy(bunch.data).to(torch.float32).div_(16.0)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    train, test = stratified_split(labels, test_fraction, DIGITS_SPLIT_SEED)
    return images[train], labels[train], images[test], labels[test]
