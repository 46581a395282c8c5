"""The sparsity library: masks, distributions, schedules and the methods over one base."""

from .base import METHODS, DynamicSparsifier, Sparsifier, get_method, register
from .distributions import DISTRIBUTIONS, active_counts, layer_densities
from .methods import SET, SNFS, SNIP, Dense, Pruning, RigL, Static
from .schedules import drop_fraction, gmp_sparsity

__all__ = [
    "DISTRIBUTIONS",
    "METHODS",
    "SET",
    "SNFS",
    "SNIP",
    "Dense",
    "DynamicSparsifier",
    "Pruning",
    "RigL",
    "Sparsifier",
    "Static",
    "active_counts",
    "drop_fraction",
    "get_method",
    "gmp_sparsity",
    "layer_densities",
    "register",
]
