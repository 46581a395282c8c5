"""Block masks on this CPU: one linear layer dense vs the export's BSR and CSR forms.

    OMP_NUM_THREADS=1 python benchmarks/bench_structured.py [--rounds 11] [--sparsity 0.9]
        [--blocks 4,16] [--batches 1,32]

Each row: a 4,096 → 4,096 or 3,072 → 768 layer (``[out, in]`` = 4,096 × 4,096 / 768 × 3,072)
whose mask is random ``B × B`` blocks at ``--sparsity``, fp32, one thread; the dense layer and the
exported one-layer graph modules (BSR: ``regrow.export.structured``; CSR) timed side by side,
medians of interleaved rounds (``regrow.export.timing``). The BSR kernel is PyTorch's (MKL) with
the input columns padded to a multiple of 16; ``bsr_unpadded`` (same arrays, no padding) shows
why the export pads.
"""

from __future__ import annotations

import argparse
import warnings
from functools import partial

import torch
from torch import nn

from regrow.export.csr import csr_arrays, replace_with_csr
from regrow.export.formats import one_layer, one_layer_in
from regrow.export.structured import replace_with_bsr
from regrow.export.timing import interleaved_seconds, median

LAYERS = ((4096, 4096), (768, 3072))  # (out, in)


def block_layer(out_features: int, in_features: int, b: int, sparsity: float) -> nn.Linear:
    """A linear layer (no bias) whose weight is on in random ``b × b`` blocks, ``1 - sparsity``
    of them."""
    generator = torch.Generator().manual_seed(b)
    layer = nn.Linear(in_features, out_features, bias=False)
    count = (out_features // b) * (in_features // b)
    on = torch.zeros(count, dtype=torch.bool)
    on[torch.randperm(count, generator=generator)[: round((1 - sparsity) * count)]] = True
    mask = on.reshape(out_features // b, in_features // b)
    mask = mask.repeat_interleave(b, 0).repeat_interleave(b, 1)
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer.eval()


def unpadded(layer: nn.Linear, b: int):
    """The BSR product without the padding of the input columns (for comparison only)."""
    crow, col, values = csr_arrays(layer.weight, b)
    size = tuple(layer.weight.shape)

    def run(x: torch.Tensor) -> torch.Tensor:
        weight = torch.sparse_bsr_tensor(crow, col, values, size, check_invariants=False)
        return torch.sparse.mm(weight, x.t()).t()

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--blocks", default="4,16")
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, fp32, sparsity {args.sparsity:g}, ms per call")
    print("| layer [out × in] | block | batch | dense | BSR | CSR | BSR unpadded | dense / BSR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for out_features, in_features in LAYERS:
        for b in (int(v) for v in args.blocks.split(",")):
            layer = block_layer(out_features, in_features, b, args.sparsity)
            dense, _ = one_layer(layer)
            bsr, csr = one_layer_in(layer, replace_with_bsr), one_layer_in(layer, replace_with_csr)
            raw = unpadded(layer, b)
            for rows in (int(v) for v in args.batches.split(",")):
                x = torch.randn(rows, in_features)
                calls = {
                    "dense": partial(dense, x),
                    "bsr": partial(bsr, x),
                    "csr": partial(csr, x),
                    "raw": partial(raw, x),
                }
                with torch.inference_mode():
                    seconds = interleaved_seconds(calls, rounds=args.rounds, max_block=200)
                ms = {name: median(values) * 1e3 for name, values in seconds.items()}
                print(
                    f"| {out_features} × {in_features} | {b} | {rows} | {ms['dense']:.3g} | "
                    f"{ms['bsr']:.3g} | {ms['csr']:.3g} | {ms['raw']:.3g} | "
                    f"{ms['dense'] / ms['bsr']:.2f}× |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
