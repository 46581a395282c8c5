"""Per-layer densities from a global sparsity: uniform, Erdős–Rényi (ER) and ER-Kernel (ERK).

Pure functions on shapes (SPEC §2). A layer's shape follows PyTorch's layout: a conv kernel is
``(c_out, c_in, k_h, k_w)``, a linear weight ``(out, in)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

DISTRIBUTIONS = ("uniform", "er", "erk")


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Return ``sparsity`` as a float, or raise ``ValueError`` unless ``0 <= sparsity < 1``."""
    allowed = (
        f"allowed values are 0 <= {name} < 1 (the fraction of weights that are zero; 0.9 keeps "
        "10% of the weights)"
    )
    try:
        value = float(sparsity) if not isinstance(sparsity, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) and not _is_nan(sparsity):
        raise ValueError(f"{name}={sparsity!r} is not a number: {allowed}.")
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name}={sparsity!r} is out of range: {allowed}.")
    return value


def _is_nan(value: object) -> bool:
    """``value`` is a float NaN (a number, out of range) rather than something not a number."""
    return isinstance(value, float) and math.isnan(value)


def check_power(power: float) -> float:
    """Return the ERK exponent as a float, or raise ``ValueError`` unless it is a finite number."""
    try:
        value = float(power) if not isinstance(power, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"power={power!r} is not a finite number: allowed values are finite numbers (the ERK "
            "exponent: 1 is ERK, 0 makes it uniform)."
        )
    return value


def check_custom_densities(
    custom: Mapping[str, float] | None, name: str = "custom_densities"
) -> dict[str, float]:
    """``custom`` as ``{layer name: density}``; ``ValueError`` naming the entry unless it is
    ``None`` or a mapping of names to densities in [0, 1]."""
    if custom is None:
        return {}
    if not isinstance(custom, Mapping):
        raise ValueError(
            f"{name}={custom!r} is not a mapping: allowed values are None or a mapping of layer "
            "name to density in [0, 1], e.g. {'fc.weight': 0.5}."
        )
    result = {}
    for layer, density in custom.items():
        entry = f"{name}[{layer!r}]={density!r}"
        try:
            value = float(density) if not isinstance(density, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if math.isnan(value) and not _is_nan(density):
            raise ValueError(f"{entry} is not a number: allowed values are in [0, 1].")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{entry} is out of range: allowed values are in [0, 1].")
        result[str(layer)] = value
    return result


def check_distribution(distribution: str) -> str:
    """Return ``distribution`` lower-cased, or raise ``ValueError`` naming the allowed values."""
    key = str(distribution).lower()
    if key not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution={distribution!r} is unknown: allowed values are "
            f"{', '.join(repr(d) for d in DISTRIBUTIONS)}."
        )
    return key


def raw_score(shape: Sequence[int], distribution: str, power: float = 1.0) -> float:
    """The un-normalised density of a layer: ``d_l = ε · raw_score`` (SPEC §2).

    ERK scores every dimension, ``(Σ dims / Π dims) ** power``. ER scores the two neuron dimensions
    only, ``(n_in + n_out) / (n_in · n_out)``: those are the last two dims of the paper's TensorFlow
    kernels ``(k_h, k_w, c_in, c_out)``, i.e. the first two of PyTorch's ``(c_out, c_in, k_h, k_w)``,
    so the kernel size does not enter. Uniform scores every layer 1.
    """
    distribution = check_distribution(distribution)
    if distribution == "uniform":
        return 1.0
    if len(shape) < 2:
        raise ValueError(
            f"a sparse tensor needs at least 2 dimensions for {distribution!r}, got shape {tuple(shape)}"
        )
    if distribution == "er":
        n_out, n_in = shape[0], shape[1]
        return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / math.prod(shape)) ** power


def layer_densities(
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    distribution: str = "erk",
    power: float = 1.0,
    custom: Mapping[str, float] | None = None,
    max_density: float = 1.0,
) -> dict[str, float]:
    """Density of each layer so that the layers together keep ``(1 - sparsity)`` of their weights.

    ``shapes`` maps a name to a weight shape. Layers named in ``custom`` keep that density and are
    outside the budget. For the others, ``d_l = ε · raw_l`` with ``ε`` solved so that
    ``Σ d_l N_l = (1 - sparsity) Σ N_l`` (the non-zeros uniform density would give). A layer whose
    density would exceed 1 is made dense, its extra weights are paid for by the other layers, and ε
    is solved again (Evci et al. 2020, Appendix; SPEC §2). ``power=0`` makes ERK uniform.
    ``max_density`` (an N:M structure's ``n/m``, SPEC §19) caps every layer the same way instead
    of 1; the caller ensures ``1 - sparsity <= max_density``.

    Raises ``ValueError`` for a sparsity outside [0, 1), an unknown distribution, a power that is
    not a finite number, a custom density outside [0, 1] or a custom name not in ``shapes``.
    """
    sparsity = check_sparsity(sparsity)
    distribution = check_distribution(distribution)
    power = check_power(power)
    custom = check_custom_densities(custom)
    unknown = sorted(set(custom) - set(shapes))
    if unknown:
        raise ValueError(
            f"custom densities name {unknown}, which are not among the layers: {sorted(shapes)}."
        )

    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    free = [name for name in shapes if name not in custom]
    raw = _raw_scores(shapes, free, distribution, power)
    budget = (1.0 - sparsity) * sum(sizes[name] for name in free)

    dense: set[str] = set()
    while True:
        rest = [name for name in free if name not in dense]
        if not rest:
            break
        remaining = budget - sum(sizes[name] for name in dense) * max_density
        epsilon = remaining / sum(raw[name] * sizes[name] for name in rest)
        top = max(raw[name] for name in rest)
        if epsilon * top <= max_density:
            break
        # Every layer at the maximum score would exceed the cap first: cap them.
        dense.update(name for name in rest if math.isclose(raw[name], top, rel_tol=1e-12))

    densities: dict[str, float] = {}
    for name in shapes:
        if name in custom:
            densities[name] = float(custom[name])
        elif name in dense:
            densities[name] = max_density
        else:
            densities[name] = min(max_density, epsilon * raw[name])
    return densities


def _raw_scores(
    shapes: Mapping[str, Sequence[int]], names: Sequence[str], distribution: str, power: float
) -> dict[str, float]:
    """:func:`raw_score` of each layer; a ``ValueError`` naming ``power`` when it is so large that
    the scores leave the float range (they overflow, or one rounds to zero)."""
    try:
        raw = {name: raw_score(shapes[name], distribution, power) for name in names}
    except OverflowError:
        raw = {}
    if names and not (raw and all(math.isfinite(v) and v > 0 for v in raw.values())):
        raise ValueError(
            f"power={power!r} is too large in magnitude: the {distribution} scores leave the "
            "float range; allowed values are powers whose scores stay finite and above zero "
            "(1 is ERK, 0 uniform)."
        )
    return raw


def active_counts(
    shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]
) -> dict[str, int]:
    """Active weights per layer: ``round_down(d_l · N_l)`` (SPEC §2).

    A tiny tolerance keeps a density computed as ``k / N`` from rounding down to ``k - 1``.
    """
    return {
        name: min(math.prod(shape), math.floor(densities[name] * math.prod(shape) + 1e-6))
        for name, shape in shapes.items()
    }


@runtime_checkable
class HasDensities(Protocol):
    """Anything that reports live per-layer densities, e.g. a ``regrow`` sparsifier."""

    def densities(self) -> Mapping[str, float]: ...


Densities = Mapping[str, float] | HasDensities | None


def resolve_densities(densities: Densities) -> dict[str, float]:
    """A plain ``{param FQN: density}`` dict from a mapping, an object with ``.densities()``, or
    ``None`` (every layer dense). Raises ``ValueError`` for a density outside [0, 1]."""
    if densities is None:
        return {}
    if isinstance(densities, Mapping):
        values = dict(densities)
    elif callable(getattr(densities, "densities", None)):
        values = dict(densities.densities())
    else:
        raise TypeError(
            f"densities must be a mapping of parameter name to density or an object with a "
            f".densities() method (a sparsifier), got {type(densities).__name__}."
        )
    result = {}
    for name, value in values.items():
        density = float(value)
        if not 0.0 <= density <= 1.0 or math.isnan(density):
            raise ValueError(f"density of {name!r} is {value!r}: allowed values are in [0, 1].")
        result[str(name)] = density
    return result
