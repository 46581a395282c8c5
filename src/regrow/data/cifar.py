"""CIFAR-10 and CIFAR-100 from the official python archives (download, verify, read).

The official archives unpack to ``ROOT/cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``,
``test_batch``) and ``ROOT/cifar-100-python/`` (``train``, ``test``). Each file is a pickled dict:
``data`` is uint8 ``[N, 3072]`` — 1024 red, then 1024 green, then 1024 blue values, each plane
row-major — and the labels are ``labels`` (CIFAR-10) or ``fine_labels`` / ``coarse_labels``
(CIFAR-100). The originals were written by Python 2, so their keys unpickle as ``bytes`` under
``encoding="bytes"``; files re-written by Python 3 have ``str`` keys. Both are accepted.

Images come back as uint8 ``[N, 3, 32, 32]`` (conversion to float and normalisation happen per
batch on the training device, see :mod:`regrow.data.augment`), labels as int64 ``[N]``.

Pickle can run arbitrary code, so the files are read with an unpickler that only resolves the few
NumPy names an array needs; anything else is refused with an error instead of being executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ARCHIVES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarArchive",
    "DownloadError",
    "download_and_extract",
    "extract_archive",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_file",
    "split_train_validation",
]

#: Per-channel (R, G, B) mean and standard deviation of the 50,000 training images, pixels scaled to
#: [0, 1]; the std is over all pixels of a channel (not the mean of per-image stds, which gives the
#: also-circulating 0.2023, 0.1994, 0.2010).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

IMAGE_SHAPE = (3, 32, 32)
_CHUNK = 1 << 20

#: Classes behind each label entry of the official files (labels are 0 … classes - 1).
LABEL_CLASSES = {"labels": 10, "fine_labels": 100, "coarse_labels": 20}


class DownloadError(OSError):
    """An archive could not be fetched (no network, HTTP error, timeout); the message says where
    to put the archive by hand."""


@dataclass(frozen=True)
class CifarArchive:
    """Where an official archive lives, its checksum, and the files it unpacks to."""

    name: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]

    @property
    def filename(self) -> str:
        """The archive's file name (the last part of its URL)."""
        return self.url.rsplit("/", 1)[-1]


ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
    ),
    "cifar100": CifarArchive(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
    ),
}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only names a CIFAR pickle may refer to: what NumPy 1.x and 2.x arrays pickle through.

    The functions are taken from NumPy's own reduce output, so no (deprecated) private module is
    imported, whichever NumPy version wrote or reads the file.
    """
    sample = np.zeros(1, dtype=np.uint8)
    reconstruct = sample.__reduce__()[0]
    frombuffer = sample.__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol-2 pickles
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_allowed_globals` (so a file cannot run code)."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR file holds only NumPy arrays, lists "
                f"and strings"
            ) from None


def _get(record: dict[Any, Any], key: str, path: Path) -> Any:
    """``record[key]`` whether the file's keys are ``bytes`` (Python 2 originals) or ``str``."""
    for candidate in (key.encode(), key):
        if candidate in record:
            return record[candidate]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in record)
    raise ValueError(f"{path}: no {key!r} entry (found {keys}); is this an official CIFAR file?")


def _check_labels(path: Path, label_key: str, labels: np.ndarray, classes: int | None) -> None:
    """Integer labels in ``0 … classes - 1`` (a bad one would be a device-side assert on CUDA)."""
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: {label_key!r} must hold integers, got {labels.dtype}; is this an official "
            "CIFAR file?"
        )
    if classes is None or not labels.size:
        return
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        values = np.unique(labels[bad])
        shown = ", ".join(map(str, values[:5].tolist())) + (", …" if values.size > 5 else "")
        raise ValueError(
            f"{path}: {label_key!r} holds {int(bad.sum())} value(s) out of range ({shown}; first "
            f"at image {int(np.argmax(bad))}): allowed values are 0 to {classes - 1} ({classes} "
            "classes). The file is corrupt or not an official CIFAR file: replace it with the "
            "official one."
        )


def read_cifar_file(
    path: str | os.PathLike[str], label_key: str = "labels", classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one official CIFAR python file: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    ``label_key`` is ``"labels"`` for CIFAR-10, ``"fine_labels"`` or ``"coarse_labels"`` for
    CIFAR-100. The flat 3072 values of a row are the R, G and B planes, each 32×32 row-major, so a
    reshape gives channel-first images without copying pixels around. Labels must be integers in
    ``0 … classes - 1`` (``classes`` defaults to the entry's: 10, 100 or 20), else ``ValueError``
    names the file and the values.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            record = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a readable CIFAR python file ({error}); delete the folder and load "
            f"with download=True (CLI: data.download=true) to fetch a fresh copy"
        ) from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(record).__name__}")
    data = np.asarray(_get(record, "data", path))
    labels = np.asarray(_get(record, label_key, path))
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape [N, 3072], got {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {label_key!r} has {labels.size} entries for {data.shape[0]} images"
        )
    known = LABEL_CLASSES.get(label_key)
    _check_labels(path, label_key, labels, classes if classes is not None else known)
    images = torch.from_numpy(np.array(data, copy=True)).view(-1, *IMAGE_SHAPE)
    return images, torch.from_numpy(labels.astype(np.int64))


def _read_files(
    folder: Path, names: tuple[str, ...], label_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_file(folder / name, label_key) for name in names]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root if root is not None else "data").expanduser()


def _ensure_folder(archive: CifarArchive, root: Path, download: bool) -> Path:
    """The extracted folder: there already, extracted from the archive placed in ``root`` by hand,
    or downloaded if asked; a helpful error if it is missing."""
    folder = root / archive.folder
    if folder.is_dir():
        missing = [
            n for n in archive.train_files + archive.test_files if not (folder / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{folder} is incomplete: missing {', '.join(missing)}. Delete the folder and load "
                f"again with download=True (CLI: data.download=true), or extract {archive.url} "
                f"into {root} yourself."
            )
        return folder
    placed = root / archive.filename
    if placed.is_file():  # downloaded by hand (no network here): check it and extract it
        return extract_archive(placed, archive.md5, root, archive.folder, url=archive.url)
    if not download:
        raise FileNotFoundError(
            f"{archive.name} not found: expected the extracted folder {folder}. Load with "
            f"download=True (CLI: data.download=true) to fetch {archive.url} "
            f"(md5 {archive.md5}) into {root}, put {archive.filename} in {root} (it is checked "
            f"and extracted on load), point data.root at a folder that holds {archive.folder}/, "
            "or extract the archive there yourself."
        )
    download_and_extract(archive.url, archive.md5, root, archive.folder)
    return folder


def _load(
    archive: CifarArchive, root: str | os.PathLike[str] | None, download: bool, label_key: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = _ensure_folder(archive, _resolve_root(root), download)
    train_x, train_y = _read_files(folder, archive.train_files, label_key)
    test_x, test_y = _read_files(folder, archive.test_files, label_key)
    return train_x, train_y, test_x, test_y


def load_cifar10(
    root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-10 as ``(train_x, train_y, test_x, test_y)``: 50,000 / 10,000 uint8 images.

    Reads ``root/cifar-10-batches-py/`` (``root`` defaults to ``./data``); if that folder is missing
    it is downloaded and verified when ``download`` is true, else ``FileNotFoundError`` says how to
    get it.
    """
    return _load(ARCHIVES["cifar10"], root, download, "labels")


def load_cifar100(
    root: str | os.PathLike[str] | None = None, download: bool = False, labels: str = "fine"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-100 as ``(train_x, train_y, test_x, test_y)``: 50,000 / 10,000 uint8 images.

    ``labels`` picks the 100 ``"fine"`` classes (the paper's) or the 20 ``"coarse"`` superclasses.
    Reads ``root/cifar-100-python/``; ``download`` as in :func:`load_cifar10`.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels={labels!r} is unknown: allowed values are 'fine', 'coarse'.")
    return _load(ARCHIVES["cifar100"], root, download, f"{labels}_labels")


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def _progress(
    total: int | None, description: str
) -> tuple[Callable[[int], object], Callable[[], object]]:
    """(update, close) of a tqdm bar when tqdm is installed and stderr is a terminal, else no-ops."""
    if sys.stderr is not None and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description)
            return bar.update, bar.close
    return (lambda _n: None), (lambda: None)


def _fetch(url: str, destination: io.BufferedWriter, timeout: float) -> str:
    """Stream ``url`` into ``destination``; returns the MD5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length") if response.headers else None
        update, close = _progress(int(length) if length else None, url.rsplit("/", 1)[-1])
        try:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                destination.write(chunk)
                digest.update(chunk)
                update(len(chunk))
        finally:
            close()
    return digest.hexdigest()


def _extract(archive_path: Path, into: Path) -> None:
    """Extract a tar.gz, refusing members that would land outside ``into`` or are links/devices."""
    with tarfile.open(archive_path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python ≥ 3.12 and recent 3.10/3.11 patch releases
            tar.extractall(into, filter="data")
            return
        base = into.resolve()
        for member in tar.getmembers():
            target = (base / member.name).resolve()
            if base not in target.parents and target != base:
                raise ValueError(f"{archive_path}: member {member.name!r} escapes the archive")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive_path}: member {member.name!r} is not a plain file")
        tar.extractall(into)  # members checked above


def _install(archive_path: Path, filename: str, origin: str, root: Path, folder: str) -> Path:
    """Extract a verified archive so ``root/folder`` appears whole (staged, then renamed)."""
    final = root / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extracting", dir=root))
    try:
        try:
            _extract(archive_path, staging)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ValueError(
                f"could not extract {filename} from {origin} ({error}); nothing was kept. Run "
                f"again, or download and extract the archive into {root} yourself."
            ) from error
        extracted = staging / folder
        if not extracted.is_dir():
            raise ValueError(f"{filename} from {origin} does not contain the folder {folder}/")
        try:
            os.replace(extracted, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _reason(error: BaseException) -> str:
    """Why a download failed, in a few words (``HTTP 404 Not Found``, ``timed out``, ...)."""
    code = getattr(error, "code", None)
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
    if isinstance(reason, BaseException):
        reason = getattr(reason, "strerror", None) or reason
    text = f"HTTP {code} {reason}" if isinstance(code, int) else str(reason)
    return " ".join(text.split()) or type(error).__name__


def download_and_extract(
    url: str,
    md5: str,
    root: str | os.PathLike[str],
    folder: str,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download the tar.gz at ``url``, check its MD5, and extract it so ``root/folder`` appears.

    Nothing half-done is ever left at ``root/folder``: the archive is written to a temporary file in
    ``root``, extracted into a temporary directory in ``root``, and only the complete ``folder`` is
    renamed into place (a rename within one file system is atomic). On any failure — network error,
    checksum mismatch, corrupt archive, interruption — the temporaries are removed. If another
    process finished the same download first, its folder is kept. Returns ``root/folder``.

    ``url`` may be any URL urllib opens (``file://`` in tests). A network failure raises
    :class:`DownloadError` naming the address and where to put the archive by hand; a checksum
    mismatch raises ``ValueError`` naming the file and both checksums.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    filename = url.rsplit("/", 1)[-1] or "archive.tar.gz"
    archive_fd, archive_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=root)
    archive_path = Path(archive_name)
    try:
        with os.fdopen(archive_fd, "wb") as handle:
            try:
                actual = _fetch(url, handle, timeout)
            except (OSError, http.client.HTTPException, ValueError) as error:
                raise DownloadError(
                    f"could not download {filename} from {url} ({_reason(error)}). Without a "
                    f"network: download {filename} from {url} elsewhere and put it in {root} (it "
                    f"is checked and extracted on the next load), or extract it there so "
                    f"{root / folder} exists."
                ) from error
        if actual != md5.lower():
            raise ValueError(
                f"checksum mismatch for {filename} downloaded from {url}: expected md5 {md5}, got "
                f"{actual}. The download is corrupt or incomplete (it has been deleted); run again, "
                f"or download and extract the archive into {root} yourself."
            )
        return _install(archive_path, filename, url, root, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            archive_path.unlink()


def extract_archive(
    archive_path: str | os.PathLike[str],
    md5: str,
    root: str | os.PathLike[str],
    folder: str,
    *,
    url: str | None = None,
) -> Path:
    """Check the MD5 of an archive already on disk (downloaded by hand) and extract it so
    ``root/folder`` appears, as :func:`download_and_extract` does; the archive itself is kept.
    ``url`` (where the official copy lives) goes into the error of a checksum mismatch."""
    archive_path, root = Path(archive_path).expanduser(), Path(root).expanduser()
    digest = hashlib.md5(usedforsecurity=False)
    with archive_path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != md5.lower():
        again = f"download it again from {url}" if url else "download it again"
        raise ValueError(
            f"{archive_path} has md5 {digest.hexdigest()}, expected {md5}: it is incomplete or "
            f"not the official archive; {again}, or extract the official archive into {root}."
        )
    root.mkdir(parents=True, exist_ok=True)
    return _install(archive_path, archive_path.name, str(archive_path), root, folder)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def split_train_validation(
    images: torch.Tensor, labels: torch.Tensor, validation_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out ``validation_size`` random images: ``(train_x, train_y, val_x, val_y)``.

    The held-out set is drawn by a ``torch.Generator`` seeded with ``seed`` only, so it is the same
    on every machine and rank and for every training seed that passes the same ``seed`` (the
    reproducibility report trains on 45,000 CIFAR-10 images and validates on the other 5,000). Both
    parts keep the original order of the images; ``validation_size=0`` returns empty validation
    tensors.
    """
    count = images.shape[0]
    if labels.shape[0] != count:
        raise ValueError(f"{count} images but {labels.shape[0]} labels")
    if not 0 <= validation_size < count:
        raise ValueError(
            f"validation_size={validation_size} is out of range: allowed values are 0 <= "
            f"validation_size < {count} (the number of training images)."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    validation = order[:validation_size].sort().values.to(images.device)
    train = order[validation_size:].sort().values.to(images.device)
    return images[train], labels[train], images[validation], labels[validation]
