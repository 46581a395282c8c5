"""Wall-clock timing shared by the export-time CSR choice and ``regrow bench-inference``: calls
measured side by side, in interleaved rounds after a warm-up, so drifting machine load falls on
every candidate alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def interleaved_seconds(
    calls: Mapping[str, Callable[[], Any]],
    rounds: int = 15,
    warmup: int = 3,
    block_seconds: float = 0.01,
    max_block: int = 10_000,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``: one value per round, each the mean over a block of
    calls sized to last about ``block_seconds`` (at least one call). Every round runs every call's
    block once, the order rotating from round to round; ``warmup`` calls each come first."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r}: allowed values are >= 1")
    names = list(calls)
    blocks = {}
    for name in names:
        call = calls[name]
        for _ in range(warmup):
            call()
        once = []
        for _ in range(2):
            start = time.perf_counter()
            call()
            once.append(time.perf_counter() - start)
        blocks[name] = max(1, min(max_block, int(block_seconds / max(min(once), 1e-7))))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            call, count = calls[name], blocks[name]
            start = time.perf_counter()
            for _ in range(count):
                call()
            seconds[name].append((time.perf_counter() - start) / count)
    return seconds


def synchronized(call: Callable[[], Any], device: Any = "cpu") -> Callable[[], Any]:
    """``call``, waiting for its kernels to finish on a CUDA ``device`` (which runs them
    asynchronously: timing the launch alone would time nothing)."""
    if str(device).startswith("cuda"):
        import torch

        def run() -> Any:
            result = call()
            torch.cuda.synchronize(device)
            return result

        return run
    return call


def median(values: list[float]) -> float:
    return statistics.median(values)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (both the value itself for a single measurement)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3
