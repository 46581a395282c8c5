"""The GPU measurements of the fast-path issue, as one script for a lent GPU (see GPU.md).

    # here, once: the stand-in travels in an ignored folder of the checkout
    mkdir -p .data && cp ../shared/data/cifar10_jpeg.npz ../shared/tools/make_cifar10.py .data/
    # on the GPU machine (device tool, carry [".data"], timeout_s 540):
    python benchmarks/gpu_check.py --out $OUT

Writes the CIFAR-10 stand-in in the official layout (Pillow is on the GPU machines) and, from the
same images with their 10 labels, a CIFAR-100-shaped copy for ResNet-50's timing. Then, each
configuration in its own try (a failure is a row, not the end of the script):

1. **Speed**: WRN-22-2 (``cifar10_wrn22_2``) and ResNet-50 (``cifar100_resnet50``), Dense and RigL
   at S = 0.8 (ERK), eager and ``train.compile=true``, the device's default settings (bf16,
   channels-last, fused SGD; CUDA graphs when compiled). After a warm-up (compilation, RigL's
   update at step 0, the first optimizer step) the harness's own ``train_step`` runs
   ``--steps`` batches of the device-resident, augmented training data — two RigL mask updates
   at ΔT = 100 among them — and one evaluation pass of the test split is timed after a warm one.
   Seconds per epoch = the median step time × the steps of 50,000 images at batch 128 (390);
   evaluation seconds are for 10,000 images.
2. **Accuracy**: RigL on WRN-22-2 trained ``--accuracy-epochs`` epochs by ``regrow.train.train``
   (its schedule compressed to them), eager and compiled, the same seed: test accuracy of each.

Prints a table per part with the card's name and writes ``gpu_check.json`` to ``--out``. Report
the data as "CIFAR-10 (JPEG q75 copy)", never as CIFAR-10 (ResNet-50 trains on a 100-class
layout of it: timing only). ``--steps 10 --warmup 3 --accuracy-epochs 1 --limit-train 512
--delta-t 2`` is a smoke run on a CPU (``--models ''`` skips the speed part).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regrow.train import RunDir, load_config, train
from regrow.train.distributed import Context
from regrow.train.loop import build, evaluate_splits, train_step

#: Steps of one epoch of 50,000 images at batch 128 (the last partial batch dropped).
EPOCH_STEPS = 50_000 // 128
MODELS = {"wrn22_2": "cifar10_wrn22_2", "resnet50": "cifar100_resnet50"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_data(data: Path) -> None:
    """The CIFAR-10 stand-in, and a CIFAR-100-shaped copy of it (the same 10 labels)."""
    if not (data / "cifar-10-batches-py").is_dir():
        subprocess.run([sys.executable, str(data / "make_cifar10.py"), str(data)], check=True)
    target = data / "cifar-100-python"
    if target.is_dir():
        return
    source = data / "cifar-10-batches-py"
    target.mkdir()

    def read(name: str) -> dict[Any, Any]:
        with open(source / name, "rb") as handle:
            return pickle.load(handle, encoding="bytes")

    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in splits.items():
        records = [read(name) for name in names]
        images = np.concatenate([r[b"data"] for r in records])
        labels = [int(v) for r in records for v in r[b"labels"]]
        with open(target / split, "wb") as handle:
            pickle.dump({b"data": images, b"fine_labels": labels}, handle)


def stream(loader: Any) -> Any:
    """The training batches, pass after pass."""
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def overrides(args: argparse.Namespace, method: str, compiled: bool, out: Path) -> list[str]:
    items = [
        f"data.root={args.data_dir}",
        f"sparsity.method={method}",
        f"sparsity.sparsity={args.sparsity}",
        *([f"sparsity.args.delta_t={args.delta_t}"] if method != "dense" else []),
        f"train.compile={str(compiled).lower()}",
        "train.progress=false",
        f"out_dir={out}",
    ]
    if args.limit_train:
        items.append(f"data.limit_train={args.limit_train}")
    return items


def measure_speed(
    args: argparse.Namespace, model: str, method: str, compiled: bool, device: torch.device
) -> dict[str, Any]:
    """Seconds per epoch of training (from the median of timed blocks) and of evaluation."""
    out = Path(args.out) / "speed" / f"{model}_{method}_{'compiled' if compiled else 'eager'}"
    config = load_config(MODELS[model], overrides(args, method, compiled, out))
    run = build(config, Context(), device, RunDir(out))
    batches = stream(run.loader)
    started = time.perf_counter()
    for _ in range(args.warmup):  # compilation, the update at step 0, the first optimizer step
        train_step(run, *next(batches))
    sync(device)
    warmup_seconds = time.perf_counter() - started
    blocks = []
    block = max(1, args.steps // 5)
    for _ in range(args.steps // block):
        sync(device)
        start = time.perf_counter()
        for _ in range(block):
            train_step(run, *next(batches))
        sync(device)
        blocks.append((time.perf_counter() - start) / block)
    evaluate_splits(run)  # warm
    sync(device)
    start = time.perf_counter()
    accuracy = evaluate_splits(run)["test_accuracy"]
    sync(device)
    return {
        "model": model,
        "method": method,
        "mode": "compiled" if compiled else "eager",
        "step_ms": 1e3 * statistics.median(blocks),
        "train_seconds_per_epoch": statistics.median(blocks) * EPOCH_STEPS,
        "eval_seconds": time.perf_counter() - start,
        "warmup_seconds": warmup_seconds,
        "last_update_step": run.sparsifier.last_update_step,
        "test_accuracy_after": accuracy,
        "settings": run.settings.as_dict(),
    }


def measure_accuracy(
    args: argparse.Namespace, compiled: bool, device: torch.device
) -> dict[str, Any]:
    """A short RigL run on WRN-22-2 (the preset's schedule compressed to the epochs)."""
    mode = "compiled" if compiled else "eager"
    out = Path(args.out) / "accuracy" / mode
    items = overrides(args, "rigl", compiled, out)
    epochs = args.accuracy_epochs
    items += [f"train.epochs={epochs}", f"train.eval_every={epochs}", "seed=0"]
    items += [f"train.checkpoint_every={epochs}"]
    summary = train(load_config("cifar10_wrn22_2", items))
    return {
        "mode": mode,
        "epochs": epochs,
        "test_accuracy": summary["test_accuracy"],
        "wall_seconds": summary["wall_seconds"],
        "seconds_per_epoch": summary["wall_seconds"] / epochs,
    }


def guarded(work: Any, *details: Any) -> dict[str, Any]:
    try:
        return work()
    except Exception as error:  # a failed configuration is a row of the report
        return {"error": f"{type(error).__name__}: {error}".splitlines()[0],
                "details": [str(d) for d in details],
                "traceback": traceback.format_exc()[-3000:]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-dir", default=".data")
    parser.add_argument("--models", default="wrn22_2,resnet50")
    parser.add_argument("--methods", default="dense,rigl")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--delta-t", type=int, default=100, help="RigL's ΔT")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--accuracy-epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    prepare_data(Path(args.data_dir))
    results: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "speed": [],
        "accuracy": [],
    }
    report = Path(args.out) / "gpu_check.json"

    def save() -> None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(results, indent=2))

    for model in filter(None, args.models.split(",")):
        for method in args.methods.split(","):
            for compiled in (False, True):
                row = guarded(
                    lambda m=model, k=method, c=compiled: measure_speed(args, m, k, c, device),
                    model, method, compiled,
                )  # fmt: skip
                results["speed"].append({"model": model, "method": method, **row})
                print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
                save()
    if not args.skip_accuracy:
        for compiled in (False, True):
            row = guarded(lambda c=compiled: measure_accuracy(args, c, device), compiled)
            results["accuracy"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
            save()

    print(f"\ndevice: {name}; torch {torch.__version__}; data: CIFAR-10 (JPEG q75 copy)")
    print("| model | method | mode | step ms | train s/epoch | eval s | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    for r in results["speed"]:
        if "error" in r:
            print(f"| {r['model']} | {r['method']} | - | error: {r['error'][:80]} | | | |")
            continue
        print(
            f"| {r['model']} | {r['method']} | {r['mode']} | {r['step_ms']:.2f} | "
            f"{r['train_seconds_per_epoch']:.2f} | {r['eval_seconds']:.2f} | "
            f"{r['warmup_seconds']:.1f} |"
        )
    if results["accuracy"]:
        print("\n| RigL WRN-22-2 short run | epochs | test acc % | s/epoch (incl. eval, compile) |")
        print("|---|---|---|---|")
        for r in results["accuracy"]:
            if "error" in r:
                print(f"| error: {r['error'][:80]} | | | |")
                continue
            print(
                f"| {r['mode']} | {r['epochs']} | {r['test_accuracy']:.2f} | "
                f"{r['seconds_per_epoch']:.2f} |"
            )


if __name__ == "__main__":
    main()
