"""Tokenizer: a thin wrapper over a tiktoken byte-level BPE encoding (GPT-2's by default), or over a
Hugging Face `tokenizer.json` (`Tokenizer.from_pretrained`, for the pretrained models).

GPT-2's rank file ships inside the package (`deers/data/gpt2.tiktoken`, see its NOTICE.md), so
`Tokenizer.gpt2()` needs no download, no cache and no network, and gives exactly tiktoken's
"gpt2" tokens. `Tokenizer.from_tiktoken_file` loads any other `.tiktoken` rank file. tiktoken,
the BPE engine, is an optional dependency (`pip install deers[train]`). `Tokenizer.from_pretrained`
reads a model folder's `tokenizer.json` with the `tokenizers` library (`pip install deers[hf]`).
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

    @classmethod
    def from_pretrained(cls, path_or_repo_id: "str | Path") -> "Tokenizer":
        """The tokenizer of a Hugging Face model folder (its `tokenizer.json`) or repo id (downloaded
        with huggingface_hub), through the `tokenizers` library: the ids of transformers' tokenizer.

        GPT-2 ("gpt2", "openai-community/gpt2") without a local folder is the built-in `gpt2()`,
        the same ids with no download.
        """
        if str(path_or_repo_id) in ("gpt2", "openai-community/gpt2") and not Path(path_or_repo_id).is_dir():
            return cls.gpt2()
        from .models.hub import resolve

        folder = resolve(path_or_repo_id, patterns=["tokenizer.json", "tokenizer_config.json", "config.json"])
        return HFTokenizer(folder / "tokenizer.json")

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


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` behind the Tokenizer interface (built by Tokenizer.from_pretrained).

    encode adds the special tokens the file's post-processor adds (Llama 3's <|begin_of_text|>), as
    transformers' `tokenizer.encode(text)` does; special-token text such as `<|endoftext|>` becomes its
    one id. `eot_token` is the end-of-sequence token that tokenizer_config.json names (else
    `<|endoftext|>` when the vocabulary has it, else None).
    """

    def __init__(self, path: "str | Path"):
        path = Path(path)
        if not path.is_file():
            raise TokenizerUnavailable(f"{path} is missing (only tokenizers saved as tokenizer.json are supported)")
        try:
            import tokenizers
        except ImportError as err:
            raise TokenizerUnavailable("reading tokenizer.json needs the tokenizers package: "
                                       "pip install 'deers[hf]'") from err
        self.path = path
        self.backend = tokenizers.Tokenizer.from_file(str(path))
        self._eot = self._end_of_sequence(path.parent / "tokenizer_config.json")

    def _end_of_sequence(self, config_path: Path) -> int | None:
        import json

        name = EOT_TEXT
        if config_path.is_file():
            eos = json.loads(config_path.read_text()).get("eos_token")
            name = eos.get("content") if isinstance(eos, dict) else eos or EOT_TEXT
        return self.backend.token_to_id(name)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def eot_token(self) -> int | None:
        """Id of the end-of-sequence token (None when the tokenizer has none)."""
        return self._eot

    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, as transformers' tokenizer.encode(text, add_special_tokens=...)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text` with special-token text treated as plain characters, nothing added."""
        self.backend.encode_special_tokens = True
        try:
            return self.backend.encode(text, add_special_tokens=False).ids
        finally:
            self.backend.encode_special_tokens = False

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts at once (the tokenizers library's own thread pool)."""
        return [e.ids for e in self.backend.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids, special tokens included, as transformers' tokenizer.decode(ids)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size()}, eot={self.eot_token})"
