"""A data loader that keeps the whole dataset on the training device and augments there.

CIFAR is 150 MB as uint8, so it fits on any GPU: holding it there removes the worker processes,
host-to-device copies and per-image Python work of a ``torch.utils.data.DataLoader``. A batch is an
index into the resident tensors, a crop/flip (:mod:`regrow.data.augment`) and a normalisation, all
on the device.

Order is a pure function of ``(seed, epoch)``: each epoch draws its permutation and its crop/flip
parameters from a CPU generator seeded by those two numbers only (never the global RNG), so a run
resumed at epoch ``e``, batch ``b`` reproduces the exact batches of an uninterrupted run from the
checkpoint's epoch and batch counters alone (SPEC §9), on any device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

import torch

from .augment import crop_flip, draw_crop_flip, normalize

__all__ = ["DeviceLoader", "epoch_generator", "split_of"]

T = TypeVar("T")


def split_of(splits: Mapping[str, T], split: str) -> T:
    """``splits[split]`` for an evaluation loader; ``ValueError`` naming the allowed splits."""
    if split not in splits:
        allowed = ", ".join(repr(name) for name in splits)
        raise ValueError(f"split={split!r} is unknown: allowed values are {allowed}.")
    return splits[split]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch)`` alone (hashed, so nearby pairs are unrelated)."""
    digest = hashlib.blake2b(f"regrow.data/{seed}/{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class DeviceLoader:
    """Iterate ``(x, y)`` batches of a dataset held as tensors on ``device``.

    Args:
        images: ``[N, ...]`` uint8 or float; moved to ``device`` once, at construction.
        labels: ``[N]`` int64.
        batch_size: samples per batch.
        shuffle: a fresh permutation each epoch (from ``(seed, epoch)``); else dataset order.
        augment: random crop from ``padding``-pixel reflect padding plus horizontal flip (``flip``)
            per sample; needs ``[N, C, H, W]`` images.
        mean, std: per-channel normalisation applied to every batch (see
            :func:`~regrow.data.augment.normalize`); ``None`` for none.
        drop_last: drop the last incomplete batch (training) or keep it (evaluation).
        seed: the run's data seed.
        device: where the data and batches live (default: where ``images`` already is).
        dtype: the float type of the yielded ``x``.
        rank, world_size: data-parallel sharding. Every rank draws the same permutation; a
            *global* batch is ``batch_size × world_size`` consecutive samples of it, and rank ``r``
            takes the ``r``-th ``batch_size`` of them. So the union over ranks of a global batch
            is the batch a single process with ``batch_size × world_size`` would see, and batch
            counters (epoch, batch) mean the same on any world size with that global batch.

    ``len(loader)`` is the number of batches per epoch. ``loader.batches(epoch, start_batch)``
    yields one epoch's batches from ``start_batch`` on; iterating the loader itself yields the
    epoch set by :meth:`set_epoch` (from its ``start_batch``) and, once that epoch is complete,
    moves on to the next epoch from batch 0 — so ``for epoch ...: for x, y in loader`` needs no
    bookkeeping, and a resume only calls ``set_epoch(epoch, start_batch)`` once.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = False,
        padding: int = 4,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size.")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range: allowed values are >= 1.")
        if augment and images.dim() != 4:
            raise ValueError(
                f"augment=True needs [N, C, H, W] images, got shape {list(images.shape)}"
            )
        if drop_last and images.shape[0] < batch_size * world_size:
            raise ValueError(
                f"drop_last=True with a global batch of {batch_size * world_size} > "
                f"{images.shape[0]} samples would yield no batches: lower batch_size or set "
                "drop_last=False."
            )
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.padding = padding
        self.flip = flip
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.drop_last = drop_last
        self.seed = seed
        self.dtype = dtype
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def num_samples(self) -> int:
        """The number of samples held."""
        return int(self.images.shape[0])

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """(Global) batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return -(-self.num_samples // self.global_batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next ``iter(loader)`` yield epoch ``epoch`` from batch ``start_batch`` on."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(
                f"start_batch={start_batch} is out of range: allowed values are 0 <= start_batch "
                f"<= {len(self)} (batches per epoch)."
            )
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        yield from self.batches(epoch, start)
        self.epoch, self.start_batch = epoch + 1, 0

    def batches(
        self, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield epoch ``epoch``'s batches ``start_batch, start_batch + 1, …`` as ``(x, y)`` on the
        device; batch ``b`` is the same whether or not the batches before it were yielded."""
        count = self.num_samples
        generator = epoch_generator(self.seed, epoch)
        # Draw in a fixed order (permutation, then augmentation) so both depend on (seed, epoch) only.
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        if self.augment:
            params = draw_crop_flip(count, generator, self.padding, self.flip)
            params = tuple(p.to(self.device, non_blocking=True) for p in params)
        order = order.to(self.device, non_blocking=True)
        for batch in range(start_batch, len(self)):
            first = batch * self.global_batch_size + self.rank * self.batch_size
            position = slice(first, min(first + self.batch_size, count))
            index = order[position]
            if not len(index):  # an evaluation shard past the end of the data
                continue
            x = self.images[index]
            if self.augment:
                x = crop_flip(x, *(p[position] for p in params), padding=self.padding)
            yield normalize(x, self.mean, self.std, self.dtype), self.labels[index]
