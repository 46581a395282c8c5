"""Batched augmentation on the batch's own device: random crop from reflect padding, horizontal flip,
and normalisation to float.

Everything works on a whole ``[N, C, H, W]`` batch at once (uint8 or float), with no per-image
Python loop: the crop and the flip are one index computation per sample and two ``gather`` calls,
so on a GPU the data never leaves the device. The padded image is never materialised: output pixel
``(i, j)`` of a sample cropped at offset ``(dy, dx)`` comes from padded pixel ``(i + dy, j + dx)``,
i.e. from source pixel ``(reflect(i + dy - p), reflect(j + dx - p))``, where ``reflect`` mirrors
about the edge pixel without repeating it (``torch.nn.functional.pad(mode="reflect")``).

Randomness comes only from an explicit ``torch.Generator`` (SPEC §9). The random parameters are
drawn on the generator's device and moved to the batch's device, so a CPU generator gives the same
augmentation whether the batch is on the CPU or a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["crop_flip", "draw_crop_flip", "normalize", "random_crop_flip", "reflect_indices"]


def reflect_indices(size: int, padding: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of each position of a reflect-padded axis: ``[size + 2·padding]`` int64.

    ``reflect_indices(4, 2)`` is ``[2, 1, 0, 1, 2, 3, 2, 1]``, the same as
    ``F.pad(mode="reflect")``; this needs ``padding < size``.
    """
    if not 0 <= padding < size:
        raise ValueError(
            f"padding={padding} is out of range for a side of {size} pixels: reflect padding needs "
            f"0 <= padding < {size}."
        )
    position = torch.arange(-padding, size + padding, device=device)
    position = position.abs()
    return torch.where(position > size - 1, 2 * (size - 1) - position, position)


def draw_crop_flip(
    count: int,
    generator: torch.Generator,
    padding: int = 4,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the random parameters of ``count`` crops/flips: ``(offset_y, offset_x, flipped)``.

    Offsets are uniform in ``[0, 2·padding]`` (``padding`` is the centred, un-shifted crop);
    ``flipped`` is a bool per sample, each true with probability 1/2 (all false if not ``flip``).
    Drawing them separately from :func:`crop_flip` lets a loader draw a whole epoch's parameters
    at once and still start at any batch.
    """
    device = generator.device
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator, device=device)
    coins = torch.randint(0, 2, (count,), generator=generator, device=device)
    flipped = coins.bool() if flip else torch.zeros(count, dtype=torch.bool, device=device)
    return offsets[0], offsets[1], flipped


def crop_flip(
    images: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flipped: torch.Tensor,
    padding: int = 4,
) -> torch.Tensor:
    """Crop every image of ``images`` ``[N, C, H, W]`` at its offset in the reflect-padded image
    (padded by ``padding`` on every side) back to ``H × W``, then mirror it left-right where
    ``flipped``. Same dtype and device as ``images``; deterministic given the parameters.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
    count, channels, height, width = images.shape
    device = images.device
    offset_y, offset_x, flipped = (t.to(device) for t in (offset_y, offset_x, flipped))
    rows = reflect_indices(height, padding, device)[
        offset_y[:, None] + torch.arange(height, device=device)
    ]
    columns = torch.arange(width, device=device).expand(count, width)
    columns = torch.where(flipped[:, None], columns.flip(1), columns)
    columns = reflect_indices(width, padding, device)[offset_x[:, None] + columns]
    out = images.gather(2, rows[:, None, :, None].expand(count, channels, height, width))
    return out.gather(3, columns[:, None, None, :].expand(count, channels, height, width))


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop from ``padding``-pixel reflect padding plus a random horizontal flip, per image
    of a ``[N, C, H, W]`` batch (the CIFAR augmentation of the paper), drawn from ``generator``."""
    offset_y, offset_x, flipped = draw_crop_flip(images.shape[0], generator, padding, flip)
    return crop_flip(images, offset_y, offset_x, flipped, padding)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Float images: uint8 pixels are scaled to [0, 1], then, if given, per-channel
    ``(x - mean) / std`` (channel = dim 1). Float input is taken as already in [0, 1].

    Done as one multiply-add with precomputed per-channel scale and shift.
    """
    scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
    out = images.to(dtype)
    if mean is None and std is None:
        return out.mul_(scale) if scale != 1.0 else out
    if mean is None or std is None:
        raise ValueError("normalize needs both mean and std, or neither")
    if images.dim() < 2 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"{len(mean)} means and {len(std)} stds for images of shape {list(images.shape)}: "
            f"give one per channel (dim 1)"
        )
    view = (1, len(mean)) + (1,) * (images.dim() - 2)
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    channel_scale = (scale / std_t).to(dtype=dtype, device=images.device).view(view)
    channel_shift = (-mean_t / std_t).to(dtype=dtype, device=images.device).view(view)
    return torch.addcmul(channel_shift, out, channel_scale)
