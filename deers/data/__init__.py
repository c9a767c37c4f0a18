"""Files that ship inside the package (sources and licenses in NOTICE.md beside this file).

- `gpt2.tiktoken`: GPT-2's BPE ranks, read by `Tokenizer.gpt2()`;
- `tinystories-sample.txt.gz`: 2,316 TinyStories stories, the trainer's offline data.
"""
from __future__ import annotations

from pathlib import Path

GPT2_RANK_FILE = "gpt2.tiktoken"
TINYSTORIES_SAMPLE = "tinystories-sample.txt.gz"


def data_path(name: str) -> Path:
    """Path of a file shipped in `deers/data` (it exists in every install, editable or not)."""
    return Path(__file__).resolve().parent / name
