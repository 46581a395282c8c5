"""Evaluation of a run's model on its held-out splits: loss, accuracy and, for text, bits per
character (docs/RUN_DIR.md names the metrics)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..data import DatasetSplits, TextData
from . import distributed


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Any, bf16: bool, context: distributed.Context
) -> tuple[float, float]:
    """Mean loss and accuracy (%) per target over one pass of ``loader`` (each rank's share,
    summed): per sample for classes, per position for text (``[batch, time]`` targets)."""
    model.eval()
    totals = torch.zeros(3, device=loader.device)  # loss, correct, seen
    with torch.autocast(loader.device.type, torch.bfloat16, enabled=bf16):
        for x, y in loader.batches(0):
            logits = model(x).flatten(0, -2)  # [targets, classes]
            targets = y.flatten()
            totals[0] += nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            totals[1] += (logits.argmax(-1) == targets).sum()
            totals[2] += targets.numel()
    model.train()
    loss, correct, seen = distributed.all_reduce_sum(totals, context).tolist()
    return loss / seen, 100.0 * correct / seen


def evaluate_splits(
    model: nn.Module, data: DatasetSplits | TextData, bf16: bool, context: distributed.Context
) -> dict[str, float]:
    """Loss and accuracy on the validation split (if held out) and the test split; for text
    also bits per character (the loss in nats ÷ ln 2)."""
    shard = {"rank": context.rank, "world_size": context.world_size}
    results = {}
    for split, key in (("validation", "val"), ("test", "test")):
        if split == "test" or data.has_validation:
            loader = data.eval_loader(split, device=next(model.parameters()).device, **shard)
            loss, accuracy = evaluate(model, loader, bf16, context)
            results |= {f"{key}_loss": loss, f"{key}_accuracy": accuracy}
            if data.sequence:
                results[f"{key}_bpc"] = loss / math.log(2)
    return results
