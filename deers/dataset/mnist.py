"""MNIST from its IDX files: a parser for the format and a dataset that finds or downloads the files.

IDX layout (big-endian): two zero bytes, a type code (0x08 = uint8, ...), the number of dims n,
then n uint32 dims, then the data in C order. Files may be gzip-compressed (detected by content).
"""
from __future__ import annotations

import gzip
import zlib
from math import prod
from pathlib import Path

import numpy as np

from ..download import DownloadError, cache_dir, download
from ..errors import DeersError

# IDX type code -> element type (big-endian where it matters).
IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# Mirrors of the original gzip files, tried in order; each is a base URL the file name is appended to.
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# md5 of each original .gz file (the values torchvision checks).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


class IDXFormatError(DeersError, ValueError):
    """A file is not a valid IDX file (bad magic, truncated data, unexpected shape)."""


def parse_idx(path: "str | Path") -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array of the shape its header gives."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise IDXFormatError(f"{path}: gzip data is truncated or corrupt ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise IDXFormatError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; "
                             f"expected 0000 then a type code in {[hex(t) for t in IDX_TYPES]} and ndim)")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise IDXFormatError(f"{path}: truncated header: {ndim} dims need {header_bytes} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    want = prod(dims) * dtype.itemsize
    have = len(raw) - header_bytes
    if have != want:
        kind = "truncated" if have < want else "has trailing bytes"
        raise IDXFormatError(f"{path}: {kind}: header says shape {dims} of {dtype} = {want} data bytes, "
                             f"file has {have}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_bytes).reshape(dims)  # dims from the header
    return data.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else data


def _candidates(stem: str) -> list[str]:
    """File names that hold one MNIST part: `train-images-idx3-ubyte[.gz]`, `train-images.idx3-ubyte[.gz]`."""
    prefix, kind = stem.split("-idx")  # "train-images", "3-ubyte"
    dotted = f"{prefix}.idx{kind}"
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


class MNIST:
    """The MNIST digits: `.images` uint8 (N, 28, 28), `.labels` uint8 (N,); 60,000 train / 10,000 test.

    Looks for the IDX files in `root` (default `$DEERS_DATA_DIR/mnist` or `~/.cache/deers/mnist`).
    When they are missing and `download` is true, fetches this split's two `.gz` files from the
    first working mirror (base URLs; `mirrors` overrides `MNIST_MIRRORS`), checking each download's
    md5 (`checksums` overrides `MNIST_MD5`). Files already in `root` are trusted but parse-checked.
    """

    def __init__(self, root: "str | Path | None" = None, train: bool = True, download: bool = True,
                 mirrors: "list[str] | None" = None, checksums: "dict[str, str] | None" = None):
        self.root = Path(root) if root is not None else cache_dir("mnist")
        self.train = train
        split = "train" if train else "t10k"
        paths = [self._find_or_fetch(f"{split}-{part}", download, mirrors or MNIST_MIRRORS,
                                     MNIST_MD5 if checksums is None else checksums)
                 for part in ("images-idx3-ubyte", "labels-idx1-ubyte")]
        self.images = parse_idx(paths[0])
        self.labels = parse_idx(paths[1])
        if self.images.dtype != np.uint8 or self.images.ndim != 3 or self.images.shape[1:] != (28, 28):
            raise IDXFormatError(f"{paths[0]}: expected uint8 images of shape (N, 28, 28), "
                                 f"got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.uint8 or self.labels.shape != (len(self.images),):
            raise IDXFormatError(f"{paths[1]}: expected {len(self.images)} uint8 labels to match {paths[0]}, "
                                 f"got {self.labels.dtype} {self.labels.shape}")

    def _find_or_fetch(self, stem: str, download_missing: bool, mirrors: list[str],
                       checksums: dict[str, str]) -> Path:
        for name in _candidates(stem):
            if (self.root / name).is_file():
                return self.root / name
        if not download_missing:
            raise FileNotFoundError(f"MNIST file {stem} not found in {self.root} (looked for "
                                    f"{', '.join(_candidates(stem))}); pass download=True or point root at a folder "
                                    f"with the IDX files")
        name = stem + ".gz"
        urls = [mirror.rstrip("/") + "/" + name for mirror in mirrors]
        try:
            return download(urls, self.root / name, md5=checksums.get(name), desc=name)
        except DownloadError as err:
            error = type(err)(f"{err}\nTo use MNIST without network access, put its four IDX files "
                              f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                              f"t10k-labels-idx1-ubyte, each optionally .gz) in a folder DIR and pass root=DIR "
                              f"(examples/mnist_train.py: --data DIR).")
            error.reasons = err.reasons
            raise error from err

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) for an index, a slice or an index array."""
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return f"MNIST({'train' if self.train else 'test'}, {len(self)} images, root={str(self.root)!r})"
