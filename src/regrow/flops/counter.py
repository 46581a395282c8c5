"""Inference FLOPs by the MicroNet conventions the RigL paper uses (SPEC §7).

Only convolutions and linear layers are counted (a linear layer stored ``[in, out]``, Hugging
Face's ``Conv1D``, is a linear layer: :mod:`regrow.sparsity.layers`). Each layer's geometry (weight shape, output size)
is measured from the model itself: one forward pass with hooks on the meta device (no memory, no
arithmetic), or, where a model cannot run on the meta device, on a single all-zero sample. There is
no table of layers per model.

Per layer, with ``d`` its density, ``fan_in = (c_in / groups) · k_h · k_w`` (``in`` for a linear
layer) and ``n_out`` its number of output elements per sample (``c_out · H_out · W_out``; ``out``)::

    FLOPs = 2 · d · fan_in · n_out + n_out

i.e. conv ``2·d·k_h·k_w·(c_in/groups)·c_out·H_out·W_out + H_out·W_out·c_out``, linear
``2·d·in·out + out``.

Where the ``+ n_out`` term comes from (the one interpretation choice; SPEC §7 "bias/ReLU as the
paper's counter adds"): the RigL code counts every conv and dense layer as a MicroNet op with
``use_bias=True`` and ``activation='relu'`` (``rigl/sparse_utils.py: get_stats``), whose counter
(``micronet_challenge/counting.py``) charges a sparse dot product of ``v = d · fan_in`` terms as
``v`` multiplies and ``v − 1`` adds, plus 1 add for the bias and 1 for the ReLU, per output element:
``2v + 1``. So here the term is added once per output element of *every* conv and linear layer,
whether or not the layer really has a bias or is followed by a ReLU, and it does not scale with the
density. Batch norm, pooling, residual adds and softmax cost nothing.

Weightless matmuls (attention's q kᵀ and its product with v) are counted where a module says what
they are (a ``flop_matmuls(inputs, output)`` method returning ``(label, fan_in, outputs)`` rows:
:class:`regrow.models.transformer.ScaledDotProduct`): ``2 · fan_in · outputs``, always dense,
without the ``+ n_out`` term (no bias, no activation). Embedding lookups and layer norms are free;
a model whose input is token ids says so with ``input_dtype = torch.long``, or the caller with
``input_dtype=torch.long``; a model whose input meets an embedding first is traced with token ids
(a Hugging Face model takes its ``input_ids`` as first argument). Output sizes are the layers'
real ones; for the registered models they equal MicroNet's "same"-padding sizes.

With this, dense WRN-22-2 on 32×32 costs 3.159e8 FLOPs and dense ResNet-50 on 224×224 8.20e9, the
paper's reference points (3.16e8, 8.2e9).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..sparsity.distributions import Densities, HasDensities, resolve_densities
from ..sparsity.layers import (
    fan_in_shape,
    input_meets_embedding_first,
    is_linear,
    is_transposed_linear,
)

__all__ = [
    "COUNTED_MODULES",
    "FlopProfile",
    "FlopReport",
    "HasDensities",
    "LayerFlops",
    "LayerGeometry",
    "count_flops",
    "profile_model",
    "resolve_densities",
]

#: Module types whose forward pass is counted (their weight is the layer's sparse tensor); linear
#: layers stored ``[in, out]`` (``Conv1D``) are recognised by duck typing and counted too.
COUNTED_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerGeometry:
    """What the FLOP count of one conv/linear layer depends on, measured in a forward pass.

    ``name`` is the FQN of the layer's weight (the key of its density), ``fan_in`` the number of
    weights each output element reads when dense, ``outputs`` the output elements per sample
    (summed over calls if the module runs more than once).
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    fan_in: int
    outputs: int

    def flops(self, density: float = 1.0) -> float:
        """``2 · density · fan_in · outputs + outputs`` (MicroNet, see the module docstring); a
        weightless matmul ``2 · fan_in · outputs`` (dense, no bias or activation)."""
        if self.kind == "matmul":
            return 2.0 * self.fan_in * self.outputs
        return self.outputs * (2.0 * density * self.fan_in + 1.0)


@dataclass(frozen=True)
class LayerFlops:
    """One row of a :class:`FlopReport`."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    density: float
    flops: float
    dense_flops: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.weight_shape),
            "output_shape": list(self.output_shape),
            "density": self.density,
            "flops": self.flops,
            "dense_flops": self.dense_flops,
        }


@dataclass(frozen=True)
class FlopReport:
    """Per-layer and total inference FLOPs (per sample) at given densities, and the dense total."""

    layers: tuple[LayerFlops, ...]
    inference_flops: float
    dense_inference_flops: float

    @property
    def inference_ratio(self) -> float:
        """Inference FLOPs as a multiple of the dense model's."""
        return self.inference_flops / self.dense_inference_flops

    def as_dict(self) -> dict[str, Any]:
        return {
            "dense_inference_flops": self.dense_inference_flops,
            "inference_flops": self.inference_flops,
            "inference_ratio": self.inference_ratio,
            "layers": [layer.as_dict() for layer in self.layers],
        }

    def table(self, totals: bool = True) -> str:
        """A printable per-layer table, followed by the totals unless ``totals=False``."""
        rows = [("layer", "shape", "density", "FLOPs", "dense FLOPs")]
        for layer in self.layers:
            rows.append(
                (
                    layer.name,
                    "x".join(map(str, layer.weight_shape)),
                    f"{layer.density:.4f}",
                    f"{layer.flops:.4e}",
                    f"{layer.dense_flops:.4e}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        if totals:
            lines.append(
                f"inference FLOPs: {self.inference_flops:.4e} ({self.inference_ratio:.4f}x dense)"
            )
            lines.append(f"dense inference FLOPs: {self.dense_inference_flops:.4e}")
        return "\n".join(lines)


@dataclass(frozen=True)
class FlopProfile:
    """The measured geometry of a model's conv/linear layers; counts FLOPs at any densities.

    Build one with :func:`profile_model` (one forward pass), then call :meth:`report` or
    :meth:`inference_flops` as often as needed (pure arithmetic).
    """

    input_shape: tuple[int, ...]
    layers: tuple[LayerGeometry, ...]
    parameter_names: frozenset[str] = field(default_factory=frozenset)

    @property
    def dense_flops(self) -> float:
        """Inference FLOPs of the dense model, per sample."""
        return sum(layer.flops(1.0) for layer in self.layers)

    def _densities(self, densities: Densities) -> dict[str, float]:
        values = resolve_densities(densities)
        counted = {layer.name for layer in self.layers}
        unknown = sorted(
            name for name in values if name not in counted and name not in self.parameter_names
        )
        if unknown:
            raise ValueError(
                f"densities name {unknown}, which are not parameters of the model; "
                f"counted layers are: {sorted(counted)}."
            )
        return values

    def inference_flops(self, densities: Densities = None) -> float:
        """Inference FLOPs per sample; a layer missing from ``densities`` is dense.

        Densities of parameters that are not conv/linear weights (an embedding, say) are accepted
        and cost nothing, as in MicroNet.
        """
        values = self._densities(densities)
        return sum(layer.flops(values.get(layer.name, 1.0)) for layer in self.layers)

    def report(self, densities: Densities = None) -> FlopReport:
        """Per-layer FLOPs at ``densities`` (a layer missing from them is dense)."""
        values = self._densities(densities)
        rows = tuple(
            LayerFlops(
                name=layer.name,
                kind=layer.kind,
                weight_shape=layer.weight_shape,
                output_shape=layer.output_shape,
                density=values.get(layer.name, 1.0),
                flops=layer.flops(values.get(layer.name, 1.0)),
                dense_flops=layer.flops(1.0),
            )
            for layer in self.layers
        )
        return FlopReport(
            layers=rows,
            inference_flops=sum(row.flops for row in rows),
            dense_inference_flops=sum(row.dense_flops for row in rows),
        )


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(
            f"input_shape={tuple(input_shape)!r}: give the shape of one sample without the batch "
            "dimension, every size >= 1 (e.g. (3, 32, 32))."
        )
    return shape


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the trace (no dropout, no BN statistics update); restores every flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _sample_dtypes(model: nn.Module, given: torch.dtype | None = None) -> list[torch.dtype]:
    """The dtypes to trace with, in turn: ``given``; else a model's ``input_dtype`` if it declares
    one (token ids: ``torch.long``); else its parameters' float type, after ``torch.long`` when the
    input meets an embedding first (a Hugging Face language model: token ids)."""
    if given is not None:
        if not isinstance(given, torch.dtype):
            raise ValueError(
                f"input_dtype={given!r} is not a torch.dtype: allowed values are None (the "
                "model's own input_dtype, else found from the model) or a dtype such as "
                "torch.long (token ids)."
            )
        return [given]
    declared = getattr(model, "input_dtype", None)
    if isinstance(declared, torch.dtype):
        return [declared]
    first = next(iter(model.parameters()), None)
    floating = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return [torch.long, floating] if input_meets_embedding_first(model) else [floating]


def _counted(module: nn.Module) -> bool:
    """A conv/linear layer with a weight (a ``Conv1D`` included), or a module that says which
    weightless matmuls it computes (``flop_matmuls``)."""
    if hasattr(module, "flop_matmuls"):
        return True
    counted = isinstance(module, COUNTED_MODULES) or is_transposed_linear(module)
    return counted and getattr(module, "weight", None) is not None


def _trace(
    model: nn.Module, shape: tuple[int, ...], on_meta: bool, dtype: torch.dtype
) -> dict[str, list[Any]]:
    """Run one sample through ``model``; record each counted module's output sizes, and each
    weightless matmul module's ``flop_matmuls`` rows."""
    records: dict[str, list[Any]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if hasattr(module, "flop_matmuls"):
                for label, fan_in, outputs in module.flop_matmuls(inputs, output):
                    records.setdefault(f"{name}.{label}", []).append((fan_in, outputs))
            elif isinstance(output, torch.Tensor):
                records.setdefault(name, []).append(tuple(output.shape))

        return record

    modules = [(name, module) for name, module in model.named_modules() if _counted(module)]
    handles = [module.register_forward_hook(hook(name)) for name, module in modules]
    first = next(iter(model.parameters()), None)
    try:
        with _eval_mode(model), torch.no_grad():
            if on_meta:
                state = {
                    name: torch.empty_like(t, device="meta")
                    for name, t in [*model.named_parameters(), *model.named_buffers()]
                }
                sample = torch.zeros((1, *shape), dtype=dtype, device="meta")
                torch.func.functional_call(model, state, (sample,))
            else:
                device = first.device if first is not None else torch.device("cpu")
                model(torch.zeros((1, *shape), dtype=dtype, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return records


def _records(
    model: nn.Module, shape: tuple[int, ...], device: str, dtype: torch.dtype
) -> dict[str, list[Any]]:
    """:func:`_trace` on the meta device, else (a data-dependent op) on the model's own device;
    ``ValueError`` when the model does not run on the sample."""
    on_meta_model = any(p.is_meta for p in model.parameters())
    try:
        if device == "meta" or on_meta_model:
            try:
                return _trace(model, shape, True, dtype)
            except (NotImplementedError, RuntimeError):
                if on_meta_model:
                    raise
        return _trace(model, shape, False, dtype)
    except (NotImplementedError, RuntimeError) as exc:
        hint = "" if dtype == torch.long else " (a model taking token ids: input_dtype=torch.long)"
        raise ValueError(
            f"the model does not run on one sample of input_shape={shape} and dtype {dtype}"
            f"{hint}: {exc}"
        ) from exc


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str = "meta",
    input_dtype: torch.dtype | None = None,
) -> FlopProfile:
    """Measure the geometry of every conv/linear layer ``model`` runs on one ``input_shape`` sample.

    ``device="meta"`` (default) traces with meta tensors swapped in for the parameters and buffers:
    the model is not copied, moved or modified, and nothing is computed. If the model cannot run
    on the meta device (a data-dependent op), it is traced once on its own device with an all-zero
    sample in eval mode under ``no_grad`` (``device="real"`` forces this). Training flags are
    restored; nothing else changes. The sample's dtype is ``input_dtype``, else the model's own
    ``input_dtype`` attribute, else token ids (``torch.long``) when the input meets an embedding
    first (a Hugging Face language model; then, should that fail, floats), else its parameters'
    float type.
    """
    shape = _check_input_shape(input_shape)
    dtypes = _sample_dtypes(model, input_dtype)
    if device not in ("meta", "real"):
        raise ValueError(f"device={device!r}: allowed values are 'meta', 'real'.")
    failure = None
    for dtype in dtypes:
        try:
            records = _records(model, shape, device, dtype)
            break
        except ValueError as exc:
            failure = failure or exc
    else:
        assert failure is not None
        raise failure
    layers = []
    named = dict(model.named_modules())
    for module_name, shapes in records.items():
        if module_name not in named:  # "<module>.<label>": a weightless matmul
            fan_in, _ = shapes[0]
            outputs = sum(count for _, count in shapes)
            layers.append(LayerGeometry(module_name, "matmul", (), (outputs,), fan_in, outputs))
            continue
        module = named[module_name]
        weight = module.weight
        outputs = sum(math.prod(s[1:]) for s in shapes)  # per sample: drop the batch of 1
        layers.append(
            LayerGeometry(
                name=f"{module_name}.weight" if module_name else "weight",
                kind="linear" if is_linear(module) else "conv",
                weight_shape=tuple(weight.shape),
                output_shape=tuple(shapes[0][1:]),
                fan_in=fan_in_shape(weight.shape, is_transposed_linear(module))[1],
                outputs=outputs,
            )
        )
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    layers.sort(key=lambda layer: order[layer.name.rpartition(".")[0]])  # stable: scores, mix
    return FlopProfile(
        input_shape=shape,
        layers=tuple(layers),
        parameter_names=frozenset(name for name, _ in model.named_parameters()),
    )


def count_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    densities: Densities = None,
    device: str = "meta",
    input_dtype: torch.dtype | None = None,
) -> FlopReport:
    """Per-layer and total inference FLOPs of ``model`` on one sample (SPEC §7, MicroNet rules).

    ``densities`` maps weight FQNs to densities (layers not named are dense), or is any object with
    a ``.densities()`` method, such as a sparsifier, whose live masks are then counted.
    ``input_dtype``: the dtype of the traced sample (:func:`profile_model`; ``torch.long`` for a
    model taking token ids that does not declare it). Example::

        report = count_flops(model, (3, 32, 32), sparsifier)
        report.inference_flops, report.dense_inference_flops, report.inference_ratio
        count_flops(gpt2, (128,), sparsifier, input_dtype=torch.long)  # Hugging Face: input_ids
    """
    return profile_model(model, input_shape, device, input_dtype).report(densities)
