"""The data layer: CIFAR reading/downloading on self-written official-layout files, validation
splits, batched augmentation, the device-resident loader, the embedded digits."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import socket
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regrow.data import (
    DATASETS,
    DeviceLoader,
    DownloadError,
    crop_flip,
    download_and_extract,
    draw_crop_flip,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    normalize,
    random_crop_flip,
    read_cifar_file,
    reflect_indices,
    split_train_validation,
)
from regrow.data import cifar as cifar_module
from tests.helpers import fake_rows, write_cifar10, write_cifar100, write_record

# ----------------------------------------------------------------------------------------------
# Fixture helpers: CIFAR files in the official layout, written by the test itself.
# ----------------------------------------------------------------------------------------------


def make_archive(source_root: Path, folder: str, destination: Path) -> str:
    """Pack ``source_root/folder`` into the tar.gz ``destination``; returns its md5."""
    with tarfile.open(destination, "w:gz") as tar:
        tar.add(source_root / folder, arcname=folder)
    return hashlib.md5(destination.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["py2-bytes-keys", "py3-str-keys"])
def test_cifar10_reader_layout_labels_and_counts(tmp_path, bytes_keys):
    written = write_cifar10(tmp_path, per_batch=3, test=2, bytes_keys=bytes_keys)
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)

    assert train_x.shape == (15, 3, 32, 32) and test_x.shape == (2, 3, 32, 32)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert train_y.tolist() == written["train_labels"]
    assert test_y.tolist() == written["test_labels"]
    rows = written["train_rows"]
    # Pixel (channel c, row r, column k) of image i is flat value c·1024 + r·32 + k.
    for i, c, r, k in [(0, 0, 0, 0), (4, 1, 5, 7), (14, 2, 31, 30), (7, 2, 0, 31)]:
        assert train_x[i, c, r, k].item() == rows[i, c * 1024 + r * 32 + k]
    assert torch.equal(
        test_x[1, 1], torch.from_numpy(written["test_rows"][1, 1024:2048]).view(32, 32)
    )


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["py2-bytes-keys", "py3-str-keys"])
def test_cifar100_reader_fine_and_coarse_labels(tmp_path, bytes_keys):
    written = write_cifar100(tmp_path, train=6, test=3, bytes_keys=bytes_keys)
    train_x, train_y, test_x, test_y = load_cifar100(tmp_path)
    data, fine, _ = written["train"]
    assert train_x.shape == (6, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    assert train_y.tolist() == fine and test_y.tolist() == written["test"][1]
    assert train_x[5, 2, 10, 3].item() == data[5, 2 * 1024 + 10 * 32 + 3]
    _, coarse_y, _, _ = load_cifar100(tmp_path, labels="coarse")
    assert coarse_y.tolist() == written["train"][2]


def test_missing_folder_without_download_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "download=True" in message and "data.root" in message
    assert not (tmp_path / "nowhere").exists()  # nothing created without download


def test_incomplete_folder_is_reported(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_reader_refuses_pickles_that_would_call_code(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        read_cifar_file(path)


def test_reader_accepts_arrays_pickled_by_numpy_1(tmp_path):
    """The official files name ``numpy.core.multiarray`` (NumPy 1.x), not ``numpy._core``."""
    data = fake_rows(2, seed=0)
    blob = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    (tmp_path / "test_batch").write_bytes(blob)
    images, labels = read_cifar_file(tmp_path / "test_batch")
    assert torch.equal(images.flatten(1), torch.from_numpy(data)) and labels.tolist() == [3, 4]


def test_reader_rejects_wrong_shape(tmp_path):
    path = tmp_path / "test_batch"
    write_record(path, {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, bytes_keys=True)
    with pytest.raises(ValueError, match=r"\[N, 3072\]"):
        read_cifar_file(path)


@pytest.mark.parametrize(
    ("bad", "shown"), [([10], "10"), ([-1], "-1"), ([3, 12, -5], "-5, 12")], ids=str
)
def test_labels_out_of_range_name_the_file_the_values_and_the_range(tmp_path, bad, shown):
    write_cifar10(tmp_path, per_batch=3)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    labels = [0] * (3 - len(bad)) + bad
    write_record(path, {"data": fake_rows(3, seed=0), "labels": labels}, bytes_keys=True)
    with pytest.raises(ValueError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: 'labels' holds") and shown in message
    assert "allowed values are 0 to 9 (10 classes)" in message and "\n" not in message


@pytest.mark.parametrize(("key", "label", "limit"), [("fine", 100, 99), ("coarse", 20, 19)])
def test_cifar100_label_ranges_follow_the_label_kind(tmp_path, key, label, limit):
    write_cifar100(tmp_path, train=2, test=1)
    path = tmp_path / "cifar-100-python" / "train"
    record = {"data": fake_rows(2, seed=0), "fine_labels": [1, 2], "coarse_labels": [0, 1]}
    record[f"{key}_labels"] = [label, 0]
    write_record(path, record, bytes_keys=False)
    with pytest.raises(
        ValueError, match=rf"'{key}_labels' holds 1 value\(s\) out of range \({label};"
    ):
        load_cifar100(tmp_path, labels=key)
    with pytest.raises(ValueError, match=f"0 to {limit}"):
        read_cifar_file(path, f"{key}_labels")
    assert read_cifar_file(path, f"{key}_labels", classes=label + 1)[1].tolist() == [label, 0]


def test_labels_must_be_integers(tmp_path):
    path = tmp_path / "test_batch"
    record = {"data": fake_rows(2, seed=0), "labels": np.array([0.5, 1.0])}
    write_record(path, record, bytes_keys=False)
    with pytest.raises(ValueError, match="'labels' must hold integers, got float64"):
        read_cifar_file(path)


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cifar10_archive(tmp_path):
    """A self-built cifar-10-python.tar.gz (outside the download root), its URL, md5, contents."""
    source = tmp_path / "source"
    written = write_cifar10(source)
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = make_archive(source, "cifar-10-batches-py", archive)
    return archive.as_uri(), md5, written


@pytest.fixture(params=["tarfile-filter", "own-checks"])
def extraction(request, monkeypatch):
    """Run a test with tarfile's ``data`` filter and with the member checks used where a Python
    release lacks it."""
    if request.param == "own-checks":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_download_extracts_and_reads(tmp_path, cifar10_archive, extraction):
    url, md5, written = cifar10_archive
    root = tmp_path / "root"
    folder = download_and_extract(url, md5, root, "cifar-10-batches-py")
    assert folder == root / "cifar-10-batches-py"
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]  # no temporaries left
    train_x, train_y, _, _ = load_cifar10(root)
    assert train_y.tolist() == written["train_labels"]
    assert train_x[3, 1, 2, 3].item() == written["train_rows"][3, 1024 + 2 * 32 + 3]


def test_load_with_download_true_uses_the_registered_archive(
    tmp_path, cifar10_archive, monkeypatch
):
    url, md5, written = cifar10_archive
    spec = dataclasses.replace(cifar_module.ARCHIVES["cifar10"], url=url, md5=md5)
    monkeypatch.setitem(cifar_module.ARCHIVES, "cifar10", spec)
    data = load_dataset("cifar10", root=tmp_path / "root", download=True)
    assert data.train_y.tolist() == written["train_labels"] and data.num_classes == 10
    # A second load finds the extracted folder and does not download again.
    monkeypatch.setitem(
        cifar_module.ARCHIVES, "cifar10", dataclasses.replace(spec, url="file:///gone")
    )
    assert load_dataset("cifar10", root=tmp_path / "root", download=True).train_x.shape[0] == 15


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path, cifar10_archive):
    url, md5, _ = cifar10_archive
    root = tmp_path / "root"
    wrong = "0" * 32
    with pytest.raises(ValueError) as info:
        download_and_extract(url, wrong, root, "cifar-10-batches-py")
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and wrong in message and md5 in message
    assert "run again" in message
    assert os.listdir(root) == []


def test_corrupt_or_wrong_archive_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(ValueError, match="could not extract"):
        download_and_extract(
            garbage.as_uri(), hashlib.md5(garbage.read_bytes()).hexdigest(), root, "x"
        )
    assert os.listdir(root) == []

    source = tmp_path / "src"
    (source / "other").mkdir(parents=True)
    (source / "other" / "f").write_text("hi")
    archive = tmp_path / "other.tar.gz"
    md5 = make_archive(source, "other", archive)
    with pytest.raises(ValueError, match="does not contain the folder cifar-10-batches-py"):
        download_and_extract(archive.as_uri(), md5, root, "cifar-10-batches-py")
    assert os.listdir(root) == []


def test_archive_members_cannot_escape_the_root(tmp_path, extraction):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    root = tmp_path / "root"
    with pytest.raises(ValueError):
        download_and_extract(
            archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest(), root, "x"
        )
    assert not (tmp_path / "escaped.txt").exists()
    assert os.listdir(root) == []


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
         "Temporary failure in name resolution"),
        (urllib.error.HTTPError("u", 404, "Not Found", None, None), "HTTP 404 Not Found"),
        (TimeoutError("timed out"), "timed out"),
    ],
    ids=["no-dns", "http-404", "timeout"],
)  # fmt: skip
def test_a_failed_download_says_where_to_put_the_archive(tmp_path, monkeypatch, failure, reason):
    def offline(url, *args, **kwargs):
        raise failure

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    url = "https://example.invalid/cifar-10-python.tar.gz"  # never contacted: urlopen is patched
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as info:
        download_and_extract(url, "0" * 32, root, "cifar-10-batches-py")
    message = str(info.value)
    assert isinstance(info.value, OSError) and "\n" not in message
    assert message.startswith(f"could not download cifar-10-python.tar.gz from {url} ({reason})")
    assert f"put it in {root}" in message
    assert f"so {root / 'cifar-10-batches-py'} exists" in message
    assert os.listdir(root) == []  # the partial file is gone


def test_a_missing_local_file_url_is_a_download_error_too(tmp_path):
    url = (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri()
    with pytest.raises(DownloadError, match=r"could not download cifar-10-python\.tar\.gz"):
        download_and_extract(url, "0" * 32, tmp_path / "root", "cifar-10-batches-py")


def test_an_archive_placed_by_hand_is_checked_and_extracted(tmp_path, cifar10_archive, monkeypatch):
    """What the download error says to do works: the archive in the root is used, no network."""
    url, md5, written = cifar10_archive
    root = tmp_path / "root"
    root.mkdir()
    placed = root / "cifar-10-python.tar.gz"
    placed.write_bytes(Path(url.removeprefix("file://")).read_bytes())

    def no_network(*args, **kwargs):
        raise AssertionError("nothing should be downloaded")

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", no_network)
    spec = dataclasses.replace(cifar_module.ARCHIVES["cifar10"], md5="f" * 32)
    monkeypatch.setitem(cifar_module.ARCHIVES, "cifar10", spec)
    with pytest.raises(ValueError) as info:  # not the official archive: said so, and kept
        load_cifar10(root)
    assert f"{placed} has md5 {md5}, expected {'f' * 32}" in str(info.value)
    assert spec.url in str(info.value)
    assert sorted(os.listdir(root)) == ["cifar-10-python.tar.gz"]

    monkeypatch.setitem(cifar_module.ARCHIVES, "cifar10", dataclasses.replace(spec, md5=md5))
    _, train_y, _, _ = load_cifar10(root)  # download=False: the placed archive is enough
    assert train_y.tolist() == written["train_labels"]
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_missing_folder_message_names_the_archive_to_place(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere")
    assert f"put cifar-10-python.tar.gz in {tmp_path / 'nowhere'}" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Splits and the registry
# ----------------------------------------------------------------------------------------------


def test_validation_split_sizes_determinism_and_disjointness():
    images = torch.arange(50).view(50, 1).expand(50, 4).clone()
    labels = torch.arange(50)
    train_x, train_y, val_x, val_y = split_train_validation(images, labels, 5, seed=3)
    assert train_x.shape == (45, 4) and val_x.shape == (5, 4)
    assert torch.equal(train_x[:, 0], train_y) and torch.equal(val_x[:, 0], val_y)  # pairs kept
    assert set(train_y.tolist()).isdisjoint(val_y.tolist())
    assert sorted(train_y.tolist() + val_y.tolist()) == list(range(50))
    assert torch.equal(split_train_validation(images, labels, 5, seed=3)[3], val_y)
    assert not torch.equal(split_train_validation(images, labels, 5, seed=4)[3], val_y)
    assert torch.all(train_y[1:] > train_y[:-1])  # original order kept
    with pytest.raises(ValueError, match="validation_size"):
        split_train_validation(images, labels, 50, seed=0)


def test_load_dataset_validation_and_limit(tmp_path):
    write_cifar10(tmp_path, per_batch=10, test=4)
    data = load_dataset("cifar10", root=tmp_path, validation_size=5, limit_train=30, seed=1)
    assert data.train_x.shape == (30, 3, 32, 32) and data.val_x.shape == (5, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and data.augment and len(data.mean) == 3
    full = load_dataset("cifar10", root=tmp_path, validation_size=5, seed=1)
    assert torch.equal(full.val_y, data.val_y)  # the validation set does not depend on the limit
    assert torch.equal(full.train_x[:30], data.train_x)
    assert load_dataset("cifar10", root=tmp_path).val_x is None


def test_load_dataset_errors_are_worded_in_config_keys(tmp_path):
    write_cifar10(tmp_path, per_batch=2, test=1)
    with pytest.raises(ValueError, match=r"data.validation_size=10 is out of range for cifar10: "
                       r"allowed values are 0 <= x < 10"):  # fmt: skip
        load_dataset("cifar10", root=tmp_path, validation_size=10)
    with pytest.raises(ValueError, match=r"data.limit_train=0"):
        load_dataset("cifar10", root=tmp_path, limit_train=0)
    data = load_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError) as info:
        data.train_loader(batch_size=11)
    message = str(info.value)
    assert message.startswith(
        "train.batch_size=11 is larger than the 10 training images of cifar10: lower "
        "train.batch_size to at most 10"
    )
    assert "drop_last" not in message
    with pytest.raises(ValueError, match=r"train.batch_size=4 × 3 processes = 12 is larger"):
        data.train_loader(batch_size=4, world_size=3)
    assert len(data.train_loader(batch_size=10)) == 1
    assert len(data.train_loader(batch_size=11, drop_last=False)) == 1
    with pytest.raises(ValueError, match=r"set data\.validation_size > 0"):
        data.eval_loader("validation")


def test_unknown_dataset_lists_the_registry():
    assert set(DATASETS) == {"cifar10", "cifar100", "digits", "text"}
    with pytest.raises(ValueError, match="cifar10, cifar100, digits"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


def test_reflect_indices_match_a_hand_computed_pad_and_f_pad():
    assert reflect_indices(4, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    padded = F.pad(image, (2, 2, 2, 2), mode="reflect")
    assert padded[0, 0, 0].tolist() == [10.0, 9.0, 8.0, 9.0, 10.0, 11.0, 10.0, 9.0]
    index = reflect_indices(4, 2)
    assert torch.equal(image[0, 0][index][:, index], padded[0, 0])
    with pytest.raises(ValueError, match="padding"):
        reflect_indices(4, 4)


def test_crop_at_each_offset_is_the_window_of_the_reflect_padded_image():
    image = torch.arange(2 * 6 * 6, dtype=torch.uint8).view(1, 2, 6, 6)
    padded = F.pad(image.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for dy in range(5):
        for dx in range(5):
            out = crop_flip(image, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([False]), 2)
            assert torch.equal(out, padded[:, :, dy : dy + 6, dx : dx + 6])
    # Known values: offset (0, 0) starts at the mirrored pixel (2, 2) of channel 0 (= 2·6 + 2).
    out = crop_flip(image, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), 2)
    assert out[0, 0, 0, :3].tolist() == [14, 13, 12]


def test_centre_crop_is_identity_and_flip_mirrors():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    centre = torch.full((3,), 4)
    same = crop_flip(images, centre, centre, torch.tensor([False, False, False]), 4)
    assert torch.equal(same, images)
    flipped = crop_flip(images, centre, centre, torch.tensor([True, False, True]), 4)
    assert torch.equal(flipped[0], images[0].flip(-1)) and torch.equal(
        flipped[2], images[2].flip(-1)
    )
    assert torch.equal(flipped[1], images[1])
    row = torch.arange(8, dtype=torch.float32).expand(1, 1, 8, 8)
    assert crop_flip(row, torch.tensor([4]), torch.tensor([4]), torch.tensor([True]))[0, 0, 0].tolist() == [
        7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0
    ]  # fmt: skip


def reference_crop_flip(images, offset_y, offset_x, flipped, padding):
    """Per-image loop with F.pad: the obvious implementation, to check the batched one against."""
    out = []
    for image, dy, dx, flip in zip(images, offset_y, offset_x, flipped, strict=True):
        padded = F.pad(image[None].double(), (padding,) * 4, mode="reflect")[0]
        crop = padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).to(images.dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_random_crop_flip_matches_per_image_reference_and_is_seeded(dtype):
    images = torch.randint(0, 256, (64, 3, 32, 32)).to(dtype)
    out = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == dtype
    params = draw_crop_flip(64, torch.Generator().manual_seed(5))
    assert torch.equal(out, reference_crop_flip(images, *params, padding=4))
    assert params[2].any() and not params[2].all()  # some flipped, some not
    assert set(params[0].tolist()) <= set(range(9)) and len(set(params[0].tolist())) > 3
    assert torch.equal(out, random_crop_flip(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, random_crop_flip(images, torch.Generator().manual_seed(6)))
    no_flip = draw_crop_flip(64, torch.Generator().manual_seed(5), flip=False)
    assert not no_flip[2].any()


def test_normalize_uint8_and_float():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.5, 0.25, 0.2), (0.5, 0.25, 0.1)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    expected = torch.tensor([(0.0 - 0.5) / 0.5, (1.0 - 0.25) / 0.25, (0.2 - 0.2) / 0.1])
    torch.testing.assert_close(out[1, :, 1, 0], expected)
    torch.testing.assert_close(normalize(images), images.float() / 255)
    floats = torch.rand(4, 64)
    assert torch.equal(normalize(floats), floats)
    with pytest.raises(ValueError, match="per channel"):
        normalize(images, (0.5,), (0.5,))


# ----------------------------------------------------------------------------------------------
# The device loader
# ----------------------------------------------------------------------------------------------


def make_loader(**kwargs) -> DeviceLoader:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 8, 8).clone()
    options = {"batch_size": 4, "seed": 7, "augment": True}
    options.update(kwargs)
    return DeviceLoader(images, torch.arange(10), **options)


def test_loader_batches_per_epoch_and_coverage():
    assert len(make_loader()) == 3 and len(make_loader(drop_last=True)) == 2
    batches = list(make_loader(augment=False).batches(0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    for x, y in batches:  # images stay paired with their labels; normalised to float
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)
        torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255)
    assert [len(y) for _, y in make_loader(drop_last=True).batches(0)] == [4, 4]
    in_order = torch.cat([y for _, y in make_loader(shuffle=False).batches(0)])
    assert in_order.tolist() == list(range(10))


def test_loader_order_is_a_function_of_seed_and_epoch():
    first = [(x.clone(), y.clone()) for x, y in make_loader().batches(3)]
    again = list(make_loader().batches(3))  # a fresh loader: nothing but (seed, epoch) shared
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    other_epoch = torch.cat([y for _, y in make_loader().batches(4)])
    other_seed = torch.cat([y for _, y in make_loader(seed=8).batches(3)])
    order = torch.cat([y for _, y in first])
    assert not torch.equal(order, other_epoch) and not torch.equal(order, other_seed)


def test_loader_started_mid_epoch_yields_the_remaining_batches():
    images = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(
        images, torch.arange(37), 8, augment=True, seed=2, mean=(0.5,) * 3, std=(0.2,) * 3
    )
    full = list(loader.batches(5))
    tail = list(loader.batches(5, start_batch=2))
    assert len(full) == 5 and len(tail) == 3
    for (x, y), (x_tail, y_tail) in zip(full[2:], tail, strict=True):
        assert torch.equal(x, x_tail) and torch.equal(y, y_tail)
    # The same through the resume interface, then the loader moves on to the next epoch.
    loader.set_epoch(5, start_batch=2)
    resumed = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, tail, strict=True))
    assert loader.epoch == 6 and loader.start_batch == 0
    next_epoch = list(loader)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(next_epoch, loader.batches(6), strict=True))
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, start_batch=6)


# ----------------------------------------------------------------------------------------------
# Digits
# ----------------------------------------------------------------------------------------------


def test_digits_shapes_classes_and_fixed_split():
    train_x, train_y, test_x, test_y = load_digits()
    assert train_x.shape == (1438, 64) and test_x.shape == (359, 64)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) == 1.0
    assert set(train_y.tolist()) == set(range(10)) == set(test_y.tolist())
    counts = torch.bincount(test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20% of ~180 per class
    again = load_digits()
    assert torch.equal(again[0], train_x) and torch.equal(again[3], test_y)
    data = load_dataset("digits", seed=123, validation_size=100)
    assert torch.equal(data.test_x, test_x)  # the test split ignores the run's seed
    assert data.input_shape == (64,) and data.num_classes == 10 and data.train_x.shape == (1338, 64)
    batch_x, _ = next(iter(data.train_loader(batch_size=32)))
    assert batch_x.shape == (32, 64)


def test_ranks_split_each_global_batch_like_one_process_with_the_whole_batch():
    images = torch.arange(40 * 3 * 4 * 4, dtype=torch.float32).view(40, 3, 4, 4)
    labels = torch.arange(40)
    kwargs = {"shuffle": True, "augment": True, "padding": 1, "seed": 7, "drop_last": True}
    whole = DeviceLoader(images, labels, 8, **kwargs)
    ranks = [DeviceLoader(images, labels, 4, rank=r, world_size=2, **kwargs) for r in range(2)]
    assert len(whole) == len(ranks[0]) == 5
    for epoch in (0, 3):
        for (x, y), (x0, y0), (x1, y1) in zip(
            whole.batches(epoch), ranks[0].batches(epoch), ranks[1].batches(epoch), strict=True
        ):
            assert torch.equal(torch.cat([y0, y1]), y)
            assert torch.equal(torch.cat([x0, x1]), x)


def test_evaluation_shards_cover_every_sample_once():
    images, labels = torch.zeros(10, 2), torch.arange(10)
    shards = [
        torch.cat(
            [y for _, y in DeviceLoader(images, labels, 3, shuffle=False, rank=r, world_size=2)]
        )
        for r in range(2)
    ]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
