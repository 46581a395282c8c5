"""``regrow quickstart``: Dense, Static, SET and RigL on the bundled digits, over seeds, in about a
minute on a laptop CPU; prints a table and writes a plot (the README's main job)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..train import RunDir, load_config, train
from ..train.checkpoint import write_json, write_text
from .report import aggregate, plot, read_summaries, table

#: The methods compared, each with its own arguments (mask updates every 50 of the ~1,400 steps).
METHODS = {
    "dense": [],
    "static": [],
    "set": ["sparsity.args.delta_t=50"],
    "rigl": ["sparsity.args.delta_t=50"],
}


def run_quickstart(out_dir: str, seeds: int = 3, overrides: list[str] | None = None) -> str:
    """Train every method × seed (reusing finished runs, resuming interrupted ones); return the
    table. Writes ``results.md``, ``results.json`` and ``accuracy.png`` to ``out_dir``."""
    root = Path(out_dir)
    run_dirs = []
    for method, method_args in METHODS.items():
        for seed in range(seeds):
            run_dir = root / f"{method}_s{seed}"
            config = load_config(
                "quickstart",
                [
                    f"sparsity.method={method}",
                    *method_args,
                    *(overrides or []),
                    f"seed={seed}",
                    f"out_dir={run_dir}",
                ],
            )
            run = RunDir(run_dir)
            if not run.is_finished(config):
                print(f"regrow quickstart: {method}, seed {seed}", file=sys.stderr)
                result = train(config, resume=run.has_checkpoint())
                if result["status"] != "finished":
                    raise KeyboardInterrupt(
                        f"stopped during {run_dir}; run the same command to continue"
                    )
            run_dirs.append(run_dir)
    summaries = read_summaries(run_dirs)
    results = aggregate(summaries)
    first = summaries[-1]
    title = f"digits MLP, sparsity {first['target_sparsity']:g} ({first['distribution']}), {seeds} seeds"
    text = f"{title}\n\n{table(results)}\n"
    write_text(root / "results.md", text)
    write_json(
        root / "results.json",
        [
            {
                "method": r.method,
                "accuracy_mean": r.mean,
                "accuracy_std": r.std,
                "accuracies": list(r.accuracies),
                "inference_flops_ratio": r.inference_flops_ratio,
                "train_flops_ratio": r.train_flops_ratio,
                "sparsity": r.sparsity,
            }
            for r in results
        ],
    )
    plot(results, root / "accuracy.png", title)
    return text
