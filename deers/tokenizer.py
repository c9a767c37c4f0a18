"""Tokenizer: a thin wrapper over a tiktoken byte-level BPE encoding (GPT-2's by default).

tiktoken downloads GPT-2's vocabulary on first use and caches it; with no network, point
`TIKTOKEN_CACHE_DIR` at a folder holding the cached files, or load a local `.tiktoken` rank file
with `Tokenizer.from_tiktoken_file`. `tiktoken` is an optional dependency (`pip install deers[train]`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DeersError

EOT_TEXT = "<|endoftext|>"

# GPT-2's pre-tokenization regex (tiktoken's r50k_base / gpt2 pattern): contractions, letter runs,
# digit runs, punctuation runs, whitespace — each optionally led by one space.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerUnavailable(DeersError, RuntimeError):
    """The vocabulary could not be loaded (no cached copy and no network, or tiktoken is missing)."""


def _tiktoken():
    try:
        import tiktoken
    except ImportError as err:
        raise TokenizerUnavailable("the tokenizer needs the tiktoken package: pip install 'deers[train]'") from err
    return tiktoken


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
        """GPT-2's BPE: 50,257 tokens, `<|endoftext|>` = 50256 (downloaded once, then cached by tiktoken)."""
        tiktoken = _tiktoken()
        try:
            encoding = tiktoken.get_encoding("gpt2")
        except Exception as err:  # tiktoken raises network, hash and import errors of several kinds
            cache = os.environ.get("TIKTOKEN_CACHE_DIR")
            where = f"TIKTOKEN_CACHE_DIR={cache} does not hold them" if cache else "TIKTOKEN_CACHE_DIR is not set"
            raise TokenizerUnavailable(
                f"could not load the GPT-2 vocabulary ({type(err).__name__}: {err}); {where}. Fix: set "
                f"TIKTOKEN_CACHE_DIR to a folder with tiktoken's cached GPT-2 files, or go online once so "
                f"tiktoken can download them, or load a local rank file with "
                f"Tokenizer.from_tiktoken_file('gpt2.tiktoken')") from err
        return cls(encoding)

    @classmethod
    def from_tiktoken_file(cls, path: "str | Path", name: str | None = None, pat_str: str = GPT2_PAT_STR,
                           special_tokens: "dict[str, int] | None" = None) -> "Tokenizer":
        """Build an encoding from a local `.tiktoken` file (lines `base64(token_bytes) rank`).

        `special_tokens` defaults to `{"<|endoftext|>": number of ranks}`, which for GPT-2's
        `gpt2.tiktoken` gives the usual id 50256.
        """
        tiktoken = _tiktoken()
        from tiktoken.load import load_tiktoken_bpe

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tiktoken rank file {path} does not exist")
        ranks = load_tiktoken_bpe(str(path))
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
