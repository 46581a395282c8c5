"""The GPU measurements of the harness issue, as one script for a lent GPU (see GPU.md).

    # here, once: the stand-in travels in an ignored folder of the checkout
    mkdir -p .data && cp ../shared/data/cifar10_jpeg.npz ../shared/tools/make_cifar10.py .data/
    # on the GPU machine (device tool, carry [".data"]):
    python benchmarks/gpu_check.py --out $OUT --epochs 30

Writes the stand-in in the official layout (Pillow is on the GPU machines), then trains
WideResNet-22-2 on it (the cifar10_wrn22_2 preset, its schedule compressed to --epochs) with Dense,
Static and RigL at sparsity 0.8 (ERK), bf16 autocast and channels_last, and prints seconds per
epoch and test accuracy per method with the card's name. Report the data as "CIFAR-10 (JPEG q75
copy)", never as CIFAR-10. ``--limit-train``/``--epochs 1`` make a smoke run on a CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from regrow.train import RunDir, load_config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data-dir", default=".data")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", default="dense,static,rigl")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--limit-train", type=int, default=None)
    args = parser.parse_args()

    data = Path(args.data_dir)
    if not (data / "cifar-10-batches-py").is_dir():
        subprocess.run([sys.executable, str(data / "make_cifar10.py"), str(data)], check=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = []
    for method in args.methods.split(","):
        overrides = [
            f"data.root={data}",
            f"train.epochs={args.epochs}",
            f"sparsity.method={method}",
            f"sparsity.sparsity={args.sparsity}",
            "train.bf16=true",
            "train.channels_last=true",
            f"train.eval_every={args.epochs}",
            f"train.checkpoint_every={args.epochs}",
            "train.progress=false",
            f"out_dir={Path(args.out) / method}",
        ]
        if args.limit_train:
            overrides.append(f"data.limit_train={args.limit_train}")
        summary = train(load_config("cifar10_wrn22_2", overrides))
        metrics = RunDir(Path(args.out) / method).metrics()
        epoch_seconds = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(metrics)]
        rows.append(
            {
                "method": method,
                "first_epoch_seconds": metrics[0]["seconds"],
                "median_epoch_seconds": statistics.median(epoch_seconds) if epoch_seconds else None,
                "test_accuracy": summary["test_accuracy"],
                "train_flops_ratio": summary["train_flops_ratio"],
                "wall_seconds": summary["wall_seconds"],
            }
        )
    print(f"device: {device}; data: CIFAR-10 (JPEG q75 copy); WRN-22-2, {args.epochs} epochs")
    print("| method | s/epoch (median) | first epoch s | test acc % | train FLOPs | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        median = "-" if r["median_epoch_seconds"] is None else f"{r['median_epoch_seconds']:.2f}"
        print(
            f"| {r['method']} | {median} | {r['first_epoch_seconds']:.2f} | "
            f"{r['test_accuracy']:.2f} | {r['train_flops_ratio']:.3f}x | {r['wall_seconds']:.1f} |"
        )
    (Path(args.out) / "gpu_check.json").write_text(
        json.dumps({"device": device, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
