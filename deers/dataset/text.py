"""Story files: text with `<|endoftext|>` between stories, read in chunks and tokenized into one stream.

The token stream puts the end-of-text token *before* every story, as llm.c's data scripts do, so
consecutive stories are separated by it and a model can be prompted with it to start a new story.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .tokens import write_tokens

EOT_TEXT = "<|endoftext|>"
READ_BYTES = 1 << 22  # 4 MiB per read keeps memory flat on multi-GB files


def iter_stories(path: "str | Path", chunk_bytes: int = READ_BYTES,
                 on_read: "Callable[[int], None] | None" = None) -> Iterator[str]:
    """Yield each story of a text file, stripped, skipping empty pieces.

    The file is split on the separator's bytes (pure ASCII, so it can never fall inside a UTF-8
    multi-byte character) and each piece is decoded on its own; bytes that are not valid UTF-8
    (e.g. a character cut at the end of a truncated file) are replaced. A last story with no
    separator after it is still a story. `on_read(n)` is called after each read of n bytes (to
    drive a progress bar).
    """
    separator = EOT_TEXT.encode()
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            if on_read is not None:
                on_read(len(chunk))
            pieces = (tail + chunk).split(separator)
            tail = pieces.pop()  # may continue in the next chunk
            for piece in pieces:
                if story := _clean(piece):
                    yield story
    if story := _clean(tail):
        yield story


def _clean(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()


def stories_to_tokens(stories: list[str], tokenizer) -> np.ndarray:
    """One flat int64 array: [eot, story 0 ..., eot, story 1 ..., ...]."""
    eot = tokenizer.eot_token
    pieces = [np.asarray([eot] + ids, dtype=np.int64) for ids in tokenizer.encode_batch(stories)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


class TextDataset:
    """All stories of a (small enough to hold in memory) text file as one token array.

    `tokens` is uint16 when every id fits (vocabularies up to 65,536, like GPT-2's), else int64.
    """

    def __init__(self, path: "str | Path", tokenizer):
        self.path = Path(path)
        self.tokenizer = tokenizer
        stories = list(iter_stories(self.path))
        self.num_stories = len(stories)
        tokens = stories_to_tokens(stories, tokenizer)
        self.tokens = tokens.astype(np.uint16) if tokenizer.vocab_size() <= 1 << 16 else tokens

    def __len__(self) -> int:
        """Number of tokens."""
        return len(self.tokens)

    def write_bin(self, path: "str | Path", header: bool = True) -> Path:
        """Save the tokens as a uint16 token file (llm.c header format by default), atomically."""
        return write_tokens(path, self.tokens, header=header)
