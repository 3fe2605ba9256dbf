"""The Fashion-MNIST reader: the real files, hand-built IDX bytes, corrupt files, finding and downloading."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import pytest
import torch

from flashspike.examples import fashion_mnist as fm

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(magic: int, shape, payload: bytes) -> bytes:
    """An IDX file built by hand from the format's definition (independent of write_idx)."""
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in shape) + payload


def image_file(path: Path, images: list[bytes], rows=28, cols=28, magic=0x803) -> Path:
    data = idx_bytes(magic, (len(images), rows, cols), b"".join(images))
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def label_file(path: Path, labels: list[int], magic=0x801) -> Path:
    data = idx_bytes(magic, (len(labels),), bytes(labels))
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fake_dataset(directory: Path, n_train=3, n_test=2, gz=True) -> Path:
    suffix = ".gz" if gz else ""
    pixels = [bytes((i * 7 + j) % 256 for j in range(784)) for i in range(max(n_train, n_test))]
    image_file(directory / f"train-images-idx3-ubyte{suffix}", pixels[:n_train])
    label_file(directory / f"train-labels-idx1-ubyte{suffix}", [i % 10 for i in range(n_train)])
    image_file(directory / f"t10k-images-idx3-ubyte{suffix}", pixels[:n_test])
    label_file(directory / f"t10k-labels-idx1-ubyte{suffix}", [(i + 3) % 10 for i in range(n_test)])
    return directory


def need_real_data():
    if fm.find_files(REAL_DIR)[1]:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install Debian's {fm.DEBIAN_PACKAGE} ({REAL_DIR} is incomplete)")
        pytest.skip(f"{REAL_DIR} absent: apt-get install {fm.DEBIAN_PACKAGE}")


# ------------------------------------------------------------------ the real files

def test_real_files_have_the_published_sizes_and_balanced_classes():
    need_real_data()
    data = fm.load_fashion_mnist(REAL_DIR, allow_download=False)
    assert data.train_images.shape == (60000, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10000, 28, 28) and data.test_labels.shape == (10000,)
    assert data.train_labels.bincount().tolist() == [6000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    # The first labels of each split, as every Fashion-MNIST loader shows them (9 = ankle boot).
    assert data.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert data.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert int(data.train_images.min()) == 0 and int(data.train_images.max()) == 255


def test_real_images_match_an_independent_parse():
    need_real_data()
    raw = gzip.decompress((REAL_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">4I", raw[:16]) == (2051, 10000, 28, 28)
    images = fm.read_images(REAL_DIR / "t10k-images-idx3-ubyte.gz")
    for i in (0, 1, 4999, 9999):
        assert bytes(images[i].flatten().tolist()) == raw[16 + 784 * i:16 + 784 * (i + 1)]


def test_default_data_dir_is_debians_when_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_DIR", fake_dataset(tmp_path))
    assert fm.default_data_dir() == tmp_path
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "absent")
    assert fm.default_data_dir() == Path("data")


# ------------------------------------------------------------------ hand-built files

@pytest.mark.parametrize("suffix", [".gz", ""])
def test_reads_hand_built_images_and_labels(tmp_path, suffix):
    first, second = bytes(range(256)) + bytes(528), bytes([255] * 784)
    images = fm.read_images(image_file(tmp_path / f"i{suffix}", [first, second]))
    assert images.shape == (2, 28, 28) and images.dtype == torch.uint8
    assert images[0, 0, :5].tolist() == [0, 1, 2, 3, 4]
    assert images[0, 9, 3].item() == 255  # pixel 255 = row 9, column 3
    assert images[0, 9, 4].item() == 0 and bool((images[1] == 255).all())
    labels = fm.read_labels(label_file(tmp_path / f"l{suffix}", [3, 0, 9]))
    assert labels.tolist() == [3, 0, 9] and labels.dtype == torch.uint8


def test_loads_a_directory_of_uncompressed_files(tmp_path):
    data = fm.load_fashion_mnist(fake_dataset(tmp_path, 3, 2, gz=False), allow_download=False)
    assert data.train_labels.tolist() == [0, 1, 2] and data.test_labels.tolist() == [3, 4]
    assert data.test_images[1, 0, :3].tolist() == [7, 8, 9]


def test_write_idx_round_trips_and_writes_the_format(tmp_path):
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fm.write_idx(tmp_path / "a.gz", images)
    fm.write_idx(tmp_path / "b", images)
    assert torch.equal(fm.read_images(tmp_path / "a.gz"), images)
    assert (tmp_path / "b").read_bytes() == idx_bytes(0x803, (5, 28, 28), bytes(images.flatten().tolist()))
    with pytest.raises(TypeError, match="uint8"):
        fm.write_idx(tmp_path / "c", images.float())


# ------------------------------------------------------------------ corrupt files: each error names the file

def corrupt(tmp_path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


IMAGE = idx_bytes(0x803, (2, 28, 28), bytes(2 * 784))


@pytest.mark.parametrize(
    "data, reader, message",
    [
        (b"", fm.read_images, "too short for an IDX header"),
        (b"hello, world: not IDX", fm.read_images, "not that of an unsigned-byte IDX file"),
        (idx_bytes(0xD03, (1, 28, 28), bytes(784)), fm.read_images, "not that of an unsigned-byte IDX"),  # int32
        (IMAGE[:10], fm.read_images, "shorter than its 16-byte header"),
        (IMAGE[:-1], fm.read_images, r"truncated: shape \(2, 28, 28\) needs 1568 bytes .* found 1567"),
        (IMAGE + b"\0", fm.read_images, "longer than its header says"),
        (idx_bytes(0x801, (3,), bytes(3)), fm.read_images, "magic number 2049 .* image file starts with 2051"),
        (IMAGE, fm.read_labels, "magic number 2051 .* label file starts with 2049"),
        (idx_bytes(0x803, (1, 27, 28), bytes(27 * 28)), fm.read_images, r"\(27, 28\) pixels, expected \(28, 28\)"),
        (idx_bytes(0x801, (2,), bytes([1, 10])), fm.read_labels, "label 10 found"),
        (gzip.compress(IMAGE, mtime=0)[:-12], fm.read_images, "not a readable gzip file"),
        (gzip.compress(IMAGE, mtime=0)[:-4] + b"\0\0\0\0", fm.read_images, "not a readable gzip file"),  # bad length
    ],
    ids=lambda value: None if isinstance(value, bytes) else getattr(value, "__name__", str(value)),
)
def test_corrupt_file_is_a_clear_error_naming_it(tmp_path, data, reader, message):
    path = corrupt(tmp_path, "train-images-idx3-ubyte.gz", data)
    with pytest.raises(fm.IDXFormatError, match=message) as caught:
        reader(path)
    assert str(path) in str(caught.value)


def test_count_mismatch_names_both_files(tmp_path):
    fake_dataset(tmp_path, n_train=3)
    label_file(tmp_path / "train-labels-idx1-ubyte.gz", [1, 2])
    with pytest.raises(fm.IDXFormatError, match="holds 3 images but .*train-labels.* holds 2 labels"):
        fm.load_fashion_mnist(tmp_path, allow_download=False)


def test_missing_files_are_named_with_the_debian_package(tmp_path):
    fake_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(fm.DataMissingError) as caught:
        fm.load_fashion_mnist(tmp_path, allow_download=False)
    text = str(caught.value)
    assert "missing train-images-idx3-ubyte, t10k-labels-idx1-ubyte" in text
    assert "train-labels" not in text and "apt-get install dataset-fashion-mnist" in text and str(tmp_path) in text


# ------------------------------------------------------------------ downloading (from a local mirror)

@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror of the four gzipped files, with their sums standing in for the published ones."""
    (tmp_path / "mirror").mkdir()
    source = fake_dataset(tmp_path / "mirror")
    for path in source.iterdir():
        monkeypatch.setitem(fm._PUBLISHED_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    return source.as_uri() + "/"


def test_download_fetches_checks_and_loads(tmp_path, mirror):
    target = tmp_path / "data"
    data = fm.load_fashion_mnist(target, mirrors=(tmp_path.as_uri() + "/nowhere/", mirror))  # first fails
    assert data.train_labels.tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in fm.FILES.values())


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, mirror, monkeypatch):
    monkeypatch.setitem(fm._PUBLISHED_MD5, "train-labels-idx1-ubyte.gz", "0" * 32)
    target = tmp_path / "data"
    with pytest.raises(OSError, match="train-labels-idx1-ubyte.gz: MD5 [0-9a-f]{32}, expected 0{32}"):
        fm.download(target, ["train-labels-idx1-ubyte"], mirrors=(mirror,))
    assert list(target.iterdir()) == []


def test_failed_download_is_a_missing_data_error(tmp_path):
    with pytest.raises(fm.DataMissingError, match="download failed: could not download train-images"):
        fm.load_fashion_mnist(tmp_path / "data", mirrors=(tmp_path.as_uri() + "/nowhere/",))
