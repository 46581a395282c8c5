"""The sparsity library: the allocation plan, masks, distributions, schedules and the methods over
one base."""

from .args import MethodArgs, arg
from .base import METHODS, BatchReport, Sparsifier, Traits, get_method, register
from .distributions import DISTRIBUTIONS, active_counts, layer_densities
from .dynamic import DynamicArgs, DynamicSparsifier
from .gradient_growth import GradientGrowthArgs, GradientGrowthSparsifier
from .masks import strip_masks
from .methods import (
    MEST,
    SET,
    SNFS,
    SNIP,
    Chase,
    Dense,
    GraNet,
    Pruning,
    RigL,
    SmallDense,
    SRigL,
    Static,
)
from .plan import AllocationPlan, LayerAllocation
from .schedules import PruningSchedule, drop_fraction, gmp_sparsity
from .wrapper import SparseOptimizer, wrap_optimizer

__all__ = [
    "DISTRIBUTIONS",
    "MEST",
    "METHODS",
    "SET",
    "SNFS",
    "SNIP",
    "AllocationPlan",
    "BatchReport",
    "Chase",
    "Dense",
    "DynamicArgs",
    "DynamicSparsifier",
    "GraNet",
    "GradientGrowthArgs",
    "GradientGrowthSparsifier",
    "LayerAllocation",
    "MethodArgs",
    "Pruning",
    "PruningSchedule",
    "RigL",
    "SRigL",
    "SmallDense",
    "SparseOptimizer",
    "Sparsifier",
    "Static",
    "Traits",
    "active_counts",
    "arg",
    "drop_fraction",
    "get_method",
    "gmp_sparsity",
    "layer_densities",
    "register",
    "strip_masks",
    "wrap_optimizer",
]
