"""Token files: a flat little-endian uint16 array of token ids, memory-mapped, sampled in windows.

Two layouts are read, told apart by the first int32:
- raw: the tokens and nothing else;
- llm.c's: a 256 x int32 header (magic 20240520, version 1, token count, zeros) then the tokens.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..creation import from_numpy, host_rng
from ..errors import DeersError

HEADER_MAGIC = 20240520
HEADER_VERSION = 1  # uint16 tokens (llm.c's version 2 holds uint32 tokens)
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")


class TokenFileError(DeersError, ValueError):
    """A token file is empty, truncated, or has a header this reader does not know."""


def read_tokens(path: "str | Path") -> tuple[np.ndarray, bool]:
    """Memory-map a token file; returns (uint16 tokens, whether it had an llm.c header)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(12)
    head = np.frombuffer(first, dtype="<i4") if len(first) == 12 else np.zeros(3, "<i4")  # magic, version, count
    if size >= HEADER_BYTES and head[0] == HEADER_MAGIC:
        version, count = int(head[1]), int(head[2])
        if version != HEADER_VERSION:
            raise TokenFileError(f"{path}: llm.c header version {version} is not supported "
                                 f"(only version {HEADER_VERSION}, uint16 tokens)")
        if HEADER_BYTES + TOKEN_DTYPE.itemsize * count != size:
            raise TokenFileError(f"{path}: header says {count} tokens ({HEADER_BYTES + 2 * count} bytes with the "
                                 f"header) but the file has {size} bytes; it is truncated or corrupt")
        if count == 0:
            raise TokenFileError(f"{path}: holds no tokens")
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,)), True
    if size == 0 or size % TOKEN_DTYPE.itemsize:
        raise TokenFileError(f"{path}: {size} bytes is not a whole number of uint16 tokens (> 0)")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r"), False


class TokenWriter:
    """Stream token arrays into a uint16 token file that appears only when complete.

    Writes `path.tmp`; on a clean exit fills in the header (when `header`), fsyncs, and renames it
    to `path` with `os.replace`. On an exception the temporary file is deleted.

        with TokenWriter("train.bin") as out:
            for chunk in chunks:
                out.write(chunk)
    """

    def __init__(self, path: "str | Path", header: bool = True):
        self.path = Path(path)
        self.header = header
        self.tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        self.count = 0
        self._file = None

    def __enter__(self) -> "TokenWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        if self.header:
            self._file.write(bytes(HEADER_BYTES))  # filled in on close, once the count is known
        return self

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(TOKEN_DTYPE).max):
            raise TokenFileError(f"token ids must lie in [0, 65535] to be stored as uint16, "
                                 f"got range [{tokens.min()}, {tokens.max()}]")
        self._file.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
        self.count += tokens.size

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.header:
                if self.count > np.iinfo(np.int32).max:
                    raise TokenFileError(f"{self.count} tokens do not fit the llm.c header's int32 count; "
                                         f"write with header=False")
                header = np.zeros(HEADER_INTS, dtype="<i4")
                header[:3] = (HEADER_MAGIC, HEADER_VERSION, self.count)
                self._file.seek(0)
                self._file.write(header.tobytes())
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_tokens(path: "str | Path", tokens: np.ndarray, header: bool = False) -> Path:
    """Write `tokens` as a uint16 token file (raw, or with an llm.c header), atomically."""
    with TokenWriter(path, header=header) as out:
        out.write(tokens)
    return Path(path)


class TokenBinDataset:
    """Windows of `seq_len + 1` consecutive tokens from one long token stream.

    `len()` is the number of tokens. `sample_batch` draws random windows (any start offset) for
    training; `iter_batches` walks non-overlapping windows in order for evaluation.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, path: "str | Path | None" = None, header: bool = False):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(tokens) < seq_len + 1:
            raise TokenFileError(f"{path or 'token array'}: {len(tokens)} tokens are too few for one window "
                                 f"of seq_len {seq_len} (+1 for the shifted targets)")
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.path = Path(path) if path is not None else None
        self.header = header

    @classmethod
    def load(cls, path: "str | Path", seq_len: int) -> "TokenBinDataset":
        """Memory-map a token file of either layout (detected from its first bytes)."""
        tokens, header = read_tokens(path)
        return cls(tokens, seq_len, path=path, header=header)

    def __len__(self) -> int:
        """Number of tokens in the file."""
        return len(self.tokens)

    @property
    def num_windows(self) -> int:
        """Number of distinct start offsets `sample_batch` can draw (each needs seq_len + 1 tokens)."""
        return len(self.tokens) - self.seq_len

    def sample_batch(self, batch_size: int, device="cpu") -> tuple:
        """(inputs, targets), each i64 (batch_size, seq_len), targets = inputs shifted left by one.

        Start offsets come from `deers.host_rng()`, so `deers.manual_seed` fixes the batches.
        """
        starts = host_rng().integers(0, self.num_windows, size=batch_size)
        rows = starts[:, None] + np.arange(self.seq_len + 1)  # (B, T+1) token positions
        window = np.asarray(self.tokens[rows], dtype=np.int64)  # (B, T+1)
        inputs = np.ascontiguousarray(window[:, :-1])  # (B, T)
        targets = np.ascontiguousarray(window[:, 1:])  # (B, T)
        return from_numpy(inputs, device), from_numpy(targets, device)

    def num_eval_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """How many batches `iter_batches` yields."""
        full, rest = divmod((len(self.tokens) - 1) // self.seq_len, batch_size)
        return full + (1 if rest and not drop_last else 0)

    def iter_batches(self, batch_size: int, device="cpu", drop_last: bool = False) -> Iterator[tuple]:
        """Consecutive non-overlapping windows in file order: window i covers tokens [i*T, (i+1)*T].

        The last batch may hold fewer windows unless `drop_last`.
        """
        T = self.seq_len
        windows = (len(self.tokens) - 1) // T
        for lo in range(0, windows, batch_size):
            hi = min(lo + batch_size, windows)
            if drop_last and hi - lo < batch_size:
                return
            chunk = np.asarray(self.tokens[lo * T: hi * T + 1], dtype=np.int64)  # ((hi-lo)*T + 1,)
            inputs = chunk[:-1].reshape(hi - lo, T)  # (B, T)
            targets = chunk[1:].reshape(hi - lo, T)  # (B, T)
            yield from_numpy(inputs, device), from_numpy(targets, device)

    def __repr__(self) -> str:
        layout = "llm.c header" if self.header else "raw"
        return f"TokenBinDataset({str(self.path)!r}, {len(self)} tokens, seq_len={self.seq_len}, {layout})"
