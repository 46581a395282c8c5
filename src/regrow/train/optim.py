"""The optimizer and the learning-rate schedule of a run (SPEC §8).

``train.optimizer=sgd`` (the paper's): SGD with Nesterov momentum. ``adamw`` (transformers):
``torch.optim.AdamW`` with ``train.betas`` and ``train.eps``. Either way weight decay falls on the
weights only, every parameter with ``ndim > 1`` (embeddings included, as in the usual GPT recipe),
never on biases or normalisation; for AdamW it is decoupled from the gradient.

``train.lr_schedule=step`` (the paper's): a linear warm-up, then ×``lr_gamma`` at each of the
``lr_milestones``; ``cosine``: the same warm-up, then a cosine decay to ``lr × min_lr_ratio`` at the
last step. Either schedule is a function of the optimizer step alone, so a resume that restores the
step restores the learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import RunConfig, TrainConfig
from .step import Settings


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: the weights (``ndim > 1``: matrices, convolutions, embeddings) with
    ``weight_decay``, the rest (biases, norms) without."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, config: RunConfig, settings: Settings | None = None
) -> torch.optim.SGD | torch.optim.AdamW:
    """``train.optimizer``: SGD with Nesterov momentum, or AdamW; weight decay on weights only,
    not biases or norms (SPEC §8). ``settings`` picks the implementation (fused, foreach,
    for-loop)."""
    t = config.train
    groups = parameter_groups(model, t.weight_decay)
    implementation = settings.optimizer_keywords() if settings else {}
    if t.optimizer == "adamw":
        beta1, beta2 = t.betas
        return torch.optim.AdamW(groups, lr=t.lr, betas=(beta1, beta2), eps=t.eps, **implementation)
    return torch.optim.SGD(
        groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, **implementation
    )


def lr_factor(step: int, total: int, warmup: int, milestones: list[float], gamma: float) -> float:
    """Linear warm-up over ``warmup`` steps, then ×gamma at each milestone (fractions of ``total``)."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * gamma ** sum(step >= round(m * total) for m in milestones)


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay from 1 at step ``warmup`` to
    ``min_ratio`` at the last step, ``total - 1`` (and after it). With ``W = warmup``,
    ``T = total``, ``r = min_ratio``::

        f(s) = (s + 1) / W                                   for s < W
        f(s) = r + (1 - r) · (1 + cos(π · p(s))) / 2         for s >= W,
        p(s) = min(1, (s - W) / max(1, T - 1 - W))

    so f(W) = 1, f(T - 1) = r, and f falls monotonically in between.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(
    optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int, steps_per_pass: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` (``lr_schedule=step``) or :func:`cosine_factor` (``cosine``) over the
    run's ``total_steps`` (warm-up: ``t.warmup_epochs`` passes)."""
    warmup = round(t.warmup_epochs * steps_per_pass)
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_factor(step, total_steps, warmup, t.min_lr_ratio)
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, t.lr_milestones, t.lr_gamma)
    )
