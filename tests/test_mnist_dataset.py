"""IDX parsing, the MNIST dataset (local files and the download path) and the NumPy DataLoader."""
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

import deers
from deers.dataset import MNIST, DataLoader, IDXFormatError, parse_idx
from deers.download import ChecksumError
from local_http_server import LocalServer

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in the IDX format (uint8 or big-endian int32/float32)."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_split(root: Path, split: str, images, labels, gz: bool, dotted: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for part, array in (("images", images), ("labels", labels)):
        kind = "idx3-ubyte" if part == "images" else "idx1-ubyte"
        name = f"{split}-{part}.{kind}" if dotted else f"{split}-{part}-{kind}"
        data = idx_bytes(array)
        (root / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)


# ---- parse_idx ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_parse_idx_round_trip(tmp_path, gz, dtype):
    values = np.arange(30) * (1 if dtype == np.uint8 else -1001)  # negative and multi-byte where the type allows
    array = values.astype(dtype).reshape(2, 3, 5)
    data = idx_bytes(array)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    parsed = parse_idx(path)
    assert parsed.shape == (2, 3, 5) and parsed.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(parsed, array)


def test_parse_idx_truncated_data(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10])
    with pytest.raises(IDXFormatError, match=r"truncated.*\(4, 28, 28\)"):
        parse_idx(path)


def test_parse_idx_truncated_gzip(tmp_path):
    path = tmp_path / "t.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))[:-20])
    with pytest.raises(IDXFormatError, match="gzip"):
        parse_idx(path)


def test_parse_idx_bad_magic_and_short_header(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(IDXFormatError, match="not an IDX file"):
        parse_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")
    with pytest.raises(IDXFormatError, match="truncated header"):
        parse_idx(short)


# ---- MNIST -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_mnist_reads_local_files(tmp_path, gz, dotted):
    images, labels = fake_mnist(12, seed=1)
    write_split(tmp_path, "t10k", images, labels, gz=gz, dotted=dotted)
    test = MNIST(tmp_path, train=False, download=False)
    assert len(test) == 12 and test.images.dtype == np.uint8 and test.images.shape == (12, 28, 28)
    np.testing.assert_array_equal(test.images, images)
    np.testing.assert_array_equal(test.labels, labels)
    image, label = test[3]
    assert image.shape == (28, 28) and label == labels[3]
    assert test[2:5][0].shape == (3, 28, 28)


def test_mnist_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        MNIST(tmp_path, train=True, download=False)


def test_mnist_rejects_mismatched_labels(tmp_path):
    images, labels = fake_mnist(5, seed=2)
    write_split(tmp_path, "train", images, labels[:4], gz=True)
    with pytest.raises(IDXFormatError, match="labels"):
        MNIST(tmp_path, train=True, download=False)


def test_mnist_downloads_from_first_working_mirror(tmp_path):
    images, labels = fake_mnist(20, seed=3)
    served = {"/mirror/train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
              "/mirror/train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels))}
    md5s = {path.rsplit("/", 1)[1]: hashlib.md5(data).hexdigest() for path, data in served.items()}
    with LocalServer(served) as server:
        mirrors = [server.url("/empty/"), server.url("/mirror/")]
        train = MNIST(tmp_path / "cache", train=True, mirrors=mirrors, checksums=md5s)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(md5s)


def test_mnist_download_checks_the_published_md5(tmp_path):
    images, labels = fake_mnist(3, seed=4)
    served = {"/m/train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(images)),
              "/m/train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels))}
    with LocalServer(served) as server:
        with pytest.raises(ChecksumError, match="f68b3c2dcbeaaa9fbdd348bbdeb94873"):
            MNIST(tmp_path, train=True, mirrors=[server.url("/m/")])
    assert list(tmp_path.iterdir()) == []


def test_mnist_default_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEERS_DATA_DIR", str(tmp_path))
    images, labels = fake_mnist(4, seed=5)
    write_split(tmp_path / "mnist", "train", images, labels, gz=True)
    assert len(MNIST(download=False)) == 4


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST files not present")
def test_real_mnist_files():
    test = MNIST(SHARED_MNIST, train=False, download=False)
    assert test.images.shape == (10000, 28, 28)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---- DataLoader ---------------------------------------------------------------------------------
def batches(loader):
    return [tuple(a.copy() for a in batch) for batch in loader]


def test_loader_len_and_drop_last():
    x, y = np.arange(10), np.arange(10) * 2
    keep = DataLoader((x, y), batch_size=4, shuffle=False)
    assert len(keep) == 3 and [b[0].tolist() for b in keep] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    drop = DataLoader((x, y), batch_size=4, shuffle=False, drop_last=True)
    assert len(drop) == 2 and [len(b[0]) for b in drop] == [4, 4]
    assert len(DataLoader((x,), batch_size=5, drop_last=True)) == 2


def test_loader_shuffle_keeps_rows_paired_and_covers_all():
    x = np.arange(50)
    loader = DataLoader((x, x * 10, np.stack([x, x], 1)), batch_size=7, seed=0)
    seen = []
    for xb, yb, zb in loader:
        np.testing.assert_array_equal(yb, xb * 10)
        np.testing.assert_array_equal(zb[:, 1], xb)
        seen.extend(xb.tolist())
    assert sorted(seen) == list(range(50)) and seen != list(range(50))


def test_loader_seed_determinism_and_new_order_each_epoch():
    x = np.arange(64)
    a, b = DataLoader((x,), 8, seed=3), DataLoader((x,), 8, seed=3)
    first_a, first_b = batches(a), batches(b)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(first_a, first_b))
    second_a = batches(a)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(first_a, second_a))
    assert a.epoch == 1
    deers.manual_seed(11)
    c = DataLoader((x,), 8)
    deers.manual_seed(11)
    d = DataLoader((x,), 8)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(batches(c), batches(d)))


def test_loader_state_round_trip_mid_epoch():
    x = np.arange(40)
    reference = DataLoader((x,), 6, seed=5)
    batches(reference)  # epoch 0
    run = iter(reference)
    for _ in range(3):
        next(run)
    state = reference.state_dict()
    rest_of_epoch = [b[0].copy() for b in run]
    next_epoch = batches(reference)

    resumed = DataLoader((x,), 6, seed=999)
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == [b.tolist() for b in rest_of_epoch]
    assert [b[0].tolist() for b in resumed] == [b[0].tolist() for b in next_epoch]
    assert resumed.epoch == reference.epoch == 2


def test_loader_state_round_trip_between_epochs():
    x = np.arange(30)
    reference = DataLoader((x,), 4, seed=8)
    batches(reference)
    state = reference.state_dict()
    assert state["batch"] == 0 and state["epoch"] == 1
    expected = batches(reference)
    resumed = DataLoader((x,), 4, seed=0)
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in batches(resumed)] == [b[0].tolist() for b in expected]


def test_loader_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="same first dimension"):
        DataLoader((np.zeros(3), np.zeros(4)), 2)
