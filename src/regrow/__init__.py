"""regrow: sparse training for PyTorch — RigL and its baselines, exact to the paper."""

from .sparsity import (
    DISTRIBUTIONS,
    METHODS,
    SET,
    SNFS,
    SNIP,
    Dense,
    Pruning,
    RigL,
    Sparsifier,
    Static,
    get_method,
    layer_densities,
)

__version__ = "0.1.0"

__all__ = [
    "DISTRIBUTIONS",
    "METHODS",
    "SET",
    "SNFS",
    "SNIP",
    "Dense",
    "Pruning",
    "RigL",
    "Sparsifier",
    "Static",
    "__version__",
    "get_method",
    "layer_densities",
]
