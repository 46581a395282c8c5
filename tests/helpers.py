"""Shared test helpers: tiny models, optimizers, replayable batches, the paper's layer shapes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)
    )


def gpt() -> nn.Module:
    """A tiny character-level GPT (vocabulary 11, 8 tokens, d_model 16, 1 block, 2 heads): query,
    key, value, out, fc and proj sparse, the head dense (its ``default_dense_layers``)."""
    from regrow.models.transformer import CharGPT

    torch.manual_seed(0)
    return CharGPT(11, block_size=8, d_model=16, layers=1, heads=2)


#: ``name → (build, shape of one sample, classes)``; for a model in ``TOKEN_MODELS`` the sample is
#: ``shape`` token ids below ``classes`` and its target one next token per position.
MODELS = {"conv": (conv_net, (3, 8, 8), 10), "gpt": (gpt, (8,), 11), "mlp": (mlp, (20,), 5)}
TOKEN_MODELS = frozenset({"gpt"})


def batch(model_name: str, index: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch depending only on its index (so runs can be replayed): ``[size,
    *shape]`` floats and ``[size]`` classes, or for a token model ``[size, T]`` token ids and
    ``[size, T]`` targets."""
    _, shape, classes = MODELS[model_name]
    generator = torch.Generator().manual_seed(1000 + index)
    if model_name in TOKEN_MODELS:
        x = torch.randint(0, classes, (size, *shape), generator=generator)
        y = torch.randint(0, classes, (size, *shape), generator=generator)
        return x, y
    x = torch.randn((size, *shape), generator=generator)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x, y


def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``model(x)`` against ``y``: over the last dimension's classes at every
    other position, so ``[B, C]`` logits with ``[B]`` targets and ``[B, T, V]`` logits with
    ``[B, T]`` targets alike."""
    logits = model(x)
    return nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=5e-4),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=5e-2),
}


def wrn22_2_shapes() -> dict[str, tuple[int, ...]]:
    """The sparse layers of WideResNet-22-2 (stem excluded; SPEC §8)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 16
    for g, width in enumerate((32, 64, 128)):
        for b in range(3):
            source = c_in if b == 0 else width
            shapes[f"g{g}.b{b}.conv1"] = (width, source, 3, 3)
            shapes[f"g{g}.b{b}.conv2"] = (width, width, 3, 3)
            if b == 0:
                shapes[f"g{g}.b{b}.shortcut"] = (width, source, 1, 1)
        c_in = width
    shapes["fc"] = (10, 128)
    return shapes


def resnet50_shapes(classes: int = 100) -> dict[str, tuple[int, ...]]:
    """The sparse layers of the bottleneck ResNet-50 [3, 4, 6, 3] (stem excluded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 64
    for s, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for b in range(blocks):
            source = c_in if b == 0 else 4 * width
            shapes[f"s{s}.b{b}.conv1"] = (width, source, 1, 1)
            shapes[f"s{s}.b{b}.conv2"] = (width, width, 3, 3)
            shapes[f"s{s}.b{b}.conv3"] = (4 * width, width, 1, 1)
            if b == 0:
                shapes[f"s{s}.b{b}.shortcut"] = (4 * width, source, 1, 1)
        c_in = 4 * width
    shapes["fc"] = (classes, 2048)
    return shapes


# ----------------------------------------------------- CIFAR files in the official layout
def fake_rows(count: int, seed: int) -> np.ndarray:
    """``count`` flat uint8 rows of 3072 values (R plane, G plane, B plane, each row-major)."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 3072), dtype=np.uint8)


def write_record(path: Path, record: dict, bytes_keys: bool) -> None:
    """Pickle ``record`` like the official Python 2 files (bytes keys, protocol 2) or like a
    Python 3 re-write (str keys, the default protocol)."""
    if bytes_keys:
        record = {key.encode(): value for key, value in record.items()}
    with path.open("wb") as handle:
        pickle.dump(record, handle, protocol=2 if bytes_keys else pickle.DEFAULT_PROTOCOL)


def write_cifar10(root: Path, per_batch: int = 3, test: int = 2, bytes_keys: bool = True) -> dict:
    """Write ``root/cifar-10-batches-py`` and return the rows and labels written, in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        count = test if name == "test_batch" else per_batch
        data = fake_rows(count, seed=index)
        targets = [(index * 7 + j) % 10 for j in range(count)]
        write_record(
            folder / name, {"batch_label": name, "data": data, "labels": targets}, bytes_keys
        )
        rows.append(data)
        labels.append(targets)
    return {
        "train_rows": np.concatenate(rows[:5]),
        "train_labels": [label for part in labels[:5] for label in part],
        "test_rows": rows[5],
        "test_labels": labels[5],
    }


def write_cifar100(root: Path, train: int = 6, test: int = 3, bytes_keys: bool = True) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, count, seed in (("train", train, 10), ("test", test, 11)):
        data = fake_rows(count, seed)
        fine = [(seed * 13 + 17 * j) % 100 for j in range(count)]
        coarse = [f // 5 for f in fine]
        record = {"data": data, "fine_labels": fine, "coarse_labels": coarse}
        write_record(folder / name, record, bytes_keys)
        written[name] = (data, fine, coarse)
    return written


def own_args(method: str, **values):
    """The subset of ``values`` that ``method`` has as arguments (a test drives every method
    with one set of settings; each method takes the ones it declares)."""
    import regrow

    names = regrow.get_method(method).Args.names()
    return {key: value for key, value in values.items() if key in names}


def saved_and_loaded(model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier) -> dict:
    """The training state as a checkpoint holds it: written with ``torch.save`` and read back with
    ``weights_only=True`` (keys ``model``, ``optimizer``, ``sparsifier``)."""
    import io

    buffer = io.BytesIO()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sparsifier": sparsifier.state_dict(),
    }
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier) -> None:
    """Load :func:`saved_and_loaded`'s state into a freshly built model, optimizer, sparsifier."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sparsifier.load_state_dict(state["sparsifier"])


def train_steps(model, optimizer, sparsifier, model_name: str, first: int, last: int, each=None):
    """Feed batches ``first .. last-1`` of ``model_name`` through the two-line loop
    (``if sparsifier.step(): optimizer.step()``); ``each(index)`` after every batch."""
    for index in range(first, last):
        x, y = batch(model_name, index)
        optimizer.zero_grad()
        loss(model, x, y).backward()
        if sparsifier.step():
            optimizer.step()
        if each is not None:
            each(index)
