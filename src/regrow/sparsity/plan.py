"""The allocation plan: which tensors are sparse, with which density and how many active weights.

One pure, printable object built once from a model (or from tensor shapes) and the keys every
method shares (sparsity, distribution, ERK power, dense layers, custom densities). The sparsifier
builds its masks from it, the FLOP API counts at its densities (it has ``.densities()``), and
``regrow flops`` prints it.

Default layer choice (SPEC §1; what a layer is: :mod:`regrow.sparsity.layers`): the weight of
every conv and linear layer (Hugging Face's ``Conv1D``, a linear layer stored ``[in, out]``,
included) and the input projections of ``nn.MultiheadAttention`` (its output projection is a
linear layer); embeddings, normalisation, biases and everything else stay dense and outside the
budget. A tensor shared under several names is one tensor, listed under its first name; one shared
with a parameter that is no candidate (an output head tied to the token embedding) is no candidate
either: it stays dense with the embedding.

``dense_layers=None`` keeps the model's first layer dense: the first layer the input meets. When
an embedding comes before every candidate (a transformer), that is the embedding, dense anyway,
so every candidate is sparse; otherwise the first candidate, the stem (CNNs, MLPs). ``[]`` makes
every candidate sparse. A model may name its own default instead (``default_dense_layers``:
regrow's language model keeps its output head dense); an untied head or classifier of a model
that names none is sparse, as every last layer. A plan that would leave no layer sparse is refused
with a ``ValueError`` saying why (a model without candidates, a one-layer model whose only
candidate is its stem, ``dense_layers`` naming every candidate).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Collection, Mapping, Sequence
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
from .layers import (
    ATTENTION_WEIGHTS,
    SPARSE_MODULE_TYPES,
    candidate_weights,
    fan_in_shape,
    input_meets_embedding_first,
    parameter_names,
    transposed_parameters,
)
from .structure import parse_structure

__all__ = [
    "ATTENTION_WEIGHTS",
    "SPARSE_MODULE_TYPES",
    "AllocationPlan",
    "LayerAllocation",
    "candidate_shapes",
    "check_layer_names",
    "default_candidates",
    "model_dense_layers",
    "select_sparse",
    "shared_candidates",
]

Role = Literal["sparse", "custom", "dense"]


def default_candidates(model: nn.Module) -> list[str]:
    """FQNs of the default sparse candidates, in registration order (a weight shared with another
    module under that module's name: see :func:`candidate_shapes`)."""
    names = []
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        names += [prefix + weight for weight in candidate_weights(module)]
    return names


def model_dense_layers(model: nn.Module) -> list[str] | None:
    """What ``dense_layers=None`` keeps dense on ``model``: its own ``default_dense_layers`` if it
    declares them; ``[]`` when the input meets an embedding first (nothing beyond the embeddings,
    which are dense anyway); ``None`` otherwise (the first candidate: the stem)."""
    declared = getattr(model, "default_dense_layers", None)
    if declared is not None:
        return check_layer_names(declared, "default_dense_layers")
    return [] if input_meets_embedding_first(model) else None


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


def shared_candidates(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The default candidates as tensors: each under its first name (the one ``named_parameters``
    lists), once; and ``{candidate: parameter}`` for those left out because their tensor is also a
    parameter that is no candidate (an output head tied to the token embedding, which stays dense
    with it)."""
    first = parameter_names(model)
    candidates = [name for name in default_candidates(model) if name in first]
    names_of: dict[str, list[str]] = {}
    for name, canonical in first.items():
        names_of.setdefault(canonical, []).append(name)
    chosen: list[str] = []
    tied: dict[str, str] = {}
    listed = set(candidates)
    for name in candidates:
        others = [other for other in names_of[first[name]] if other not in listed]
        if others:
            tied[name] = others[0]
        elif first[name] not in chosen:
            chosen.append(first[name])
    return chosen, tied


def candidate_shapes(
    model: nn.Module, sparse_layers: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """``name → shape`` of the candidates: the default choice (:func:`shared_candidates`), or the
    parameters matching ``sparse_layers`` (names, module names or globs; any name of a shared
    tensor stands for it, listed under its first name)."""
    params = dict(model.named_parameters())
    sparse_layers = check_layer_names(sparse_layers, "sparse_layers")
    if sparse_layers is None:
        names, _ = shared_candidates(model)
    else:
        first = parameter_names(model)
        names = []
        for pattern in sparse_layers:
            found = [first[name] for name in first if _matches(pattern, name)]
            if not found:
                raise ValueError(
                    f"sparse_layers entry {pattern!r} matches no parameter; "
                    f"parameters are: {sorted(params)}."
                )
            for name in found:
                if name not in names:
                    names.append(name)
    return {name: tuple(params[name].shape) for name in names}


def _no_candidate_error(model: nn.Module) -> ValueError:
    """Why a model has no default candidate: what it holds stays dense by default."""
    _, tied = shared_candidates(model)
    shared = "".join(
        f"; {name} is the tensor {parameter}, shared with a parameter that stays dense"
        for name, parameter in tied.items()
    )
    return ValueError(
        "no layer would be sparse: the model has no conv, linear (nn.Linear or Conv1D) or "
        f"attention layer to make sparse{shared}. Embeddings, norms, biases and tensors shared "
        "with them stay dense by default. Name the tensors to make sparse with sparse_layers, or "
        "use method=dense for a dense run."
    )


def _applies(
    pattern: str, shapes: Mapping[str, Any], first: Mapping[str, str], model_default: bool
) -> bool:
    """Whether a ``dense_layers`` entry is kept for the plan. Dropped, not refused: an entry of the
    model's own choice that names no candidate (a head tied to the embedding, a layer outside
    sparse_layers), and an entry naming no candidate but another name of a shared tensor that is
    no candidate (``lm_head`` of a model whose head is tied: dense with the embedding)."""
    if any(_matches(pattern, name) for name in shapes):
        return True
    if model_default:
        return False
    return not any(
        name != canonical and canonical not in shapes and _matches(pattern, name)
        for name, canonical in first.items()
    )


def _model_candidates(
    model: nn.Module,
    dense_layers: list[str] | None,
    sparse_layers: list[str] | None,
    masked: bool,
) -> tuple[dict[str, tuple[int, ...]], list[str] | None, set[str]]:
    """A model's candidates (``name → shape``), the ``dense_layers`` that apply to them (the
    model's own choice for ``None``: :func:`model_dense_layers`) and the transposed ones."""
    model_default = dense_layers is None
    if model_default:
        dense_layers = model_dense_layers(model)
    shapes = candidate_shapes(model, sparse_layers)
    if masked and not shapes:
        raise _no_candidate_error(model)
    if dense_layers is not None:
        first = parameter_names(model)
        dense_layers = [p for p in dense_layers if _applies(p, shapes, first, model_default)]
    return shapes, dense_layers, transposed_parameters(model) & set(shapes)


def _refuse_empty_layers(
    shapes: Mapping[str, tuple[int, ...]],
    densities: Mapping[str, float],
    counts: Mapping[str, int],
    sparsity: float,
    distribution: str,
) -> None:
    """``ValueError`` naming each layer of the budget left without an active weight."""
    empty = [name for name in shapes if counts[name] == 0 and densities[name] > 0]
    if empty:
        listed = ", ".join(
            f"{name}: 0 of {math.prod(shapes[name])} (density {densities[name]:.2g})"
            for name in empty
        )
        raise ValueError(
            f"sparsity={sparsity!r} with distribution {distribution!r} leaves "
            f"{'layer' if len(empty) == 1 else 'layers'} {listed} without an active weight: "
            "such a layer passes no signal. Lower the sparsity, use another distribution, or "
            "keep these layers dense (dense_layers) or give them a density of their own "
            "(custom_densities)."
        )


def _check_structure_densities(
    structure: Any, sparsity: float, custom: Mapping[str, float], masked: bool
) -> float:
    """The densest a layer may be under ``structure`` (N:M: ``n/m``); ``ValueError`` for a
    sparsity or custom density that would need a denser layer."""
    cap = structure.max_density
    if not masked or cap >= 1.0:
        return 1.0
    if 1.0 - sparsity > cap + 1e-12:
        raise ValueError(
            f"sparsity={sparsity!r} is below what structure {str(structure)!r} allows: an N:M "
            f"layer keeps at most {cap:g} of its weights, so allowed values are sparsity >= "
            f"{1 - cap:g} (the distribution's densities are capped at {cap:g})."
        )
    over = {name: d for name, d in custom.items() if d > cap}
    if over:
        raise ValueError(
            f"custom_densities {over} exceed {cap:g}, the most structure {str(structure)!r} "
            f"allows: allowed densities are <= {cap:g}."
        )
    return cap


@dataclass(frozen=True)
class LayerAllocation:
    """One candidate tensor: ``sparse`` (its density from the distribution), ``custom`` (a density
    given by name, outside the budget) or ``dense`` (kept dense, unmasked). ``transposed``: a
    linear weight stored ``[in, out]`` (``Conv1D``), whose rows (output neurons) are its columns
    (:mod:`regrow.sparsity.layers`)."""

    name: str
    shape: tuple[int, ...]
    role: Role
    density: float
    active: int
    transposed: bool = False

    @property
    def out_fan_in(self) -> tuple[int, int]:
        """``(out, fan_in)``: output neurons and the weights each reads when dense."""
        return fan_in_shape(self.shape, self.transposed)

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
    #: ``sparsity.structure`` (SPEC §19): the counts are rounded to it.
    structure: str = "unstructured"

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
        structure: str = "unstructured",
    ) -> AllocationPlan:
        """The plan for a model (or for ``name → shape`` of its candidates, in order).

        ``masked=False`` (Dense, Small-Dense) lists every candidate as dense. ``ValueError``
        names the argument for a value it does not allow, and refuses a plan without a sparse
        layer (a one-layer model keeps its only layer dense unless ``dense_layers=[]``) or with a
        layer left no active weight (a sparsity too high for its size). ``structure`` (SPEC §19)
        caps every density at N:M's ``n/m`` and rounds every count down to whole units.
        """
        sparsity = check_sparsity(sparsity)
        shape_of = parse_structure(structure)
        distribution = check_distribution(distribution)
        power = check_power(power)
        custom = check_custom_densities(custom_densities)
        dense_layers = check_layer_names(dense_layers, "dense_layers")
        sparse_layers = check_layer_names(sparse_layers, "sparse_layers")
        transposed: set[str] = set()
        if isinstance(shapes, nn.Module):
            shapes, dense_layers, transposed = _model_candidates(
                shapes, dense_layers, sparse_layers, masked
            )
        shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        chosen = select_sparse(list(shapes), dense_layers) if masked else []
        outside = sorted(set(custom) - set(chosen))
        if masked and outside:
            raise ValueError(
                f"custom_densities name {outside}, which are not sparse layers; allowed are: "
                f"{chosen}."
            )
        sparse_shapes = {name: shapes[name] for name in chosen}
        cap = _check_structure_densities(shape_of, sparsity, custom, masked)
        densities = layer_densities(sparse_shapes, sparsity, distribution, power, custom, cap)
        counts = active_counts(sparse_shapes, densities)
        wanted = dict(densities)
        for name, shape in sparse_shapes.items():
            rounded = shape_of.for_layer(shape, name in transposed).round_count(counts[name])
            if shape_of.family != "unstructured":  # the density the masks will have, exactly
                counts[name], densities[name] = rounded, rounded / math.prod(shape)
        _refuse_empty_layers(sparse_shapes, wanted, counts, sparsity, distribution)
        layers = tuple(
            LayerAllocation(
                name,
                shape,
                "custom" if name in custom else "sparse",
                densities[name],
                counts[name],
                name in transposed,
            )
            if name in sparse_shapes
            else LayerAllocation(name, shape, "dense", 1.0, math.prod(shape), name in transposed)
            for name, shape in shapes.items()
        )
        return cls(sparsity if masked else 0.0, distribution, float(power), layers, str(shape_of))

    def with_transposed(self, transposed: Collection[str]) -> AllocationPlan:
        """This plan with exactly the layers named in ``transposed`` read as ``[in, out]`` (the
        sparsifier's view of the model it masks; a plan built from shapes cannot know it)."""
        layers = tuple(
            dataclasses.replace(layer, transposed=layer.name in transposed) for layer in self.layers
        )
        return self if layers == self.layers else dataclasses.replace(self, layers=layers)

    # --------------------------------------------------------------------------- views
    @property
    def masked(self) -> tuple[LayerAllocation, ...]:
        """The tensors that get a mask (sparse and custom), in model order."""
        return tuple(layer for layer in self.layers if layer.role != "dense")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.masked]

    @property
    def output_layer(self) -> str | None:
        """The output layer, if it is masked: the model's last candidate in registration order (its
        rows are the classes or the vocabulary's logits); ``None`` when that layer is kept dense.
        SRigL never ablates its neurons and Chase never removes its channels."""
        output = self.layers[-1].name if self.layers else None
        return output if output in self.names else None

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
            "structure": self.structure,
            "layers": [
                {
                    "name": x.name,
                    "shape": list(x.shape),
                    "role": x.role,
                    "density": x.density,
                    "active": x.active,
                    "size": x.size,
                    "transposed": x.transposed,
                }
                for x in self.layers
            ],
        }

    def units(self) -> dict[str, str]:
        """Each masked layer's unit under :attr:`structure` (``2:4``, ``3x3 kernel``,
        ``4x4 block``, ``element`` with the reason where the structure does not divide it)."""
        structure = parse_structure(self.structure)
        return {x.name: structure.for_layer(x.shape, x.transposed).describe() for x in self.masked}

    def __str__(self) -> str:
        rows = [("layer", "shape", "role", "density", "active", "size")]
        units = self.units() if self.structure != "unstructured" else {}
        for x in self.layers:
            rows.append(
                (
                    x.name,
                    "x".join(map(str, x.shape)) + (" (in x out)" if x.transposed else ""),
                    x.role + (f", {units[x.name]}" if x.name in units else ""),
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
            f"power={self.power:g}"
            + (f", structure={self.structure!r})" if self.structure != "unstructured" else ")")
        ]
        for j, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row[:3], widths[:3], strict=True)]
            cells += [c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True)]
            lines.append("  ".join(cells).rstrip())
            if j in (0, len(rows) - 2):
                lines.append("-" * (sum(widths) + 10))
        lines.append("not listed (always dense, outside the budget): embeddings, norms, biases")
        return "\n".join(lines)
