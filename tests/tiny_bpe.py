"""A small byte-level BPE vocabulary trained on the spot, so tokenizer tests need no downloaded files.

`tiny_tokenizer(folder)` trains ~100 merges on a short corpus, writes them as a `.tiktoken` rank
file (lines `base64(token_bytes) rank`, the format of GPT-2's file) and loads it with
`Tokenizer.from_tiktoken_file`; `<|endoftext|>` gets the next free id.
"""
from __future__ import annotations

import base64
import re
from collections import Counter
from pathlib import Path

from deers.tokenizer import Tokenizer

CORPUS = ("Once upon a time there was a little girl named Lily. She liked to play in the park with her dog. "
          "One day the dog found a big red ball. They played with the ball all day and then went home. "
          "The sun was warm and the sky was blue. Tom said: 'Let us play again tomorrow!' 123 456.\n") * 3


def train_byte_bpe(text: str, num_merges: int) -> dict[bytes, int]:
    """Ranks for the 256 single bytes, then the most frequent adjacent pair merged, `num_merges` times."""
    ranks = {bytes([i]): i for i in range(256)}
    words = [[bytes([b]) for b in w.encode()] for w in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", text)]
    for _ in range(num_merges):
        counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not counts:
            break
        (left, right), _ = counts.most_common(1)[0]
        ranks[left + right] = len(ranks)
        words = [_merge(word, left, right) for word in words]
    return ranks


def _merge(word: list[bytes], left: bytes, right: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def write_tiktoken_file(ranks: dict[bytes, int], path: Path) -> Path:
    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in by_rank]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_tokenizer(folder: Path, num_merges: int = 100) -> Tokenizer:
    path = write_tiktoken_file(train_byte_bpe(CORPUS, num_merges), Path(folder) / "tiny.tiktoken")
    return Tokenizer.from_tiktoken_file(path, name="tiny")
