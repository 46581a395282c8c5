"""What ``regrow sweep`` writes and ``regrow report`` reads: the study file's name and the figure
kinds (one fact in one place; the run directory's own names are :mod:`regrow.train.rundir`'s)."""

from __future__ import annotations

#: Written by ``regrow sweep`` into the study directory: the study's name, base preset, fixed
#: overrides, every planned run (name, overrides, parameters) and the study file's report settings.
STUDY_FILE = "study.json"

#: Figures ``regrow report`` can draw, each with what it shows.
FIGURE_KINDS: dict[str, str] = {
    "accuracy_by_cell": "test accuracy of each cell (bars: mean ± std; dots: each seed)",
    "accuracy_vs_sparsity": "test accuracy against sparsity per method and distribution (std bands)",
    "bpc_vs_sparsity": "test bits per character (language-model runs; lower is better) against "
    "sparsity per method and distribution (std bands)",
    "alpha_delta_t": "test accuracy over RigL's drop fraction α × update interval ΔT (heat map)",
    "accuracy_vs_train_flops": "test accuracy against training FLOPs (×dense) of ×M runs",
    "erk_vs_uniform": "ERK against uniform at equal inference FLOPs",
    "layer_density": "per-layer density over training, from the mask-update rows",
    "learning_curves": "training loss and test accuracy (validation bits per character for "
    "language-model runs) against epoch of each run",
}
