"""Structured masks (``sparsity.structure``, SPEC §19): which masks a layer may have, and the
selection that only produces such masks.

Structures (:func:`parse_structure`):

- ``unstructured``: any mask (the default; selection is :func:`~.selection.topk_mask` itself);
- ``N:M``: in every group of ``m`` consecutive weights along the input dimension at most ``n``
  are active (a conv's groups run along its input channels at each kernel position, as the
  sparse tensor cores read a ``[out, k_h·k_w·c_in]`` weight; a transposed linear's along its
  first dimension). Only while a layer holds more than ``n/m`` of its weights (a method that
  starts dense, before its schedule reaches the budget) the bound is the balanced one,
  ``⌈active / groups⌉`` per group, since no mask that dense satisfies ``n``;
- ``kernel``: a conv weight's ``k_h × k_w`` kernels (one per ``(out, in)`` pair) are all on or all
  off;
- ``block:B``: the ``B × B`` blocks of the weight's ``[out, fan_in]`` view (a conv's
  ``[out, in·k_h·k_w]``) are all on or all off.

A layer the structure does not divide (a linear layer or a 1×1 conv under ``kernel``, ``out`` or
``fan_in`` not a multiple of ``B``, an input dimension not a multiple of ``m``) is masked
element-wise and the plan says so; under ``N:M`` it still keeps at most ``n/m`` of its weights.

Invariant: :meth:`LayerStructure.select` returns only masks :meth:`LayerStructure.check` accepts,
and a unit structure's counts are whole units (:meth:`LayerStructure.round_count`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .layers import rows_view
from .selection import topk_mask

#: The forms ``structure`` takes; a method lists the families it supports (``Sparsifier.structures``).
STRUCTURES = ("unstructured", "N:M", "kernel", "block")
_FORMS = "'unstructured', 'N:M' with 1 <= N < M (e.g. '2:4'), 'kernel', 'block:B' with B >= 2"


@dataclass(frozen=True)
class Structure:
    """A parsed ``structure``: ``family`` is one of :data:`STRUCTURES`; ``n``, ``m`` for N:M,
    ``block`` for block:B."""

    family: str = "unstructured"
    n: int = 0
    m: int = 0
    block: int = 0

    def __str__(self) -> str:
        if self.family == "N:M":
            return f"{self.n}:{self.m}"
        if self.family == "block":
            return f"block:{self.block}"
        return self.family

    @property
    def max_density(self) -> float:
        """The densest a layer may be under this structure: ``n/m`` for N:M, else 1."""
        return self.n / self.m if self.family == "N:M" else 1.0

    def for_layer(self, shape: tuple[int, ...], transposed: bool = False) -> LayerStructure:
        """The structure of one weight of ``shape`` (``transposed``: stored ``[in, out]``)."""
        shape = tuple(int(d) for d in shape)
        unit, groups, reason = 1, 0, ""
        if self.family == "kernel":
            unit = math.prod(shape[2:]) if len(shape) > 2 else 1
            reason = "" if unit > 1 else ("not a conv" if len(shape) < 3 else "1x1 kernel")
        elif self.family == "block":
            out, fan_in = _out_fan_in(shape, transposed)
            b = self.block
            if out % b or fan_in % b:
                reason = f"{out}x{fan_in} not divisible into {b}x{b} blocks"
            else:
                unit = b * b
        elif self.family == "N:M":
            width = shape[1] if len(shape) > 2 else _out_fan_in(shape, transposed)[1]
            if width % self.m:
                reason = f"input dimension {width} not divisible by {self.m}"
            else:
                groups = math.prod(shape) // self.m
        return LayerStructure(self, shape, transposed, unit, groups, reason)


def parse_structure(text: str | Structure) -> Structure:
    """``text`` as a :class:`Structure`; one ``ValueError`` line naming it and the forms allowed."""
    if isinstance(text, Structure):
        return text
    value = str(text).strip().lower()
    if value in ("unstructured", "kernel"):
        return Structure(value)
    nm = re.fullmatch(r"(\d+):(\d+)", value)
    if nm and 1 <= int(nm[1]) < int(nm[2]):
        return Structure("N:M", n=int(nm[1]), m=int(nm[2]))
    block = re.fullmatch(r"block:(\d+)", value)
    if block and int(block[1]) >= 2:
        return Structure("block", block=int(block[1]))
    # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124.
    hint = (
        " (an unquoted N:M in YAML is read as a number: quote it, '2:4')" if value.isdigit() else ""
    )
    raise ValueError(f"structure={text!r} is not a structure: allowed forms are {_FORMS}{hint}.")


def _out_fan_in(shape: tuple[int, ...], transposed: bool) -> tuple[int, int]:
    if transposed:
        return shape[1], shape[0]
    return shape[0], math.prod(shape[1:])


@dataclass(frozen=True)
class LayerStructure:
    """One layer's structure: ``unit`` elements move together (1: element-wise); ``groups`` N:M
    groups of ``m`` (0: no group bound); ``reason`` why a structured layer is element-wise."""

    structure: Structure
    shape: tuple[int, ...]
    transposed: bool
    unit: int
    groups: int
    reason: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        """The layer's unit as the plan prints it: ``2:4``, ``3x3 kernel``, ``4x4 block``,
        ``element`` (with the reason when the structure asked for more)."""
        s = self.structure
        if self.groups:
            return str(s)
        if self.unit > 1:
            if s.family == "kernel":
                return "x".join(map(str, self.shape[2:])) + " kernel"
            return f"{s.block}x{s.block} block"
        return f"element ({self.reason})" if self.reason else "element"

    def units(self, device: torch.device) -> torch.Tensor:
        """``[units or groups, size]``: the flat positions of each unit (or N:M group)."""
        flat = torch.arange(self.numel, device=device).view(self.shape)
        if self.structure.family == "kernel":
            return flat.reshape(-1, self.unit)
        if self.structure.family == "N:M":
            rows = flat.movedim(1, -1) if len(self.shape) > 2 else rows_view(flat, self.transposed)
            return rows.reshape(-1, self.structure.m)
        b = self.structure.block
        rows = rows_view(flat, self.transposed)
        out, fan_in = rows.shape
        return rows.reshape(out // b, b, fan_in // b, b).permute(0, 2, 1, 3).reshape(-1, b * b)

    def max_count(self) -> int:
        """The most active weights the layer may hold at the structure's bound (N:M: ``n/m``)."""
        if self.structure.family == "N:M":
            return self.numel * self.structure.n // self.structure.m
        return self.numel

    def round_count(self, count: int) -> int:
        """``count`` rounded down to what the structure can hold exactly: whole units; under N:M
        above ``n/m`` (a dense start), whole multiples of the groups (the same count in each)."""
        if self.unit > 1:
            return count // self.unit * self.unit
        if self.groups and count > self.groups * self.structure.n:
            return count // self.groups * self.groups
        return count

    def group_bound(self, total: int) -> int:
        """The most active weights an N:M group may hold in a mask of ``total`` active weights."""
        return max(self.structure.n, -(-total // self.groups))

    def check(self, mask: torch.Tensor) -> bool:
        """Whether ``mask`` satisfies the structure (units all on or all off; N:M groups within
        :meth:`group_bound`)."""
        if self.unit == 1 and not self.groups:
            return True
        per_unit = mask.reshape(-1)[self.units(mask.device)].sum(dim=1)
        if self.groups:
            return bool((per_unit <= self.group_bound(int(per_unit.sum()))).all())
        return bool(((per_unit == 0) | (per_unit == self.unit)).all())

    def select(
        self,
        scores: torch.Tensor,
        count: int,
        generator: torch.Generator,
        excluded: torch.Tensor | None = None,
        occupied: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``count`` highest ``scores`` as a mask the structure allows, ``excluded`` never
        chosen (:func:`~.selection.topk_mask`'s seeded tie-breaking).

        Unit structures choose ``count // unit`` whole units by the **mean** score of their
        elements (within a layer the same ranking as the sum; the mean stays on the scale of one
        weight, so units of different sizes compare fairly and a drop by magnitude reads as the
        unit's L1 norm per weight); a unit with any excluded element is excluded. N:M chooses the
        best elements such that no group exceeds :meth:`group_bound` of the result, counting the
        ``occupied`` positions (those kept in a grow): the top ``bound − occupied`` of each group,
        then the global top ``count`` of those (the greedy choice, which is optimal for a bound
        per group). It returns fewer than ``count`` only where the groups have no more room.
        """
        if self.unit == 1 and not self.groups:
            return topk_mask(scores, count, generator, excluded)
        units = self.units(scores.device)
        flat = scores.detach().reshape(-1).float()
        if self.unit > 1:
            blocked = None if excluded is None else excluded.reshape(-1)[units].any(dim=1)
            chosen = topk_mask(flat[units].mean(dim=1), count // self.unit, generator, blocked)
            mask = torch.zeros(self.numel, dtype=torch.bool, device=scores.device)
            mask[units[chosen].reshape(-1)] = True
            return mask.view(scores.shape)
        return self._select_groups(flat, units, count, generator, excluded, occupied).view(
            scores.shape
        )

    def _select_groups(
        self,
        flat: torch.Tensor,
        groups: torch.Tensor,
        count: int,
        generator: torch.Generator,
        excluded: torch.Tensor | None,
        occupied: torch.Tensor | None,
    ) -> torch.Tensor:
        """N:M selection (see :meth:`select`) over the flat ``[groups, m]`` positions."""
        free = torch.ones_like(flat, dtype=torch.bool)
        if excluded is not None:
            free &= ~excluded.reshape(-1)
        taken = 0 if occupied is None else int(occupied.sum())
        room = torch.full((groups.shape[0],), self.group_bound(taken + count), device=flat.device)
        if occupied is not None:
            room -= occupied.reshape(-1)[groups].sum(dim=1)
        # Rank within each group by score, ties by a seeded permutation (free positions first).
        tiebreak = torch.randperm(flat.numel(), generator=generator, device=flat.device)
        grouped = torch.where(free, flat, -math.inf)[groups]
        by_tie = torch.argsort(tiebreak[groups], dim=1)
        order = by_tie.gather(1, torch.argsort(-grouped.gather(1, by_tie), dim=1, stable=True))
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=flat.device).expand_as(order)
        )
        candidate = torch.zeros_like(free)
        candidate[groups.reshape(-1)] = (rank < room.unsqueeze(1)).reshape(-1)
        candidate &= free
        return topk_mask(flat, min(count, int(candidate.sum())), generator, ~candidate)
