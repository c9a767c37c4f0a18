"""Tokenizer: a thin wrapper over a tiktoken byte-level BPE encoding (GPT-2's by default).

GPT-2's rank file ships inside the package (`deers/data/gpt2.tiktoken`, see its NOTICE.md), so
`Tokenizer.gpt2()` needs no download, no cache and no network, and gives exactly tiktoken's
"gpt2" tokens. `Tokenizer.from_tiktoken_file` loads any other `.tiktoken` rank file. tiktoken,
the BPE engine, is an optional dependency (`pip install deers[train]`).
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from .data import GPT2_RANK_FILE, data_path
from .errors import DeersError

EOT_TEXT = "<|endoftext|>"

# GPT-2's pre-tokenization regex (tiktoken's r50k_base / gpt2 pattern): contractions, letter runs,
# digit runs, punctuation runs, whitespace — each optionally led by one space.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = 50256  # <|endoftext|>, right after the 50,256 ranks
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's own check


class TokenizerUnavailable(DeersError, RuntimeError):
    """The vocabulary could not be loaded (tiktoken is missing, or the rank file is missing or damaged)."""


def _tiktoken():
    try:
        import tiktoken
    except ImportError as err:
        raise TokenizerUnavailable("the tokenizer needs the tiktoken package: pip install 'deers[train]'") from err
    return tiktoken


def read_rank_file(path: "str | Path", sha256: str | None = None) -> dict[bytes, int]:
    """The ranks of a `.tiktoken` file: one line `base64(token bytes) rank` per token.

    Read directly rather than with `tiktoken.load.load_tiktoken_bpe`, which also copies every
    file it reads into tiktoken's download cache. With `sha256`, a file whose hash differs raises
    TokenizerUnavailable.
    """
    path = Path(path)
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerUnavailable(f"{path} is damaged: its sha256 is {hashlib.sha256(data).hexdigest()}, "
                                   f"expected {sha256}; reinstall deers")
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: expected 'base64(token) rank', got {line[:60]!r}") from err
    return ranks


class Tokenizer:
    """Text <-> token ids through a `tiktoken.Encoding`; `<|endoftext|>` in text maps to `eot_token`."""

    def __init__(self, encoding, eot_text: str = EOT_TEXT):
        if eot_text not in encoding.special_tokens_set:
            raise ValueError(f"encoding {encoding.name!r} has no special token {eot_text!r}; "
                             f"its special tokens are {sorted(encoding.special_tokens_set)}")
        self.encoding = encoding
        self._eot = encoding.encode_single_token(eot_text)

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """GPT-2's BPE: 50,257 tokens, `<|endoftext|>` = 50256, from the rank file inside the package."""
        tiktoken = _tiktoken()
        path = data_path(GPT2_RANK_FILE)
        if not path.is_file():
            raise TokenizerUnavailable(f"GPT-2's rank file {path} is missing from this installation; reinstall deers")
        ranks = read_rank_file(path, sha256=GPT2_RANKS_SHA256)
        encoding = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                     special_tokens={EOT_TEXT: GPT2_EOT}, explicit_n_vocab=GPT2_EOT + 1)
        return cls(encoding)

    @classmethod
    def from_tiktoken_file(cls, path: "str | Path", name: str | None = None, pat_str: str = GPT2_PAT_STR,
                           special_tokens: "dict[str, int] | None" = None) -> "Tokenizer":
        """Build an encoding from a local `.tiktoken` file (lines `base64(token_bytes) rank`).

        `special_tokens` defaults to `{"<|endoftext|>": number of ranks}`, which for GPT-2's
        `gpt2.tiktoken` gives the usual id 50256.
        """
        tiktoken = _tiktoken()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tiktoken rank file {path} does not exist")
        ranks = read_rank_file(path)
        if special_tokens is None:
            special_tokens = {EOT_TEXT: len(ranks)}
        encoding = tiktoken.Encoding(name=name or path.stem, pat_str=pat_str, mergeable_ranks=ranks,
                                     special_tokens=special_tokens)
        return cls(encoding)

    @property
    def name(self) -> str:
        return self.encoding.name

    @property
    def eot_token(self) -> int:
        """Id of `<|endoftext|>`, the separator between documents."""
        return self._eot

    def vocab_size(self) -> int:
        """Number of token ids (ordinary ranks + special tokens); ids lie in [0, vocab_size)."""
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text such as `<|endoftext|>` becomes its special id."""
        return self.encoding.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating special-token text as plain characters."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts at once on tiktoken's thread pool (default: one thread per CPU)."""
        threads = num_threads or os.cpu_count() or 1
        return self.encoding.encode_batch(list(texts), num_threads=threads, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (invalid UTF-8 across a cut is replaced, not raised)."""
        return self.encoding.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size()}, eot={self.eot_token})"
