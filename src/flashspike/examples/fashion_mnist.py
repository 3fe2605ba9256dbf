"""Fashion-MNIST: the IDX file reader, where the four files are found, and their download.

The data set is four IDX files (gzipped or not): 60,000 training and 10,000 test images of 28x28
unsigned bytes, with one label byte (0-9) each. An IDX file is a big-endian header, two zero bytes,
a type code (0x08: unsigned byte), the number of dimensions, one 32-bit size per dimension, then the
data, row-major. The reader checks every part of that and names the file in each error.

No torchvision or numpy is needed: the bytes become a uint8 tensor directly.
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import math
import struct
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import torch

from .checkpoint import write_atomic

__all__ = [
    "FILES", "DEBIAN_DIR", "DEBIAN_PACKAGE", "MIRRORS", "IDXFormatError", "DataMissingError", "FashionMNIST",
    "read_idx", "read_images", "read_labels", "write_idx", "default_data_dir", "find_files", "download",
    "load_fashion_mnist", "fingerprint",
]

# Role -> file name without '.gz'. A file may be stored gzipped (name + '.gz') or not.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the gzipped files as the Fashion-MNIST project publishes them (its README). Debian's package
# recompresses them, so its .gz files have other sums: only downloads are checked against these.
_PUBLISHED_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Where the project serves the files, tried in order.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGE_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dimensions (count, rows, columns)
LABEL_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dimension (count)
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
_UBYTE = 0x08  # the only IDX element type Fashion-MNIST uses


class IDXFormatError(ValueError):
    """A file is not the IDX file it should be (bad gzip, magic number, shape or length)."""


class DataMissingError(FileNotFoundError):
    """The data set's files are not in the directory and could not be downloaded."""


class FashionMNIST(NamedTuple):
    """The data set as uint8 tensors: images ``[N, 28, 28]``, labels ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _file_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: an uncompressed IDX file
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:  # truncated stream, bad CRC, bad header
        raise IDXFormatError(f"{path}: not a readable gzip file ({error})") from None


def read_idx(path, expected_magic: int | None = None) -> tuple[int, torch.Tensor]:
    """``(magic, data)`` of an unsigned-byte IDX file: ``data`` is a uint8 tensor of the header's shape.

    ``expected_magic`` is checked before the sizes are read: a file of another kind then says so,
    rather than seeming truncated because its data was read as a size."""
    path = Path(path)
    data = _file_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    zeros, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zeros != 0 or type_code != _UBYTE or ndim == 0:
        raise IDXFormatError(
            f"{path}: magic number {magic} (0x{magic:08x}) is not that of an unsigned-byte IDX file "
            "(0x000008NN, NN the number of dimensions)"
        )
    if expected_magic is not None and magic != expected_magic:
        what = {IMAGE_MAGIC: "image", LABEL_MAGIC: "label"}.get(expected_magic, "expected")
        raise IDXFormatError(
            f"{path}: magic number {magic} (0x{magic:08x}), but an IDX {what} file starts with "
            f"{expected_magic} (0x{expected_magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: {len(data)} bytes, shorter than its {header}-byte header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected, found = math.prod(shape), len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise IDXFormatError(
            f"{path}: {what}: shape {shape} needs {expected} bytes of data after the header, found {found}"
        )
    if expected == 0:  # a valid, empty file (torch.frombuffer refuses an empty buffer)
        return magic, torch.empty(shape, dtype=torch.uint8)
    # bytearray: a writable copy, so the tensor owns its memory.
    return magic, torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)


def read_images(path) -> torch.Tensor:
    """Images ``[N, 28, 28]`` uint8 from an IDX image file."""
    _, images = read_idx(path, IMAGE_MAGIC)
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise IDXFormatError(f"{path}: images of {tuple(images.shape[1:])} pixels, expected {IMAGE_SHAPE}")
    return images


def read_labels(path) -> torch.Tensor:
    """Labels ``[N]`` uint8 (0-9) from an IDX label file."""
    _, labels = read_idx(path, LABEL_MAGIC)
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise IDXFormatError(f"{path}: label {int(labels.max())} found; labels are 0 to {NUM_CLASSES - 1}")
    return labels


def write_idx(path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file, gzipped when ``path`` ends in '.gz' (to make subsets)."""
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() == 0:
        raise TypeError(f"write_idx needs a uint8 tensor of at least 1 dimension, got {data!r:.80}")
    header = struct.pack(f">I{data.dim()}I", (_UBYTE << 8) | data.dim(), *data.shape)
    data = data.contiguous().cpu()
    # The tensor's bytes, read straight from its memory (no numpy needed); `data` stays alive meanwhile.
    payload = header + ctypes.string_at(data.data_ptr(), data.numel())
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def default_data_dir() -> Path:
    """Debian's copy when it is installed, else ./data (where a download goes)."""
    return DEBIAN_DIR if not find_files(DEBIAN_DIR)[1] else Path("data")


def find_files(data_dir) -> tuple[dict[str, Path], list[str]]:
    """``({role: path}, [missing file names])`` for the four files in ``data_dir``, gzipped or not."""
    data_dir = Path(data_dir)
    found, missing = {}, []
    for role, name in FILES.items():
        for candidate in (data_dir / f"{name}.gz", data_dir / name):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def download(data_dir, names, mirrors=MIRRORS, timeout: float = 60.0) -> None:
    """Fetch ``names`` (file names without '.gz') into ``data_dir``, checking each against the published
    MD5. A file is written under a temporary name and renamed, so an interrupted download leaves nothing
    that looks complete. Raises OSError with every mirror's failure when a file cannot be had."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        gz_name = f"{name}.gz"
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + gz_name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (OSError, ValueError) as error:  # URLError is an OSError; ValueError: a bad URL
                failures.append(f"{url}: {error}")
                continue
            digest = hashlib.md5(payload).hexdigest()
            if digest != _PUBLISHED_MD5[gz_name]:
                failures.append(f"{url}: MD5 {digest}, expected {_PUBLISHED_MD5[gz_name]}")
                continue
            write_atomic(payload, data_dir / gz_name)
            break
        else:
            raise OSError(f"could not download {gz_name}: " + "; ".join(failures))


def _missing_message(data_dir: Path, missing: list[str]) -> str:
    return (
        f"Fashion-MNIST is not in {data_dir}: missing {', '.join(missing)} (each gzipped or not). "
        f"Install Debian's package ({DEBIAN_PACKAGE}: apt-get install {DEBIAN_PACKAGE}, which puts the files "
        f"in {DEBIAN_DIR}), or copy the four files into that directory."
    )


def load_fashion_mnist(data_dir=None, *, allow_download: bool = True, mirrors=MIRRORS,
                       report=None) -> FashionMNIST:
    """Read the four files from ``data_dir`` (default: :func:`default_data_dir`), downloading missing
    ones when ``allow_download``; raises :class:`DataMissingError` naming the missing files.
    ``report``, when given, is called with a line saying where the data comes from."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    report = report or (lambda line: None)
    found, missing = find_files(data_dir)
    if missing and allow_download:
        report(f"data: downloading {', '.join(missing)} into {data_dir.resolve()} (checksums verified)")
        try:
            download(data_dir, missing, mirrors)
        except OSError as error:
            raise DataMissingError(f"{_missing_message(data_dir, missing)} The download failed: {error}") from None
        found, missing = find_files(data_dir)
    if missing:
        raise DataMissingError(_missing_message(data_dir, missing))
    data = FashionMNIST(
        read_images(found["train_images"]), read_labels(found["train_labels"]),
        read_images(found["test_images"]), read_labels(found["test_labels"]),
    )
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if len(images) == 0:
            raise IDXFormatError(f"{found[split + '_images']}: holds no images; the {split} split needs at least one")
        if len(images) != len(labels):
            raise IDXFormatError(
                f"{found[split + '_images']} holds {len(images)} images but {found[split + '_labels']} "
                f"holds {len(labels)} labels"
            )
    report(f"data: {len(data.train_labels)} training and {len(data.test_labels)} test images from "
           f"{data_dir.resolve()}")
    return data


def fingerprint(data: FashionMNIST) -> str:
    """SHA-256 of the data set's contents (each split's images and labels, decompressed, with their
    shapes): the same data gives the same fingerprint whether its files are gzipped or not and wherever
    they lie, and other data another one."""
    digest = hashlib.sha256()
    for tensor in data:
        tensor = tensor.contiguous()
        digest.update(repr(tuple(tensor.shape)).encode())
        if tensor.numel():
            digest.update(ctypes.string_at(tensor.data_ptr(), tensor.numel()))  # uint8: one byte an element
    return digest.hexdigest()
