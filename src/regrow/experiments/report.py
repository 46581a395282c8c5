"""Tables and plots from run directories (reads ``summary.json`` files only)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..train.checkpoint import atomic_write
from ..train.rundir import RunDir


@dataclass(frozen=True)
class MethodResult:
    """One method's runs, aggregated over seeds."""

    method: str
    accuracies: tuple[float, ...]
    inference_flops_ratio: float
    train_flops_ratio: float
    sparsity: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def read_summaries(run_dirs: Iterable[Path]) -> list[dict]:
    """The ``summary.json`` of each run directory, in order."""
    summaries = []
    for path in run_dirs:
        summary = RunDir(path).summary()
        if summary is None or summary.get("status") != "finished":
            raise FileNotFoundError(
                f"{RunDir(path).summary_path} is missing: the run in {path} has not finished."
            )
        summaries.append(summary)
    return summaries


def aggregate(summaries: list[dict]) -> list[MethodResult]:
    """Group by method (in first-seen order): accuracy mean ± std over seeds, mean FLOP ratios."""
    groups: dict[str, list[dict]] = {}
    for summary in summaries:
        groups.setdefault(summary["method"], []).append(summary)
    return [
        MethodResult(
            method=method,
            accuracies=tuple(r["test_accuracy"] for r in runs),
            inference_flops_ratio=statistics.fmean(r["inference_flops_ratio"] for r in runs),
            train_flops_ratio=statistics.fmean(r["train_flops_ratio"] for r in runs),
            sparsity=statistics.fmean(r["sparsity"] for r in runs),
        )
        for method, runs in groups.items()
    ]


def table(results: list[MethodResult]) -> str:
    """A Markdown table: method, accuracy mean ± std (n), inference and training FLOPs ×dense."""
    lines = [
        "| method | sparsity | test accuracy (%) | seeds | inference FLOPs | training FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.method} | {r.sparsity:.2f} | {r.mean:.2f} ± {r.std:.2f} | {len(r.accuracies)} "
            f"| {r.inference_flops_ratio:.3f}x | {r.train_flops_ratio:.3f}x |"
        )
    return "\n".join(lines)


def plot(results: list[MethodResult], path: Path, title: str) -> None:
    """Accuracy per method (mean ± std over seeds, each seed a dot), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(1.6 * len(results) + 1.5, 4), dpi=120)
    positions = range(len(results))
    axes.bar(
        positions,
        [r.mean for r in results],
        yerr=[r.std for r in results],
        capsize=4,
        color="#9ecae1",
        edgecolor="#3182bd",
    )
    for i, r in enumerate(results):
        axes.scatter([i] * len(r.accuracies), r.accuracies, color="#08519c", s=12, zorder=3)
    axes.set_xticks(
        list(positions), [f"{r.method}\n{r.train_flops_ratio:.2f}x train\nFLOPs" for r in results]
    )
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    low = min(min(r.accuracies) for r in results)
    axes.set_ylim(max(0.0, low - 5), 100)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    plt.close(figure)
