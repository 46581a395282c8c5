"""Inference latency of one architecture three ways, measured side by side in one run:

``dense``
    the plain model: the same weights, masks removed — every zero multiplied like any weight;
``masked``
    the model as trained: the mask buffers registered. regrow applies masks to the weights at each
    optimizer step, not in ``forward``, so this runs the same dense kernels as ``dense`` (a
    control: it should read ≈1.0×);
``exported``
    the inference model of :mod:`regrow.export.inference` (dead neurons removed, batch norm folded
    where possible, CSR where it timed faster at export).

Each model runs on the same seeded batch in eval mode under ``torch.inference_mode``; rounds are
interleaved (:func:`regrow.export.timing.interleaved_seconds`) after a warm-up. Latency is the
median over rounds of the mean ms per batch; throughput is batch size ÷ that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .inference import example_batch, strip_masks
from .timing import interleaved_seconds, median, quartiles


@dataclass
class Timing:
    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    samples_per_second: float
    speedup: float  #: dense median ÷ this median


def measure(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    rounds: int = 15,
    warmup: int = 5,
    block_seconds: float = 0.05,
    baseline: str = "dense",
) -> list[Timing]:
    """Time each of ``models`` on one seeded batch (see the module docstring); ``speedup`` is
    relative to ``models[baseline]``."""
    x = example_batch(input_shape, batch_size, seed=2)
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        calls = {name: (lambda m=model: m(x)) for name, model in models.items()}
        seconds = interleaved_seconds(calls, rounds, warmup, block_seconds, max_block=1000)
    base = median(seconds[baseline])
    timings = []
    for name, values in seconds.items():
        middle = median(values)
        q1, q3 = quartiles(values)
        timings.append(
            Timing(name, middle * 1e3, q1 * 1e3, q3 * 1e3, batch_size / middle, base / middle)
        )
    return timings


def three_models(masked: nn.Module, exported: nn.Module) -> dict[str, nn.Module]:
    """``dense`` / ``masked`` / ``exported`` for :func:`measure`."""
    return {"dense": strip_masks(masked).eval(), "masked": masked.eval(), "exported": exported}


def format_table(timings: list[Timing]) -> str:
    """One Markdown table: latency (median, interquartile range), throughput, speed-up vs dense."""
    rows = [
        "| model | latency ms/batch (median) | IQR ms | samples/s | speed-up vs dense |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        rows.append(
            f"| {t.name} | {t.median_ms:.4g} | {t.q1_ms:.4g}–{t.q3_ms:.4g} | "
            f"{t.samples_per_second:,.0f} | {t.speedup:.2f}× |"
        )
    return "\n".join(rows)


def describe_environment() -> dict[str, Any]:
    return {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
    }
