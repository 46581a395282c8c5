"""Is a sparse model faster for real? The export's targets on this CPU, in one table.

    python benchmarks/bench_inference.py [--threads 1,2] [--rounds 15] [--out runs/bench_inference]
        [--lm-runs RUN_90 RUN_95] [--wrn-run RUN] [--skip-layers] [--skip-lm] [--skip-wrn]
        [--skip-digits]

Cases (fp32; each row's columns measured side by side in one process, medians of interleaved
rounds, :mod:`regrow.export.bench`):

- **layer**: one SRigL-like layer (random constant fan-in) at batch 1, 4,096 → 4,096 at 90 % and
  95 % and 3,072 → 768 at 90 %: dense (eager) against the exported layer in each form (CSR eager,
  condensed under ``torch.compile``).
- **decode**: a language model's one-token decode step with its key/value cache (context half
  its block; at batch 32 also a sixteenth, where the cache's reads no longer rival the
  weights'), the fastest dense step (compiled or eager; the model's written-out attention or
  PyTorch's fused kernel) vs exported, at batch 1 under ``torch.compile``, at batch 32 eager
  (where CSR and the embedding bag, which do not compile, are the sparse forms that pay), per
  thread count. ``--lm-runs`` names SRigL runs of the ``charlm_large`` preset (made by
  ``regrow train --preset charlm_large`` with ``sparsity.method=srigl``; the speed depends on the
  masks' structure, not on the training, so a short run serves); without it the CPU preset's
  model ``char_gpt`` with random SRigL masks stands in.
- **wrn**: WRN-22-2 trained with SRigL (``--wrn-run``; neuron ablation is what the export removes)
  at batch 1, eager; without it random SRigL masks (no ablation).
- **digits**: the quickstart MLP trained with SRigL at 90 % (trained here, a few seconds), batch
  32, eager.

Every case also gives its compressed checkpoint's size against the dense fp32 weights.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from regrow.export import export_model, load_run, random_masked_model, size_report
from regrow.export.bench import measure, measure_calls, measure_decode, three_models
from regrow.export.condensed import pack_rows, replace_with_packed
from regrow.export.csr import replace_with_csr
from regrow.export.decode import TIMED_CONTEXT
from regrow.export.formats import one_layer, one_layer_in
from regrow.models.transformer import CausalAttention

SHORT_CONTEXT = 1 / 16
"""The batch-32 decode step's second context, a fraction of the block (16 of charlm_large's 256)."""

ROWS: list[dict[str, Any]] = []


def record(case: str, threads: int, batch: int, dense_ms: float, ms: float, **extra: Any) -> None:
    row = {"case": case, "threads": threads, "batch": batch, "dense_ms": dense_ms, "ms": ms}
    ROWS.append({**row, "speedup": dense_ms / ms, **extra})
    print(f"  {case}: dense {dense_ms:.4g} ms, exported {ms:.4g} ms ({dense_ms / ms:.2f}x)")


def constant_fan_in_layer(out_features: int, in_features: int, density: float) -> nn.Linear:
    """A linear layer whose every row holds ``round(density · in)`` random weights."""
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=False)
    k = max(1, round(density * in_features))
    scores = torch.rand(out_features, in_features, generator=generator)
    keep = torch.zeros(out_features, in_features, dtype=torch.bool)
    keep.scatter_(1, scores.topk(k, dim=1).indices, True)
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer.eval()


def layer_cases(threads: int, rounds: int) -> None:
    for out_features, in_features, density in (
        (4096, 4096, 0.1),
        (4096, 4096, 0.05),
        (768, 3072, 0.1),
    ):
        layer = constant_fan_in_layer(out_features, in_features, density)
        x = torch.randn(1, in_features)
        dense, _ = one_layer(layer)
        csr = one_layer_in(layer, replace_with_csr)
        packed = one_layer_in(layer, partial(replace_with_packed, packed=pack_rows(layer.weight)))
        runs = {"dense": dense, "csr": csr, "condensed": torch.compile(packed, dynamic=False)}
        calls = {name: partial(run, x) for name, run in runs.items()}
        timings = {t.name: t for t in measure_calls(calls, 1, rounds=rounds)}
        name = f"layer {in_features}→{out_features} at {1 - density:.0%}"
        base = timings["dense"].median_ms
        record(f"{name}, condensed compiled", threads, 1, base, timings["condensed"].median_ms)
        record(f"{name}, CSR", threads, 1, base, timings["csr"].median_ms)
        weights = layer.weight.numel() * 4
        stored = int((layer.weight != 0).sum()) * (4 + 2)  # values and uint16 indices
        ROWS[-2]["size_ratio"] = stored / weights


def decode_cases(masked: Any, label: str, threads: int, rounds: int) -> None:
    torch.set_num_threads(threads)
    sizes = size_report(masked.model.state_dict())
    for batch in (1, 32):
        start = time.perf_counter()
        # One token per sample: at batch 1 a matrix-vector product, where the condensed form
        # compiled pays; at batch 32 a small matrix product, where eager CSR does.
        compiled = batch == 1
        # The forward graph is timed on 16 tokens per sample (its own choice; a whole block at
        # batch 32 would take minutes per timed call here); the decode step on one.
        exported, report = export_model(
            masked.model, (16,), batch, "auto", rounds=3, compiled=compiled
        )
        forms = sorted(set(report.sparse_layers(decoding=True).values())) or ["none"]
        print(f"  ({label}: exported at batch {batch} in {time.perf_counter() - start:.0f} s; "
              f"decode forms {', '.join(forms)})", flush=True)  # fmt: skip
        models = three_models(masked.model, exported)
        del models["masked"]
        models["dense (SDPA)"] = with_fused_attention(models["dense"])
        # At batch 32 the cache holds as many bytes as the dense weights at half the context:
        # its reads, the same for both models, bound the speed-up, so the step is also timed
        # with a short context (SHORT_CONTEXT), where the layers are most of the step.
        for context in (TIMED_CONTEXT,) if batch == 1 else (TIMED_CONTEXT, SHORT_CONTEXT):
            timings = measure_decode(models, batch, rounds, compiled=compiled, context=context)
            timings = {t.name: t for t in timings}
            # Against the fastest dense step: compiled or eager, with either attention.
            dense = [timings[name] for name in timings if name.startswith("dense")]
            timings["dense"] = min(dense, key=lambda t: t.median_ms)
            print(f"  (the fastest dense step: {timings['dense'].name})", flush=True)
            tokens = int(context * masked.model.block_size)
            record(
                f"{label} decode step, batch {batch}, context {tokens}"
                + (", compiled" if compiled else ", eager"),
                threads,
                batch,
                timings["dense"].median_ms,
                timings["exported"].median_ms,
                size_ratio=sizes["ratio"],
                forms="+".join(forms),
            )


class FusedAttention(CausalAttention):
    """The decode step's attention through ``F.scaled_dot_product_attention``. The model writes
    it out (faster in a sparse step here), but a dense step can be faster with the fused kernel
    (about 5–10 % compiled on this CPU): the benchmark takes the faster dense step of the two."""

    @staticmethod
    def cached_attention(
        q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)


def with_fused_attention(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose decode step's attention is :class:`FusedAttention`."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is CausalAttention:
            module.__class__ = FusedAttention
    return model


def eager_case(masked: Any, label: str, batch: int, threads: int, rounds: int) -> None:
    torch.set_num_threads(threads)
    exported, report = export_model(masked.model, masked.input_shape, batch, "auto", rounds=5)
    models = three_models(masked.model, exported)
    timings = {t.name: t for t in measure(models, masked.input_shape, batch, rounds=rounds)}
    removed = sum(report.removed_channels.values())
    forms = sorted(set(report.sparse_layers().values())) or ["none"]
    record(
        label,
        threads,
        batch,
        timings["dense"].median_ms,
        timings["exported"].median_ms,
        size_ratio=size_report(masked.model.state_dict())["ratio"],
        forms="+".join(forms),
        removed=removed,
    )


def train_digits(out: Path) -> Path:
    from regrow.train import RunDir, load_config, train

    run = out / "digits_srigl_90"
    if RunDir(run).state() != "done":
        overrides = [
            f"out_dir={run}",
            "sparsity.method=srigl",
            "sparsity.sparsity=0.9",
            "sparsity.args.delta_t=50",
        ]
        train(load_config("quickstart", overrides))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="runs/bench_inference", help="where trained runs go")
    parser.add_argument("--lm-runs", nargs="*", default=[], help="charlm_large SRigL runs")
    parser.add_argument("--wrn-run", default=None, help="a WRN-22-2 SRigL run")
    for case in ("layers", "lm", "wrn", "digits"):
        parser.add_argument(f"--skip-{case}", action="store_true")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available", flush=True)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s)", flush=True)
        if not args.skip_layers and threads == 1:
            layer_cases(threads, args.rounds)
        if not args.skip_lm:
            runs = [load_run(path) for path in args.lm_runs] or [
                random_masked_model("char_gpt", 0.9, method="srigl")
            ]
            for masked in runs:
                label = f"{masked.name} SRigL {masked.sparsity:.0%}"
                decode_cases(masked, label, threads, args.rounds)
        if not args.skip_wrn and threads == 1:
            if args.wrn_run:
                masked = load_run(args.wrn_run)
            else:
                masked = random_masked_model("wrn22_2", 0.9, method="srigl")
            eager_case(
                masked, f"WRN-22-2 SRigL {masked.sparsity:.0%} ({masked.source})", 1, 1, args.rounds
            )
        if not args.skip_digits and threads == 1:
            masked = load_run(train_digits(Path(args.out)))
            eager_case(masked, "digits MLP SRigL 90%, batch 32", 32, 1, args.rounds)
    print(
        "\n| case | threads | batch | dense ms | exported ms | speed-up | forms | removed | compressed/dense |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in ROWS:
        size = f"{row['size_ratio']:.3f}" if "size_ratio" in row else "—"
        print(
            f"| {row['case']} | {row['threads']} | {row['batch']} | {row['dense_ms']:.4g} | "
            f"{row['ms']:.4g} | {row['speedup']:.2f}× | {row.get('forms', '—')} | "
            f"{row.get('removed', '—')} | {size} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
