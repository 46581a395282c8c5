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
median over rounds of the mean ms per batch; throughput is batch size ÷ that. A language model is
also timed one decode step at a time (:func:`measure_decode`: one new token per sample, its
key/value cache holding :data:`~regrow.export.decode.TIMED_CONTEXT` of the context). With
``compiled`` every model (or decode step) runs under ``torch.compile``, compiled before timing;
the decode table then also times the dense step eager (``dense (eager)``), since on a CPU the
compiled dense step is not always the faster one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .decode import TIMED_CONTEXT, step_inputs
from .inference import model_batch, strip_masks
from .timing import interleaved_seconds, median, quartiles


@dataclass
class Timing:
    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    samples_per_second: float  #: or tokens per second, for a decode step
    speedup: float  #: dense median ÷ this median


def measure_calls(
    calls: dict[str, Callable[[], Any]],
    batch_size: int,
    rounds: int = 15,
    warmup: int = 5,
    block_seconds: float = 0.05,
    baseline: str = "dense",
) -> list[Timing]:
    """Time ``calls`` side by side (see the module docstring); ``speedup`` is relative to
    ``calls[baseline]``."""
    with torch.inference_mode():
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


def _maybe_compiled(function: Callable[..., Any], compiled: bool) -> Callable[..., Any]:
    return torch.compile(function, dynamic=False) if compiled else function


def measure(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    rounds: int = 15,
    warmup: int = 5,
    block_seconds: float = 0.05,
    baseline: str = "dense",
    compiled: bool = False,
) -> list[Timing]:
    """Time each of ``models`` on one seeded batch (see the module docstring)."""
    x = model_batch(models[baseline], input_shape, batch_size, seed=2)
    calls = {}
    for name, model in models.items():
        run = _maybe_compiled(model.eval(), compiled)
        calls[name] = lambda run=run: run(x)
    return measure_calls(calls, batch_size, rounds, warmup, block_seconds, baseline)


def measure_decode(
    models: dict[str, Any],
    batch_size: int,
    rounds: int = 15,
    warmup: int = 5,
    block_seconds: float = 0.05,
    baseline: str = "dense",
    compiled: bool = False,
    context: float = TIMED_CONTEXT,
) -> list[Timing]:
    """Time one decode step of each of ``models`` (each with ``decode`` and ``new_cache``): one
    token per sample after ``context`` of the longest context in the cache (see the module
    docstring)."""
    tokens, _, position = step_inputs(models[baseline], batch_size, context)
    steps = {
        name: (model, _maybe_compiled(model.decode, compiled)) for name, model in models.items()
    }
    if compiled:  # the baseline as most run it, too: eager PyTorch
        steps[f"{baseline} (eager)"] = (models[baseline], models[baseline].decode)
    calls = {}
    for name, (model, step) in steps.items():
        cache = model.new_cache(batch_size)
        calls[name] = lambda step=step, cache=cache: step(tokens, cache, position)
    return measure_calls(calls, batch_size, rounds, warmup, block_seconds, baseline)


def three_models(masked: nn.Module, exported: nn.Module) -> dict[str, nn.Module]:
    """``dense`` / ``masked`` / ``exported`` for :func:`measure`."""
    return {"dense": strip_masks(masked).eval(), "masked": masked.eval(), "exported": exported}


def format_table(timings: list[Timing], decoding: bool = False) -> str:
    """One Markdown table: latency (median, interquartile range), throughput, speed-up vs dense
    (per decode step and tokens/s when ``decoding``)."""
    per, unit = ("step", "tokens/s") if decoding else ("batch", "samples/s")
    rows = [
        f"| model | latency ms/{per} (median) | IQR ms | {unit} | speed-up vs dense |",
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
