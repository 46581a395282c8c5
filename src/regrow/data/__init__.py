"""The harness's datasets, by name, as tensors ready for :class:`~regrow.data.gpu.DeviceLoader`.

``DATASETS`` maps a name to a loader ``(root, download) -> DatasetSplits``; :func:`load_dataset`
adds the options every dataset shares (a held-out validation split, a training-set limit)::

    data = load_dataset("cifar10", root="data", download=True, validation_size=5000)
    train = data.train_loader(batch_size=128, seed=0, device="cuda")
    for x, y in train: ...

CIFAR images stay uint8 ``[N, 3, 32, 32]`` until a batch is normalised on the device; the digits
are float ``[N, 64]`` in [0, 1]. ``text`` is character-level language modelling
(:mod:`regrow.data.text`): a :class:`TextData` with the same loader interface, whose batches are
``[batch, block_size]`` token ids and their next characters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from .augment import crop_flip, draw_crop_flip, normalize, random_crop_flip, reflect_indices
from .cifar import (
    ARCHIVES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DownloadError,
    download_and_extract,
    extract_archive,
    load_cifar10,
    load_cifar100,
    read_cifar_file,
    split_train_validation,
)
from .digits import load_digits
from .gpu import DeviceLoader, epoch_generator, split_of
from .text import TextData, TextDataError, TextLoader, TextSource, load_text

__all__ = [
    "ARCHIVES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "DatasetSplits",
    "DeviceLoader",
    "DownloadError",
    "TextData",
    "TextDataError",
    "TextLoader",
    "TextSource",
    "crop_flip",
    "download_and_extract",
    "draw_crop_flip",
    "epoch_generator",
    "extract_archive",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_text",
    "normalize",
    "random_crop_flip",
    "read_cifar_file",
    "reflect_indices",
    "split_train_validation",
]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's splits as tensors, and what a loader needs to know about them.

    ``input_shape`` is one sample's shape; ``mean``/``std`` are the per-channel normalisation
    constants (``None``: none); ``augment`` says whether the paper's crop/flip applies to training
    batches. ``val_x``/``val_y`` are ``None`` unless a validation split was held out.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    sequence = False  #: one target per sample (a text's targets are per position)

    @property
    def has_validation(self) -> bool:
        return self.val_x is not None

    def model_options(self) -> dict[str, int]:
        """Keywords the model is built with beyond ``num_classes`` and ``width``: none."""
        return {}

    def train_loader(
        self,
        batch_size: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        *,
        drop_last: bool = True,
        augment: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> DeviceLoader:
        """A shuffling loader over the training split, augmenting if the dataset does (or
        ``augment``), normalising with the dataset's constants; ``rank``/``world_size`` shard
        each global batch of ``batch_size × world_size`` across data-parallel ranks.

        A global batch larger than the training split (which would yield no batches) is a
        ``ValueError`` worded in the config's keys (``train.batch_size``)."""
        count, batch = int(self.train_x.shape[0]), batch_size * world_size
        if drop_last and batch > count:
            processes = f" × {world_size} processes = {batch}" if world_size > 1 else ""
            raise ValueError(
                f"train.batch_size={batch_size}{processes} is larger than the {count} training "
                f"images of {self.name}: lower train.batch_size to at most {count // world_size}"
                " (data.limit_train and data.validation_size also shrink the training split)."
            )
        return DeviceLoader(
            self.train_x,
            self.train_y,
            batch_size,
            shuffle=True,
            augment=self.augment if augment is None else augment,
            mean=self.mean,
            std=self.std,
            drop_last=drop_last,
            seed=seed,
            device=device,
            rank=rank,
            world_size=world_size,
        )

    def eval_loader(
        self,
        split: str = "test",
        batch_size: int = 1000,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> DeviceLoader:
        """An in-order, un-augmented loader over ``"test"``, ``"validation"`` or ``"train"``
        (each rank sees its share when ``world_size > 1``; reduce the sums across ranks)."""
        tensors = {
            "test": (self.test_x, self.test_y),
            "validation": (self.val_x, self.val_y),
            "train": (self.train_x, self.train_y),
        }
        images, labels = split_of(tensors, split)
        if images is None or labels is None:
            raise ValueError(
                f"{self.name} has no validation split: set data.validation_size > 0 "
                "(load_dataset(validation_size=...))"
            )
        return DeviceLoader(
            images,
            labels,
            batch_size,
            shuffle=False,
            mean=self.mean,
            std=self.std,
            device=device,
            rank=rank,
            world_size=world_size,
        )


Root = str | os.PathLike[str] | None


def _cifar(
    name: str,
    load: Callable[[Root, bool], tuple[torch.Tensor, ...]],
    classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    root: Root,
    download: bool,
    **options: object,
) -> DatasetSplits:
    train_x, train_y, test_x, test_y = load(root, download)
    return DatasetSplits(
        name, train_x, train_y, test_x, test_y, classes, (3, 32, 32), mean, std, augment=True
    )


def _digits(root: Root, download: bool, **options: object) -> DatasetSplits:
    del root, download, options  # bundled with scikit-learn: nothing to find or fetch
    train_x, train_y, test_x, test_y = load_digits()
    return DatasetSplits("digits", train_x, train_y, test_x, test_y, 10, (64,))


def _text(root: Root, download: bool, path: Root = None, block_size: int = 256) -> TextData:
    del root, download  # a file of its own (data.path), or the standard library's text
    return load_text(path, block_size)


#: Dataset name -> loader ``(root, download, *, path, block_size) -> DatasetSplits | TextData``
#: (whole splits, no options applied; an option a dataset does not use is ignored).
DATASETS: dict[str, Callable[..., DatasetSplits | TextData]] = {
    "cifar10": partial(_cifar, "cifar10", load_cifar10, 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": partial(_cifar, "cifar100", load_cifar100, 100, CIFAR100_MEAN, CIFAR100_STD),
    "digits": _digits,
    "text": _text,
}


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    validation_size: int = 0,
    limit_train: int | None = None,
    seed: int = 0,
    path: Root = None,
    block_size: int = 256,
) -> DatasetSplits | TextData:
    """Load dataset ``name`` (a key of :data:`DATASETS`) from ``root`` (default ``./data``).

    ``download`` fetches a missing CIFAR archive (checksum verified). ``validation_size`` holds out
    that many training samples, drawn by :func:`split_train_validation` with ``seed`` (pass the
    same ``seed`` to every run that should validate on the same samples; the reproducibility report
    uses 5,000 of CIFAR-10's 50,000). ``limit_train`` then keeps only the first that-many remaining
    training samples (at most all), for quick runs; the validation set does not depend on it.
    ``text`` reads ``path`` (``None``: the standard library's text) in windows of ``block_size``
    and has its own validation split (the two options above are for images).
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(
            f"data.name={name!r} is unknown: allowed values are {', '.join(sorted(DATASETS))}."
        )
    if limit_train is not None and limit_train < 1:
        raise ValueError(
            f"data.limit_train={limit_train} is out of range: allowed values are >= 1, or null "
            "(None) for all."
        )
    data = DATASETS[key](root, download, path=path, block_size=block_size)
    if isinstance(data, TextData):
        return data
    count = int(data.train_x.shape[0])
    if not 0 <= validation_size < count:
        raise ValueError(
            f"data.validation_size={validation_size} is out of range for {key}: allowed values "
            f"are 0 <= x < {count} (its training images)."
        )
    if validation_size:
        train_x, train_y, val_x, val_y = split_train_validation(
            data.train_x, data.train_y, validation_size, seed
        )
        data = replace(data, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y)
    if limit_train is not None:
        data = replace(data, train_x=data.train_x[:limit_train], train_y=data.train_y[:limit_train])
    return data
