"""The optimizer and the learning-rate schedule of a run (SPEC §8): SGD with Nesterov momentum,
weight decay on weights only, linear warm-up, then a step decay at fractions of the run.

The schedule is a function of the optimizer step alone, so a resume that restores the step
restores the learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RunConfig, TrainConfig
from .step import Settings


def build_optimizer(
    model: nn.Module, config: RunConfig, settings: Settings | None = None
) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weights only, not biases or norms (SPEC §8).
    ``settings`` picks the implementation (fused, foreach, for-loop)."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    t = config.train
    groups = [
        {"params": weights, "weight_decay": t.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    implementation = settings.sgd_keywords() if settings else {}
    return torch.optim.SGD(
        groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, **implementation
    )


def lr_factor(step: int, total: int, warmup: int, milestones: list[float], gamma: float) -> float:
    """Linear warm-up over ``warmup`` steps, then ×gamma at each milestone (fractions of ``total``)."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * gamma ** sum(step >= round(m * total) for m in milestones)


def lr_schedule(
    optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int, steps_per_pass: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` over the run's ``total_steps`` (warm-up: ``t.warmup_epochs`` passes)."""
    warmup = round(t.warmup_epochs * steps_per_pass)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, t.lr_milestones, t.lr_gamma)
    )
