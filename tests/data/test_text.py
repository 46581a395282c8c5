"""The language-model text (regrow.data.text): where it comes from, how it is split and
windowed, that a resumed pass sees the same windows, and one clear line for a bad file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from regrow.data import TextDataError, load_dataset, load_text

TEXT = "the quick brown fox jumps over the lazy dog; " * 100


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_the_default_text_is_the_standard_library_help_recorded_by_length_and_hash() -> None:
    from pydoc_data.topics import topics

    expected = "".join(topics[key] for key in sorted(topics))
    data = load_text(None, block_size=32)
    assert data.source.path == "pydoc_data.topics"
    assert data.source.characters == len(expected)
    assert data.source.sha256 == hashlib.sha256(expected.encode()).hexdigest()
    assert data.vocabulary == "".join(sorted(set(expected)))
    assert data.describe()["vocabulary_size"] == data.num_classes == len(set(expected))


def test_splits_are_contiguous_90_5_5_and_decode_to_the_text(text_file: Path) -> None:
    data = load_dataset("text", path=text_file, block_size=8)
    assert data.source.path == str(text_file)
    assert data.input_shape == (8,) and data.has_validation and data.sequence
    whole = torch.cat([data.train, data.validation, data.test])
    assert "".join(data.vocabulary[i] for i in whole.tolist()) == TEXT
    assert len(data.train) == int(0.9 * len(TEXT))
    assert len(data.validation) == int(0.05 * len(TEXT))


def test_training_windows_are_next_character_pairs_from_the_training_split(text_file: Path) -> None:
    data = load_text(text_file, block_size=8)
    loader = data.train_loader(batch_size=4, seed=3)
    assert len(loader) == len(data.train) // (4 * 8)
    train = "".join(data.vocabulary[i] for i in data.train.tolist())
    for x, y in loader.batches(0):
        assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            window = "".join(data.vocabulary[i] for i in [*row_x, row_y[-1]])
            assert window in train


def test_windows_depend_on_seed_and_pass_only_so_a_resume_sees_the_same(text_file: Path) -> None:
    data = load_text(text_file, block_size=8)
    loader = data.train_loader(batch_size=4, seed=3)
    full = list(loader.batches(1))
    resumed = list(data.train_loader(batch_size=4, seed=3).batches(1, start_batch=5))
    assert len(resumed) == len(full) - 5
    for (a, _), (b, _) in zip(full[5:], resumed, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(full[0][0], next(loader.batches(2))[0])  # another pass
    assert not torch.equal(full[0][0], next(data.train_loader(4, seed=4).batches(1))[0])


def test_ranks_split_each_global_batch(text_file: Path) -> None:
    data = load_text(text_file, block_size=8)
    single = next(data.train_loader(batch_size=4, seed=0).batches(0))[0]
    shards = [
        next(data.train_loader(batch_size=2, seed=0, rank=r, world_size=2).batches(0))[0]
        for r in range(2)
    ]
    assert torch.equal(torch.cat(shards), single)


def test_evaluation_reads_every_window_of_the_split_once_in_order(text_file: Path) -> None:
    data = load_text(text_file, block_size=8)
    loader = data.eval_loader("validation", batch_size=5)
    xs = torch.cat([x for x, _ in loader.batches(0)])
    assert xs.shape[0] == (len(data.validation) - 8 - 1) // 8 + 1
    assert torch.equal(xs.flatten(), data.validation[: xs.numel()])  # contiguous, no overlap
    with pytest.raises(ValueError, match="split='dev' is unknown"):
        data.eval_loader("dev")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("dir", "is not a file"),
        (b"", "is empty"),
        (b"abc\xff\xfe def" * 500, "is not UTF-8 text"),
        (b"too short", "too few for data.block_size=8"),
    ],
)
def test_a_bad_text_file_is_one_line_naming_data_path(
    tmp_path: Path, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / "bad.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(TextDataError, match=message) as caught:
        load_text(path, block_size=8)
    assert str(caught.value).startswith(f"data.path={path}") and "\n" not in str(caught.value)


def test_the_shortest_accepted_text_leaves_two_windows_in_each_held_out_split(
    tmp_path: Path,
) -> None:
    path = tmp_path / "short.txt"
    path.write_text("ab" * 181)  # 362 characters: 5 % is 18 = 2 windows of 9
    data = load_text(path, block_size=8)
    assert len(data.test) >= 18 and len(list(data.eval_loader("test").batches(0))) == 1
    path.write_text("ab" * 179)
    with pytest.raises(TextDataError, match="at least 361 characters"):
        load_text(path, block_size=8)
