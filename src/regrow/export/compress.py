"""The compressed checkpoint: a masked model's ``state_dict`` with its masks bit-packed and only the
active values of each sparse tensor stored, loadable back bit-exactly.

One file, written with ``torch.save`` and holding only dicts, lists, ints, strings and dense
tensors, so ``torch.load(path, weights_only=True)`` reads it without running any pickled code::

    {"format": "regrow-compressed-state-dict", "version": 1,
     "entries": {key: entry, ...}}          # the state_dict's keys, in its order

Each entry is one of

``{"kind": "bits", "shape": [...], "bits": uint8}``
    a ``bool`` tensor (every ``<param>_mask`` buffer), 8 elements a byte, most significant bit
    first (the layout of ``numpy.packbits``), row-major.
``{"kind": "masked", "mask": key, "values": 1-d tensor[, "negative_zeros": uint8]}``
    a tensor whose mask is the ``bits`` entry ``key``: ``values`` are its elements where the mask is
    set, row-major; every other element is zero. Masking multiplies by 0, which leaves ``-0.0``
    where a weight was negative; ``negative_zeros`` (only when there is one) packs, over the
    inactive positions, which zeros are negative, so the tensor comes back bit for bit
    (``zero_signs=False`` leaves it out: +0.0 everywhere, equal under ``torch.equal``, not bitwise).
``{"kind": "tensor", "tensor": tensor}``
    any other tensor as it is (biases, normalisation, a sparse layer's weight that is not zero
    everywhere its mask is off).

:func:`load_compressed` returns a ``state_dict`` equal to the original one tensor for tensor (dtype,
shape and every bit; masks included), ready for ``model.load_state_dict`` once the masks are
registered (:func:`regrow.sparsity.masks.register_masks`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..sparsity.masks import MASK_SUFFIX
from ..train.checkpoint import atomic_write

FORMAT = "regrow-compressed-state-dict"
VERSION = 1

_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """A ``bool`` tensor as ``uint8`` bytes, 8 elements a byte, most significant bit first
    (row-major, the last byte zero-padded): the layout of ``numpy.packbits``."""
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: a ``bool`` tensor of ``shape``."""
    count = 1
    for size in shape:
        count *= int(size)
    bits = (packed.reshape(-1, 1) >> _SHIFTS) & 1
    return bits.reshape(-1)[:count].to(torch.bool).reshape(tuple(shape))


def _masked_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Tensor key → its mask's key, for every ``<key>_mask`` bool buffer of the same shape."""
    pairs = {}
    for key, tensor in state.items():
        if key.endswith(MASK_SUFFIX) and tensor.dtype == torch.bool:
            target = key[: -len(MASK_SUFFIX)]
            if target in state and state[target].shape == tensor.shape:
                pairs[target] = key
    return pairs


def compress_state_dict(
    state: Mapping[str, torch.Tensor], zero_signs: bool = True
) -> dict[str, Any]:
    """The compressed form of ``state`` (see the module docstring), on the CPU.

    ``zero_signs=False`` leaves out which inactive zeros are ``-0.0`` (about one bit per inactive
    weight): they come back as ``+0.0``, equal under ``torch.equal`` and in every output, but not
    bit for bit."""
    pairs = _masked_pairs(state)
    entries: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state_dict entry {key!r} is a {type(tensor).__name__}, not a tensor")
        value = tensor.detach().cpu()
        if key in pairs:
            mask = state[pairs[key]].detach().cpu()
            entries[key] = _compress_masked(value, mask, pairs[key], zero_signs)
        elif value.dtype == torch.bool:
            entries[key] = {"kind": "bits", "shape": list(value.shape), "bits": pack_bits(value)}
        else:
            entries[key] = {"kind": "tensor", "tensor": value.clone()}
    return {"format": FORMAT, "version": VERSION, "entries": entries}


def _compress_masked(
    value: torch.Tensor, mask: torch.Tensor, mask_key: str, zero_signs: bool
) -> dict[str, Any]:
    inactive = value[~mask]
    if not bool((inactive == 0).all()):  # not zero where its mask is off: keep it whole
        return {"kind": "tensor", "tensor": value.clone()}
    entry: dict[str, Any] = {"kind": "masked", "mask": mask_key, "values": value[mask].clone()}
    if zero_signs and value.is_floating_point():
        negative = torch.signbit(inactive)
        if bool(negative.any()):
            entry["negative_zeros"] = pack_bits(negative)
    return entry


def decompress_state_dict(compressed: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` that :func:`compress_state_dict` compressed, bit for bit."""
    if not isinstance(compressed, Mapping) or compressed.get("format") != FORMAT:
        raise ValueError(
            "not a regrow compressed checkpoint (no format "
            f"{FORMAT!r}): write one with `regrow export RUN_DIR OUT`."
        )
    if compressed.get("version") != VERSION:
        raise ValueError(
            f"compressed checkpoint version {compressed.get('version')!r}: this regrow reads "
            f"version {VERSION}."
        )
    entries = compressed["entries"]
    bits: dict[str, torch.Tensor] = {}

    def mask_of(key: str) -> torch.Tensor:
        if key not in bits:
            entry = entries[key]
            bits[key] = unpack_bits(entry["bits"], entry["shape"])
        return bits[key]

    state: dict[str, torch.Tensor] = {}
    for key, entry in entries.items():
        kind = entry["kind"]
        if kind == "tensor":
            state[key] = entry["tensor"]
        elif kind == "bits":
            state[key] = mask_of(key)
        elif kind == "masked":
            mask = mask_of(entry["mask"])
            values = entry["values"]
            tensor = torch.zeros(mask.shape, dtype=values.dtype)
            tensor[mask] = values
            if "negative_zeros" in entry:
                inactive = torch.zeros(int((~mask).sum()), dtype=values.dtype)
                negative = unpack_bits(entry["negative_zeros"], inactive.shape)
                inactive[negative] = -0.0
                tensor[~mask] = inactive
            state[key] = tensor
        else:
            raise ValueError(f"compressed checkpoint entry {key!r} has unknown kind {kind!r}")
    return state


def save_compressed(
    state: Mapping[str, torch.Tensor], path: str | Path, zero_signs: bool = True
) -> int:
    """Write the compressed form of ``state`` to ``path`` (atomically); returns its size in bytes.
    ``zero_signs``: see :func:`compress_state_dict`."""
    data = serialized(compress_state_dict(state, zero_signs))
    atomic_write(Path(path), lambda handle: handle.write(data))
    return len(data)


def load_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` saved by :func:`save_compressed` (``regrow export``'s
    ``compressed.pt``), equal to the original one tensor for tensor, masks included."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed checkpoint at {path}")
    return decompress_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def serialized(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def dense_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's ``state_dict``: the mask buffers left out, floating tensors in fp32 (what
    a dense checkpoint of the same model holds)."""
    pairs = set(_masked_pairs(state).values())
    return {
        key: (t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu())
        for key, t in state.items()
        if key not in pairs
    }


def size_report(state: Mapping[str, torch.Tensor], zero_signs: bool = True) -> dict[str, Any]:
    """Bytes of the dense fp32 checkpoint (model weights only), of the compressed one, their
    ratio, and what the compressed one spends on active values, mask bits, the signs of zeros
    and dense tensors (payload only, before ``torch.save``'s framing)."""
    compressed = compress_state_dict(state, zero_signs)
    dense_bytes = len(serialized(dense_weights(state)))
    compressed_bytes = len(serialized(compressed))
    parts = {"active_values": 0, "mask_bits": 0, "negative_zero_bits": 0, "dense_tensors": 0}
    for entry in compressed["entries"].values():
        if entry["kind"] == "masked":
            parts["active_values"] += _nbytes(entry["values"])
            parts["negative_zero_bits"] += _nbytes(entry.get("negative_zeros"))
        elif entry["kind"] == "bits":
            parts["mask_bits"] += _nbytes(entry["bits"])
        else:
            parts["dense_tensors"] += _nbytes(entry["tensor"])
    return {
        "dense_bytes": dense_bytes,
        "compressed_bytes": compressed_bytes,
        "ratio": compressed_bytes / dense_bytes,
        "payload_bytes": parts,
    }


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
