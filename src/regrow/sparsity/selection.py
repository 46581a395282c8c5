"""Seeded, tie-aware selection of the top-k positions of a tensor (SPEC §4, §9)."""

from __future__ import annotations

import hashlib
import math

import torch


def seeded_generator(seed: int, step: int, layer: str, device: torch.device) -> torch.Generator:
    """A generator seeded by (seed, step, layer) alone: the same on every rank and after a resume
    (SPEC §9), independent of the global RNG."""
    digest = hashlib.blake2b(f"{seed}/{step}/{layer}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


def topk_mask(
    scores: torch.Tensor, k: int, generator: torch.Generator, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of the ``k`` highest ``scores`` (compared in float32), ``excluded`` never chosen.

    Exact ties are broken by a seeded random permutation rather than by added noise, so values that
    differ are never reordered and the choice among equal values is reproducible and unbiased.
    """
    flat = scores.detach().reshape(-1).float()
    if excluded is not None:
        flat = flat.masked_fill(excluded.reshape(-1), -math.inf)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.randperm(flat.numel(), generator=generator, device=flat.device)
        chosen[order[torch.topk(flat[order], k, sorted=False).indices]] = True
    return chosen.view(scores.shape)
