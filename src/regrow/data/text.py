"""Character-level text for the language-model task: a UTF-8 file, or the standard library's text.

The default text is ``pydoc_data.topics`` (the help topics every Python installation ships: about
465,000 characters of English prose and code, 103 distinct characters on Python 3.11). It differs
between Python versions, so a run records the text's length and SHA-256 (:class:`TextSource`).

The vocabulary is the text's sorted distinct characters. The text is split contiguously: the first
90 % trains, the next 5 % validates, the last 5 % tests. A training batch is ``batch_size``
random windows of ``block_size + 1`` characters (inputs and next-character targets), their starts
drawn from a generator seeded by ``(seed, pass)`` alone, so a run resumed at pass ``e``, batch
``b`` sees exactly the windows an uninterrupted run would. Evaluation reads the split once, in
order, in non-overlapping windows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .gpu import epoch_generator, split_of

__all__ = [
    "SPLIT_FRACTIONS",
    "TextData",
    "TextDataError",
    "TextLoader",
    "TextSource",
    "load_text",
    "read_text",
]

#: Train / validation / test fractions of the text, contiguous and in this order.
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
#: The default text (``data.path=null``).
STDLIB_TEXT = "pydoc_data.topics"


class TextDataError(ValueError):
    """A text file that cannot be trained on; one line naming ``data.path`` and what to do."""


@dataclass(frozen=True)
class TextSource:
    """Where the text came from, as a run records it."""

    path: str  #: the file, or ``pydoc_data.topics``
    characters: int
    sha256: str  #: of the UTF-8 encoding


def read_text(path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """The text and its source name: the file at ``path`` (UTF-8), or the standard library's."""
    if path is None:
        from pydoc_data.topics import topics

        return "".join(topics[key] for key in sorted(topics)), STDLIB_TEXT
    file = Path(path).expanduser()
    if not file.exists():
        raise TextDataError(f"data.path={path} does not exist: give a UTF-8 text file, or null.")
    if not file.is_file():
        raise TextDataError(f"data.path={path} is not a file: give a UTF-8 text file, or null.")
    try:
        return file.read_bytes().decode("utf-8"), str(file)
    except UnicodeDecodeError as error:
        raise TextDataError(
            f"data.path={path} is not UTF-8 text (byte {error.start} cannot be decoded): convert "
            "it to UTF-8, or give another file."
        ) from None


class TextLoader:
    """Batches ``(x, y)`` of ``[batch, block_size]`` token ids from one split on ``device``.

    Training (``shuffle=True``): each pass is ``len(loader)`` batches of random windows (starts
    from ``(seed, pass)``); rank ``r`` of ``world_size`` takes the ``r``-th ``batch_size`` of each
    global batch. Evaluation: every non-overlapping window of the split, in order, the last
    batch possibly smaller (each rank its share of the windows).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        block_size: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        batches_per_pass: int | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else tokens.device
        self.windows = tokens.to(self.device).unfold(0, block_size + 1, 1)  # a view: no copy
        self.block_size, self.batch_size, self.shuffle, self.seed = (
            block_size, batch_size, shuffle, seed,
        )  # fmt: skip
        self.rank, self.world_size = rank, world_size
        if shuffle:
            self.count = batches_per_pass or 1
        else:
            starts = torch.arange(0, self.windows.shape[0], block_size)
            self.eval_starts = starts[rank::world_size]
            self.count = -(-len(self.eval_starts) // batch_size)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return self.count

    def batches(
        self, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pass ``epoch``'s batches from ``start_batch`` on."""
        if self.shuffle:
            generator = epoch_generator(self.seed, epoch)
            starts = torch.randint(
                0, self.windows.shape[0], (self.count, self.global_batch_size), generator=generator
            )[:, self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        else:
            starts = self.eval_starts.split(self.batch_size)
        for index in range(start_batch, self.count):
            windows = self.windows[starts[index].to(self.device)]
            yield windows[:, :-1], windows[:, 1:]


@dataclass(frozen=True)
class TextData:
    """A text split for language modelling, with the interface the training loop uses.

    ``num_classes`` is the vocabulary size; ``input_shape`` one sample, ``(block_size,)`` token
    ids. ``batches_per_pass``: training batches per pass (an "epoch"), by default as many as
    cover the training split once: ``train characters // (global batch × block_size)``.
    """

    name: str
    vocabulary: str
    source: TextSource
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    block_size: int

    sequence = True  #: targets per position: losses are per character (bits per character)
    augment = False

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    @property
    def has_validation(self) -> bool:
        return True

    def model_options(self) -> dict[str, int]:
        """Keywords the model is built with (its longest context)."""
        return {"block_size": self.block_size}

    def describe(self) -> dict[str, Any]:
        """What a run records of its text (which differs between Python versions)."""
        source = self.source
        return {
            "text": source.path,
            "characters": source.characters,
            "sha256": source.sha256,
            "block_size": self.block_size,
            "vocabulary_size": self.num_classes,
        }

    def train_loader(
        self,
        batch_size: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        *,
        augment: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> TextLoader:
        del augment  # text has none
        per_pass = max(1, self.train.numel() // (batch_size * world_size * self.block_size))
        return TextLoader(
            self.train, self.block_size, batch_size, shuffle=True, seed=seed, device=device,
            rank=rank, world_size=world_size, batches_per_pass=per_pass,
        )  # fmt: skip

    def eval_loader(
        self,
        split: str = "test",
        batch_size: int = 64,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> TextLoader:
        splits = {"test": self.test, "validation": self.validation, "train": self.train}
        return TextLoader(
            split_of(splits, split), self.block_size, batch_size, shuffle=False, device=device,
            rank=rank, world_size=world_size,
        )  # fmt: skip

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text``; ``ValueError`` naming characters outside the vocabulary."""
        return encode(text, self.vocabulary)


def encode(text: str, vocabulary: str) -> torch.Tensor:
    """``text`` as int64 ids into ``vocabulary``; a ``ValueError`` names unknown characters."""
    index = {char: i for i, char in enumerate(vocabulary)}
    unknown = sorted(set(text) - index.keys())
    if unknown:
        raise ValueError(
            f"characters {''.join(unknown)!r} are not in the vocabulary of "
            f"{len(vocabulary)} characters the model was trained on: use only those."
        )
    return torch.tensor([index[char] for char in text], dtype=torch.long)


def load_text(path: str | os.PathLike[str] | None, block_size: int) -> TextData:
    """The text at ``path`` (``None``: ``pydoc_data.topics``), encoded and split 90 / 5 / 5.

    A file that does not exist, is not UTF-8, is empty, or whose smallest split would not hold
    two windows of ``block_size + 1`` characters is a :class:`TextDataError`.
    """
    if block_size < 1:
        raise TextDataError(f"data.block_size={block_size} is out of range: allowed are >= 1.")
    text, name = read_text(path)
    if not text:
        raise TextDataError(f"data.path={path} is empty: give a UTF-8 text file with content.")
    needed = 2 * (block_size + 1) / min(SPLIT_FRACTIONS)
    if len(text) < needed:
        raise TextDataError(
            f"data.path={path} holds {len(text)} characters, too few for data.block_size="
            f"{block_size}: the 5 % validation and test splits need two windows of "
            f"{block_size + 1} each, so at least {int(needed) + 1} characters; lower "
            "data.block_size or give a longer text."
        )
    vocabulary = "".join(sorted(set(text)))
    tokens = encode(text, vocabulary)
    train_end = int(len(text) * SPLIT_FRACTIONS[0])
    val_end = train_end + int(len(text) * SPLIT_FRACTIONS[1])
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextData(
        name="text",
        vocabulary=vocabulary,
        source=TextSource(name, len(text), digest),
        train=tokens[:train_end],
        validation=tokens[train_end:val_end],
        test=tokens[val_end:],
        block_size=block_size,
    )
