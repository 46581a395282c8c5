"""FLOP accounting exactly as the RigL paper counts it (SPEC §7).

- :func:`count_flops` / :func:`profile_model`: per-layer and total inference FLOPs of any model at
  any per-layer densities (a dict, or a sparsifier's live masks), MicroNet conventions, measured
  from the model's real layer shapes.
- :func:`train_flops_per_sample` / :func:`train_flops_ratio`: the paper's training cost per method;
  :func:`pruning_mean_flops` for gradual pruning over its actual schedule.
- :class:`TrainingFlopsCounter`: the same, accumulated step by step inside a training loop.
- :func:`small_dense_width`, :func:`matching_sparsity`: Small-Dense widths and equal-FLOP
  sparsities.
- :func:`training_report`, :func:`matching_report`, :func:`small_dense_report`: what
  ``regrow flops`` prints, for a :class:`FlopsQuery` (a model builder, a method and a run).
"""

from .counter import (
    COUNTED_MODULES,
    FlopProfile,
    FlopReport,
    HasDensities,
    LayerFlops,
    LayerGeometry,
    count_flops,
    profile_model,
    resolve_densities,
)
from .matching import (
    flops_at_sparsity,
    kept_parameter_count,
    matching_sparsity,
    parameter_count,
    small_dense_width,
)
from .query import (
    PAPER_RUNS,
    FlopsQuery,
    InputShapeError,
    PaperRun,
    matching_report,
    paper_run,
    paper_total_steps,
    resolve_method_args,
    small_dense_report,
    training_report,
)
from .training import (
    MethodFlops,
    PruningSchedule,
    RunningFlops,
    TrainingFlopsCounter,
    method_training_flops,
    pruning_mean_flops,
    pruning_segments,
    train_flops_per_sample,
    train_flops_ratio,
)

__all__ = [
    "COUNTED_MODULES",
    "PAPER_RUNS",
    "FlopProfile",
    "FlopReport",
    "FlopsQuery",
    "HasDensities",
    "InputShapeError",
    "LayerFlops",
    "LayerGeometry",
    "MethodFlops",
    "PaperRun",
    "PruningSchedule",
    "RunningFlops",
    "TrainingFlopsCounter",
    "count_flops",
    "flops_at_sparsity",
    "kept_parameter_count",
    "matching_report",
    "matching_sparsity",
    "method_training_flops",
    "paper_run",
    "paper_total_steps",
    "parameter_count",
    "profile_model",
    "pruning_mean_flops",
    "pruning_segments",
    "resolve_densities",
    "resolve_method_args",
    "small_dense_report",
    "small_dense_width",
    "train_flops_per_sample",
    "train_flops_ratio",
    "training_report",
]
