"""How far is each layer of an SRigL run from ablating a neuron? One table per drop fraction.

    python benchmarks/srigl_saliency_margin.py RUN_DIR [--data-root DIR] [--batch-size 128]
        [--drop-fractions 0.3,0.1]

SRigL ablates a neuron when fewer than ``max(1, floor(γ_sal · k))`` of its weights are salient
(docs/SPEC.md §11). This loads the run's checkpoint, takes the dense gradient of one training
batch (the first ``--batch-size`` images, not augmented, the model in training mode), and for
each drop fraction ``f`` counts, per neuron, the salient weights an update at ``f`` would see:
the ``n − floor(f · n)`` largest ``|w|`` of the active ones united with the ``floor(f · n)``
largest ``|∇L|`` over the whole layer. It prints, per layer, the neurons already ablated, the
threshold (``k``: the layer's budget over its neurons), the least salient active neuron's count,
their ratio (below 1: that neuron would go) and how many active neurons are under the threshold;
the output layer, never ablated, is left out. Image runs only (digits, CIFAR).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
import yaml

from regrow.data import DatasetSplits, load_dataset
from regrow.data.augment import normalize
from regrow.export.artifacts import load_run
from regrow.sparsity.layers import rows_view
from regrow.sparsity.methods.srigl import ablation_threshold, salient_counts
from regrow.sparsity.selection import topk_mask
from regrow.train.checkpoint import load_checkpoint
from regrow.train.rundir import RunDir


def fractions(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(not 0 <= value < 1 for value in values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give drop fractions in [0, 1), comma-separated"
        )
    return values


def dense_gradients(
    run_dir: str, root: str | None, batch_size: int
) -> tuple[dict, dict, dict, float]:
    """The run's parameters (their ``.grad``: one training batch's dense gradient), masks and
    budgets, by name, and the run's γ_sal."""
    masked = load_run(run_dir)
    saved = load_checkpoint(RunDir(run_dir).checkpoint_path)
    budgets = saved.get("sparsifier", {}).get("target_counts")
    if saved.get("sparsifier", {}).get("method") != "srigl" or not budgets:
        sys.exit(f"{run_dir}: not an SRigL run (sparsity.method=srigl)")
    config = yaml.safe_load(saved["config"]) or {}
    data_config = config.get("data", {})
    data = load_dataset(
        data_config.get("name", "cifar10"),
        root=root or data_config.get("root"),
        limit_train=batch_size,
    )
    if not isinstance(data, DatasetSplits):
        sys.exit(f"{run_dir}: a {data_config.get('name')} run; this script reads image runs only")
    torch.manual_seed(0)  # the model's dropout, if any: the same batch, the same gradient
    model = masked.model.train()
    images = normalize(data.train_x[:batch_size], data.mean, data.std)
    F.cross_entropy(model(images), data.train_y[:batch_size]).backward()
    params = dict(model.named_parameters())
    masks = {
        name[: -len("_mask")]: mask.bool()
        for name, mask in model.named_buffers()
        if name.endswith("_mask")
    }
    gamma = config.get("sparsity", {}).get("args", {}).get("min_salient_fraction", 0.3)
    return params, masks, budgets, float(gamma)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a regrow run directory of an SRigL run")
    parser.add_argument("--data-root", help="the dataset's folder (default: the run's data.root)")
    parser.add_argument("--batch-size", type=int, default=128, help="images in the batch")
    parser.add_argument("--drop-fractions", type=fractions, default=[0.3, 0.1])
    args = parser.parse_args()

    try:
        params, masks, budgets, gamma = dense_gradients(
            args.run_dir, args.data_root, args.batch_size
        )
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"srigl_saliency_margin.py: {error}")
    names = list(masks)[:-1]  # the output layer is never ablated
    generator = torch.Generator().manual_seed(0)
    for fraction in args.drop_fractions:
        print(f"\ndrop fraction {fraction}, γ_sal {gamma} (the run's)")
        print("| layer | neurons | ablated | k | threshold | least salient | ratio | under |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            weight, mask = params[name].detach(), masks[name]
            active = int(mask.sum())
            drop = math.floor(fraction * active)
            kept = topk_mask(weight.abs(), active - drop, generator, excluded=~mask)
            counts = salient_counts(
                rows_view(kept), rows_view(params[name].grad.abs()), drop, generator
            )
            alive = rows_view(mask).any(dim=1)
            fan_in = budgets[name] // weight.shape[0]
            threshold = ablation_threshold(gamma, fan_in)
            least = int(counts[alive].min())
            under = int((counts[alive] < threshold).sum())
            print(
                f"| {name} | {weight.shape[0]} | {int((~alive).sum())} | {fan_in} | {threshold} "
                f"| {least} | {least / threshold:.2f} | {under} |"
            )


if __name__ == "__main__":
    main()
