"""SRigL: RigL with a constant fan-in and neuron ablation (Lasby et al., "Dynamic Sparse Training
with Structured Sparsity", ICLR 2024; SPEC §11).

A layer's weight is read as ``[out, fan_in]`` (a conv: out channels × ``c_in·k_h·k_w``); each row
is one output neuron. A linear weight stored ``[in, out]`` (Hugging Face's ``Conv1D``) is read
through its transpose: its neurons are its columns (:mod:`regrow.sparsity.layers`). Every active neuron has the same number ``k`` of active weights, so the
layer is a dense ``[out_active, k]`` block of values plus indices (a variant of N:M sparsity).

**Budget.** The distribution gives a layer ``C`` active weights; SRigL gives each of its ``out``
neurons ``k = round(C / out)`` (halves up), so the layer's budget is ``B = out · k``, within
``out / 2`` of ``C``. (The authors' reference code rounds down, ``C // out``; the nearest value
keeps the model's overall density at the requested one instead of always below it, which matters
for small layers.) :attr:`SRigL.plan`, ``target_counts`` and ``regrow flops`` use these budgets;
:meth:`SRigL.distribution_counts` gives ``C``. A layer with ``k = 0`` is refused. The initial masks pick
``k`` random positions in every row (seeded per layer).

**The update** (RigL's schedule: α, ΔT, T_end, cosine decay; on the update batch with its dense
gradient, or its mean over ``grad_accumulation`` batches, like RigL). With ``n`` active weights
and drop fraction ``f``, ``K = floor(f · n)``:

1. *Saliency* (``ablation=True``, :func:`salient_counts`). The weights RigL would keep (the
   ``n − K`` largest ``|w|`` of the active ones, over the layer) and the ``K`` largest ``|∇L|`` over the
   whole layer, active positions included, are salient: the union the reference's
   ``_get_neurons_to_ablate`` counts (a large gradient on a kept weight adds nothing, so the grown
   picks do not spill onto weak neurons as they would if drawn from the others only). A neuron with
   fewer than ``max(1, floor(γ_sal · k))`` salient weights (:func:`ablation_threshold`;
   ``min_salient_fraction``; ``k`` the layer's initial fan-in, as the reference's
   ``use_sparse_const_fan_in_for_ablation``, and rounded down as its code does) is ablated: its row
   is emptied. Ablation is decided anew at every update, so a neuron whose gradient becomes salient
   again comes back. At least ``ceil(B / fan_in)`` neurons stay active (the most salient), so that
   the fan-in fits in a row.
2. *Fan-in.* With ``a`` active neurons the fan-in is ``k' = B // a``: the layer holds
   ``a · k' <= B`` weights, its budget up to what a constant fan-in allows.
3. *Drop* the ``K`` smallest ``|w|`` over the layer (as RigL) and every weight of an ablated
   neuron; a row still holding more than ``k'`` keeps its ``k'`` largest ``|w|``.
4. *Grow* each active row back to exactly ``k'`` weights by the largest ``|∇L|`` among its
   positions not kept (the ones just dropped included). Ties: a seeded random order per row.

**First and last layers.** The stem stays dense through the plan's default (``dense_layers``:
RigL's convention, and ``keep_first_layer_dense=True`` in the reference README's ResNet-50
command); made sparse, it is treated as any hidden layer. The output layer (the model's last
candidate layer in registration order, whose neurons are the classes) is sparse with a constant
fan-in but never ablated (the reference skips neuron ablation for the last layer).

**Counts.** An update that leaves a layer's number of active neurons unchanged keeps its count
exactly (always so with ``ablation=False``: ``B``); one that ablates or revives neurons moves it
to ``a · (B // a)``, which equals ``B`` only when ``a`` divides it (at most ``a − 1`` below).
That is the base class's ``"fan_in"`` count rule, which it checks at every update; SRigL's
:meth:`~SRigL.validate_masks` adds the minimum of active neurons and the output layer.

Which neurons are ablated is a function of the masks alone (their empty rows), so
:func:`ablated_neurons` works on a checkpoint's ``sparsifier["masks"]`` as well.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from ..args import arg, in_range
from ..base import register
from ..gradient_growth import GradientGrowthArgs, GradientGrowthSparsifier
from ..layers import fan_in_shape, from_rows, rows_view
from ..plan import AllocationPlan
from ..selection import seeded_generator, topk_mask


@dataclass(frozen=True)
class SRigLArgs(GradientGrowthArgs):
    """RigL's arguments (α, ΔT, T_end, schedule, reinit, grad_accumulation) plus neuron
    ablation."""

    min_salient_fraction: float = arg(
        0.3,
        "γ_sal: a neuron with fewer salient weights than this fraction of the layer's constant "
        "fan-in is ablated (0.3: the reference's configs/config.yaml and README ResNet-50 run; "
        "its ViT config uses 0.95)",
        in_range(0, 1, low_open=True),
    )
    ablation: bool = arg(
        True, "ablate neurons with too few salient weights (false: constant fan-in only)"
    )

    def check(self) -> None:
        super().check()
        if self.redistribution != "none":
            raise ValueError(
                f"redistribution={self.redistribution!r} is not available for srigl: with a "
                "constant fan-in a layer's count is fixed by its neurons, so weights cannot move "
                "between layers. Allowed value: 'none'."
            )


def constant_fan_in_count(
    shape: tuple[int, ...], count: int, name: str = "", transposed: bool = False
) -> int:
    """The constant-fan-in count nearest ``count``: ``out · k`` with ``k = round(count / out)``
    (halves round up), so ``|out · k − count| <= out / 2``; ``transposed``: ``shape`` is
    ``[in, out]``."""
    out, _ = fan_in_shape(shape, transposed)
    fan_in = (2 * count + out) // (2 * out)
    if fan_in < 1:
        raise ValueError(
            f"layer {name or tuple(shape)} has {out} output neurons but only {count} active "
            "weights in the plan: a constant fan-in needs at least one weight per neuron. Lower "
            "the sparsity, use another distribution, or keep the layer dense (dense_layers)."
        )
    return out * fan_in


def constant_fan_in_plan(plan: AllocationPlan) -> AllocationPlan:
    """``plan`` with every masked layer's count rounded to the nearest constant fan-in."""
    layers = []
    for layer in plan.layers:
        if layer.role != "dense":
            active = constant_fan_in_count(layer.shape, layer.active, layer.name, layer.transposed)
            layer = dataclasses.replace(layer, active=active, density=active / layer.size)
        layers.append(layer)
    return dataclasses.replace(plan, layers=tuple(layers))


def ablation_threshold(min_salient_fraction: float, fan_in: int) -> int:
    """The fewest salient weights a neuron of constant fan-in ``k`` keeps to stay active:
    ``max(1, floor(γ_sal · k))``, rounded down as the SRigL reference computes it (at k = 7 and
    γ_sal = 0.3: 2, where comparing with the real 2.1 would ask for 3)."""
    return max(1, int(min_salient_fraction * fan_in))


def salient_counts(
    kept: torch.Tensor, scores: torch.Tensor, grow: int, generator: torch.Generator
) -> torch.Tensor:
    """Each row's salient weights (``kept``, ``scores``: ``[out, fan_in]``): the kept ones united
    with the ``grow`` highest ``scores`` over the whole layer, kept positions included, as the
    reference counts them (ties in ``generator``'s order)."""
    return (kept | topk_mask(scores, grow, generator)).sum(dim=1)


def ablated_neurons(
    masks: Mapping[str, torch.Tensor], transposed: Collection[str] = ()
) -> dict[str, list[int]]:
    """Each layer's ablated neurons: the rows of its mask (viewed as ``[out, fan_in]``; the
    columns of those named in ``transposed``, stored ``[in, out]``) with no active weight. Works on
    live masks and on a saved ``state_dict()["masks"]``."""
    return {
        name: torch.nonzero(~rows_view(mask, name in transposed).any(dim=1)).flatten().tolist()
        for name, mask in masks.items()
    }


def rowwise_topk(
    scores: torch.Tensor, counts: torch.Tensor, generator: torch.Generator, excluded: torch.Tensor
) -> torch.Tensor:
    """Boolean ``[rows, cols]`` mask of the ``counts[r]`` highest ``scores`` of each row ``r``,
    ``excluded`` never chosen (each row must have enough other positions). Compared in float32;
    exact ties are broken by an independent seeded random order per row."""
    rows, cols = scores.shape
    values = scores.detach().float().masked_fill(excluded, -math.inf)
    shuffle = torch.rand(rows, cols, generator=generator, device=values.device).argsort(dim=1)
    order = values.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
    take = torch.arange(cols, device=values.device).unsqueeze(0) < counts.unsqueeze(1)
    chosen = torch.zeros(rows, cols, dtype=torch.bool, device=values.device)
    return chosen.scatter_(1, shuffle.gather(1, order), take)


@register
class SRigL(GradientGrowthSparsifier):
    """RigL with a constant fan-in per neuron and neuron ablation (see the module docstring).

    Extra inspection: :meth:`ablated_neurons` (name → empty rows) and :meth:`fan_ins` (name → the
    constant fan-in of the layer's active neurons).
    """

    name = "srigl"
    # A constant fan-in is a structure of its own; units or N:M groups on top of it would leave
    # rows no count they could all hold (SPEC §19).
    structures = ("unstructured",)
    Args = SRigLArgs
    args: SRigLArgs

    # --------------------------------------------------------------- initial masks and budget
    @classmethod
    def adjust_plan(cls, plan: AllocationPlan) -> AllocationPlan:
        """Each layer's budget rounded to ``B = out · k`` (a constant fan-in ``k``); FLOPs are
        counted at these budgets too."""
        return constant_fan_in_plan(plan)

    @property
    def output_layer(self) -> str | None:
        """The layer whose neurons are never ablated: the model's last candidate (the classes)."""
        return self.plan.output_layer

    def initial_mask(self, param: torch.Tensor, count: int, name: str) -> torch.Tensor:
        """``count // out`` random positions in every row (``count`` is a multiple of ``out``)."""
        transposed = name in self._transposed
        out, fan_in = fan_in_shape(param.shape, transposed)
        generator = seeded_generator(self.seed, -1, name, param.device)
        scores = torch.rand(out, fan_in, generator=generator, device=param.device)
        counts = torch.full((out,), count // out, device=param.device)
        nothing = torch.zeros(out, fan_in, dtype=torch.bool, device=param.device)
        return from_rows(rowwise_topk(scores, counts, generator, nothing), param.shape, transposed)

    # -------------------------------------------------------------------------- the update
    def distribution_counts(self) -> dict[str, int]:
        """The distribution's active count of each layer, before rounding to a constant fan-in."""
        return self.distribution_plan.active_counts()

    def min_active_neurons(self, name: str) -> int:
        """The fewest active neurons whose fan-in ``B // a`` still fits in a row."""
        _, fan_in = fan_in_shape(self.masks[name].shape, name in self._transposed)
        return max(1, math.ceil(self.target_counts[name] / fan_in))

    def masks_from_gradients(
        self, step: int, grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        fraction = self.drop_fraction(step)
        new = []
        for i, (name, p) in enumerate(zip(self.names, self.params, strict=True)):
            mask, active = self.masks[name], self._active[i]
            drop = math.floor(fraction * active)
            generator = seeded_generator(self.seed, step, "drop/" + name, p.device)
            kept = self.rows(name, topk_mask(p.abs(), active - drop, generator, excluded=~mask))
            scores = self.rows(name, self.grow_scores(step, i, grads[i]))
            alive = self._surviving_neurons(step, name, kept, scores, drop)
            fan = self.target_counts[name] // int(alive.sum())
            kept &= alive.unsqueeze(1)
            generator = seeded_generator(self.seed, step, "cap/" + name, p.device)
            limit = torch.clamp(kept.sum(dim=1), max=fan)
            kept = rowwise_topk(self.rows(name, p.detach().abs()), limit, generator, ~kept)
            generator = seeded_generator(self.seed, step, "grow/" + name, p.device)
            missing = torch.where(alive, fan - kept.sum(dim=1), 0)
            grown = kept | rowwise_topk(scores, missing, generator, kept)
            new.append(from_rows(grown, p.shape, name in self._transposed))
        return new

    def _surviving_neurons(
        self, step: int, name: str, kept: torch.Tensor, scores: torch.Tensor, grow: int
    ) -> torch.Tensor:
        """Bool ``[out]``: the neurons that stay (or become) active in this update."""
        out = kept.shape[0]
        if not self.args.ablation or name == self.output_layer:
            return torch.ones(out, dtype=torch.bool, device=kept.device)
        generator = seeded_generator(self.seed, step, "salient/" + name, kept.device)
        salient = salient_counts(kept, scores, grow, generator)
        threshold = ablation_threshold(
            self.args.min_salient_fraction, self.target_counts[name] // out
        )
        alive = salient >= threshold
        fewest = self.min_active_neurons(name)
        if int(alive.sum()) < fewest:  # keep the most salient neurons, ties in a seeded order
            generator = seeded_generator(self.seed, step, "neurons/" + name, kept.device)
            shuffle = torch.randperm(out, generator=generator, device=kept.device)
            best = shuffle[salient[shuffle].argsort(descending=True, stable=True)[:fewest]]
            alive = torch.zeros_like(alive).index_fill_(0, best, True)
        return alive

    # ------------------------------------------------------------------------ the contract
    def count_rule(self) -> str | None:
        return "fan_in"

    def validate_masks(self, new: list[torch.Tensor]) -> None:
        """Beyond the constant fan-in the base class checks: at least :meth:`min_active_neurons`
        rows active, none ablated in the output layer or with ``ablation=False``."""
        for name, mask in zip(self.names, new, strict=True):
            rows = self.rows(name, mask)
            neurons = int(rows.any(dim=1).sum())
            problem = None
            if neurons < self.min_active_neurons(name):
                problem = f"only {neurons} active neurons"
            elif neurons != rows.shape[0] and name == self.output_layer:
                problem = "ablated neurons in the output layer"
            elif neurons != rows.shape[0] and not self.args.ablation:
                problem = "ablated neurons with ablation=False"
            if problem:
                raise RuntimeError(
                    f"{type(self).__name__} broke its structure in {name}: {problem}."
                )

    # -------------------------------------------------------------------------- inspection
    def ablated_neurons(self) -> dict[str, list[int]]:
        """Each sparse layer's ablated neurons (row indices of its weight; column indices of one
        stored ``[in, out]``), from the masks."""
        return ablated_neurons(self.masks, self._transposed)

    def fan_ins(self) -> dict[str, int]:
        """Each sparse layer's constant fan-in: the active weights of each of its active rows."""
        result = {}
        for name, mask in self.masks.items():
            rows = self.rows(name, mask).sum(dim=1)
            result[name] = int(rows.max()) if rows.numel() else 0
        return result
