"""The allocation plan: which tensors are sparse, with which density and how many active weights.

One pure, printable object built once from a model (or from tensor shapes) and the keys every
method shares (sparsity, distribution, ERK power, dense layers, custom densities). The sparsifier
builds its masks from it, the FLOP API counts at its densities (it has ``.densities()``), and
``regrow flops`` prints it.

Default layer choice (SPEC §1): the weight of every conv and linear layer and the input
projections of ``nn.MultiheadAttention`` (its output projection is a linear layer); embeddings,
normalisation, biases and everything else stay dense and outside the budget. The first candidate,
the stem, is kept dense unless ``dense_layers`` says otherwise (``[]``: every candidate sparse); a
model whose only candidate is the stem is refused rather than left without a sparse layer. A model
may name its own default instead (``default_dense_layers``: the language model's output head).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from .distributions import (
    active_counts,
    check_custom_densities,
    check_distribution,
    check_power,
    check_sparsity,
    layer_densities,
)

#: Module types whose ``weight`` is a sparse candidate by default.
SPARSE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Projection weights of ``nn.MultiheadAttention`` (which of them exist depends on its dims).
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")

Role = Literal["sparse", "custom", "dense"]


def default_candidates(model: nn.Module) -> list[str]:
    """FQNs of the default sparse candidates, in registration order."""
    names = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, SPARSE_MODULE_TYPES) and module.weight is not None:
            names.append(prefix + "weight")
        elif isinstance(module, nn.MultiheadAttention):
            names += [prefix + a for a in ATTENTION_WEIGHTS if getattr(module, a) is not None]
    return names


def _matches(pattern: str, param_name: str) -> bool:
    """An entry names a parameter, its module, or a glob over either."""
    module_name = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return any(
        name == pattern or fnmatch.fnmatchcase(name, pattern) for name in (param_name, module_name)
    )


def check_layer_names(value: Sequence[str] | str | None, name: str) -> list[str] | None:
    """``dense_layers`` / ``sparse_layers`` as a list of names (a single name is one entry), or
    ``None``; ``ValueError`` naming the argument for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(entry, str) for entry in value):
        return list(value)
    meaning = (
        "None (keep the first layer dense), [] (every candidate sparse)"
        if name == "dense_layers"
        else "None (the default choice: conv/linear weights and attention projections)"
    )
    raise ValueError(
        f"{name}={value!r} is not a list of names: allowed values are {meaning}, or a list of "
        "parameter or module names (or glob patterns over them), e.g. ['fc', 'layer1.*']."
    )


def select_sparse(
    candidates: Sequence[str],
    dense_layers: Sequence[str] | str | None = None,
) -> list[str]:
    """The candidates that become sparse: ``dense_layers=None`` keeps the first (the stem) dense,
    ``[]`` none; entries are parameter or module names or globs, and one that matches no candidate
    is a ``ValueError`` naming the candidates."""
    if not candidates:
        raise ValueError(
            "the model has no conv, linear or attention layer to make sparse; name tensors with "
            "sparse_layers."
        )
    dense_layers = check_layer_names(dense_layers, "dense_layers")
    if dense_layers is None:
        if len(candidates) == 1:
            raise ValueError(
                f"the model's only sparse candidate, {candidates[0]!r}, is its first layer, which "
                "dense_layers=None keeps dense (the stem stays dense by default), so no layer "
                "would be sparse: pass dense_layers=[] to make it sparse, or use method=dense "
                "for a dense run."
            )
        return list(candidates[1:])
    dense: set[str] = set()
    for pattern in dense_layers:
        found = {name for name in candidates if _matches(pattern, name)}
        if not found:
            raise ValueError(
                f"dense_layers entry {pattern!r} matches no sparse layer; allowed values are "
                f"these names (or module names, or glob patterns over them): {list(candidates)}."
            )
        dense |= found
    chosen = [name for name in candidates if name not in dense]
    if not chosen:
        raise ValueError(
            f"dense_layers {list(dense_layers)} keeps every candidate dense ({list(candidates)}): "
            "no layer would be sparse. Use method=dense for a dense run, or name fewer layers."
        )
    return chosen


def candidate_shapes(
    model: nn.Module, sparse_layers: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """``name → shape`` of the candidates: the default choice, or the parameters matching
    ``sparse_layers`` (names, module names or globs)."""
    params = dict(model.named_parameters())
    sparse_layers = check_layer_names(sparse_layers, "sparse_layers")
    if sparse_layers is None:
        # A weight tied to an earlier parameter (a head sharing the token embedding) is listed by
        # named_parameters under its first name only, which is not a candidate's.
        names = [name for name in default_candidates(model) if name in params]
    else:
        names = []
        for pattern in sparse_layers:
            found = [name for name in params if _matches(pattern, name)]
            if not found:
                raise ValueError(
                    f"sparse_layers entry {pattern!r} matches no parameter; "
                    f"parameters are: {sorted(params)}."
                )
            names.extend(name for name in found if name not in names)
    return {name: tuple(params[name].shape) for name in names}


@dataclass(frozen=True)
class LayerAllocation:
    """One candidate tensor: ``sparse`` (its density from the distribution), ``custom`` (a density
    given by name, outside the budget) or ``dense`` (kept dense, unmasked)."""

    name: str
    shape: tuple[int, ...]
    role: Role
    density: float
    active: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class AllocationPlan:
    """Per-tensor target densities and active counts (SPEC §1, §2). Build with :meth:`build`."""

    sparsity: float
    distribution: str
    power: float
    layers: tuple[LayerAllocation, ...]

    @classmethod
    def build(
        cls,
        shapes: Mapping[str, Sequence[int]] | nn.Module,
        sparsity: float = 0.9,
        distribution: str = "erk",
        power: float = 1.0,
        dense_layers: Sequence[str] | str | None = None,
        custom_densities: Mapping[str, float] | None = None,
        sparse_layers: Sequence[str] | None = None,
        masked: bool = True,
    ) -> AllocationPlan:
        """The plan for a model (or for ``name → shape`` of its candidates, in order).

        ``masked=False`` (Dense, Small-Dense) lists every candidate as dense. ``ValueError``
        names the argument for a value it does not allow, and refuses a plan without a sparse
        layer (a one-layer model keeps its only layer dense unless ``dense_layers=[]``) or with a
        layer left no active weight (a sparsity too high for its size).
        """
        sparsity = check_sparsity(sparsity)
        distribution = check_distribution(distribution)
        power = check_power(power)
        custom = check_custom_densities(custom_densities)
        dense_layers = check_layer_names(dense_layers, "dense_layers")
        sparse_layers = check_layer_names(sparse_layers, "sparse_layers")
        if isinstance(shapes, nn.Module):
            model_default = dense_layers is None
            if model_default:  # the model's own choice (a transformer's output head)
                dense_layers = check_layer_names(
                    getattr(shapes, "default_dense_layers", None), "default_dense_layers"
                )
            shapes = candidate_shapes(shapes, sparse_layers)
            if model_default and dense_layers is not None:
                # Entries of the model's own choice that name no candidate are dropped, not
                # refused: a head tied to the token embedding is no candidate of its own (it
                # stays dense as the embedding), nor is a layer outside sparse_layers.
                dense_layers = [p for p in dense_layers if any(_matches(p, n) for n in shapes)]
        shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        chosen = select_sparse(list(shapes), dense_layers) if masked else []
        outside = sorted(set(custom) - set(chosen))
        if masked and outside:
            raise ValueError(
                f"custom_densities name {outside}, which are not sparse layers; allowed are: "
                f"{chosen}."
            )
        sparse_shapes = {name: shapes[name] for name in chosen}
        densities = layer_densities(sparse_shapes, sparsity, distribution, power, custom)
        counts = active_counts(sparse_shapes, densities)
        empty = [name for name in sparse_shapes if counts[name] == 0 and densities[name] > 0]
        if empty:
            listed = ", ".join(
                f"{name}: 0 of {math.prod(sparse_shapes[name])} (density {densities[name]:.2g})"
                for name in empty
            )
            raise ValueError(
                f"sparsity={sparsity!r} with distribution {distribution!r} leaves "
                f"{'layer' if len(empty) == 1 else 'layers'} {listed} without an active weight: "
                "such a layer passes no signal. Lower the sparsity, use another distribution, or "
                "keep these layers dense (dense_layers) or give them a density of their own "
                "(custom_densities)."
            )
        layers = tuple(
            LayerAllocation(
                name, shape, "custom" if name in custom else "sparse", densities[name], counts[name]
            )
            if name in sparse_shapes
            else LayerAllocation(name, shape, "dense", 1.0, math.prod(shape))
            for name, shape in shapes.items()
        )
        return cls(sparsity if masked else 0.0, distribution, float(power), layers)

    # --------------------------------------------------------------------------- views
    @property
    def masked(self) -> tuple[LayerAllocation, ...]:
        """The tensors that get a mask (sparse and custom), in model order."""
        return tuple(layer for layer in self.layers if layer.role != "dense")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.masked]

    @property
    def dense_names(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.role == "dense"]

    def densities(self) -> dict[str, float]:
        """Target density of each masked tensor (so a plan can be passed to the FLOP API)."""
        return {layer.name: layer.density for layer in self.masked}

    def active_counts(self) -> dict[str, int]:
        return {layer.name: layer.active for layer in self.masked}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {layer.name: layer.shape for layer in self.masked}

    def global_density(self) -> float:
        total = sum(layer.size for layer in self.masked)
        return sum(layer.active for layer in self.masked) / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "distribution": self.distribution,
            "power": self.power,
            "layers": [
                {
                    "name": x.name,
                    "shape": list(x.shape),
                    "role": x.role,
                    "density": x.density,
                    "active": x.active,
                    "size": x.size,
                }
                for x in self.layers
            ],
        }

    def __str__(self) -> str:
        rows = [("layer", "shape", "role", "density", "active", "size")]
        for x in self.layers:
            rows.append(
                (
                    x.name,
                    "x".join(map(str, x.shape)),
                    x.role,
                    f"{x.density:.4f}",
                    f"{x.active:,}",
                    f"{x.size:,}",
                )
            )
        masked = self.masked
        rows.append(
            (
                "total (masked)",
                "",
                "",
                f"{self.global_density():.4f}",
                f"{sum(x.active for x in masked):,}",
                f"{sum(x.size for x in masked):,}",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [
            f"AllocationPlan(sparsity={self.sparsity:g}, distribution={self.distribution!r}, "
            f"power={self.power:g})"
        ]
        for j, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row[:3], widths[:3], strict=True)]
            cells += [c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True)]
            lines.append("  ".join(cells).rstrip())
            if j in (0, len(rows) - 2):
                lines.append("-" * (sum(widths) + 10))
        lines.append("not listed (always dense, outside the budget): embeddings, norms, biases")
        return "\n".join(lines)
