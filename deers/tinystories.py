"""TinyStories -> train.bin / val.bin: download the text once, tokenize it once, reuse afterwards.

    train_bin, val_bin = prepare_tinystories("data/tinystories_gpt2")
    train = TokenBinDataset.load(train_bin, seq_len=256)

First run: downloads TinyStoriesV2-GPT4-train.txt and -valid.txt (resumable; a file only gets its
real name once complete and checked), then tokenizes each into a uint16 token file with llm.c's
header, every story preceded by `<|endoftext|>`. Later runs find the files and do nothing.
With `text_file=PATH` a local story file is used instead and its last `val_fraction` of stories
becomes the validation split. `prepare_sample(root)` does the same with the 2,316-story sample
that ships inside the package (deers/data), for training with no network.

`bits_per_byte` turns a validation loss into bits per byte of text, with `token_byte_lengths`
giving each token's UTF-8 length: a measure that does not depend on the tokenizer.
"""
from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import numpy as np

from .data import TINYSTORIES_SAMPLE, data_path
from .dataset.text import EOT_TEXT, iter_stories, stories_to_tokens
from .dataset.tokens import TokenWriter, read_tokens
from .download import DownloadError, download, progress_bar
from .errors import DeersError
from .tokenizer import Tokenizer

TINYSTORIES_URLS = ["https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"]
TRAIN_TEXT = "TinyStoriesV2-GPT4-train.txt"
VALID_TEXT = "TinyStoriesV2-GPT4-valid.txt"
STORIES_PER_BATCH = 2048  # stories handed to tiktoken's thread pool at once
META_FILE = "meta.json"
SAMPLE_TEXT = "TinyStories-sample.txt"  # the bundled sample, uncompressed into the data folder
SAMPLE_VAL_FRACTION = 0.05  # 116 of the sample's 2,316 stories (about 25k GPT-2 tokens) for validation


class StoryFileError(DeersError, ValueError):
    """A story text file cannot be split into train and validation stories (empty, or no separators)."""


def prepare_tinystories(root: "str | Path" = "data/tinystories_gpt2", tokenizer: Tokenizer | None = None,
                        text_file: "str | Path | None" = None, val_fraction: float = 0.01,
                        urls: "list[str] | str | None" = None, verbose: bool = True) -> tuple[Path, Path]:
    """Make sure `root/train.bin` and `root/val.bin` exist; return their paths.

    `tokenizer` defaults to GPT-2's. `urls` are base URLs (mirrors) that the two file names are
    appended to (default: the dataset's public address). `meta.json` records which tokenizer and
    source made the files; when they change, the files are rebuilt. Delete `root` to start over.
    """
    root = Path(root)
    tokenizer = tokenizer if tokenizer is not None else Tokenizer.gpt2()
    train_bin, val_bin = root / "train.bin", root / "val.bin"
    wanted = _identity(tokenizer, text_file, val_fraction)
    _drop_stale(root, wanted, (train_bin, val_bin))
    if not (train_bin.exists() and val_bin.exists()):
        root.mkdir(parents=True, exist_ok=True)
        if text_file is not None:
            _split_local_file(Path(text_file), train_bin, val_bin, tokenizer, val_fraction, verbose)
        else:
            for text_name, out in ((VALID_TEXT, val_bin), (TRAIN_TEXT, train_bin)):
                if not out.exists():
                    text = _download_text(text_name, root, urls)
                    _tokenize_file(text, out, tokenizer, verbose)
    (root / META_FILE).write_text(json.dumps(wanted, indent=1) + "\n")
    return train_bin, val_bin


def prepare_sample(root: "str | Path" = "data/tinystories_sample_gpt2", tokenizer: Tokenizer | None = None,
                   val_fraction: float = SAMPLE_VAL_FRACTION, verbose: bool = True) -> tuple[Path, Path]:
    """train.bin / val.bin made from the TinyStories sample inside the package (no network needed).

    The sample (the first 2,316 stories of the TinyStories training text, CDLA-Sharing-1.0, see
    deers/data/NOTICE.md) is uncompressed into `root`, then split like a local text file: its
    last `val_fraction` of stories become the validation split.
    """
    root = Path(root)
    text = root / SAMPLE_TEXT
    if not text.exists():
        root.mkdir(parents=True, exist_ok=True)
        partial = text.with_suffix(".txt.tmp")
        with gzip.open(data_path(TINYSTORIES_SAMPLE), "rb") as packed, open(partial, "wb") as out:
            out.write(packed.read())  # 2 MiB
        os.replace(partial, text)
    return prepare_tinystories(root, tokenizer=tokenizer, text_file=text, val_fraction=val_fraction, verbose=verbose)


def _identity(tokenizer: Tokenizer, text_file, val_fraction: float) -> dict:
    """What the token files depend on; a change means they must be rebuilt."""
    if text_file is None:
        source = {"source": "download", "files": [TRAIN_TEXT, VALID_TEXT]}
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"--text-file {path} does not exist")
        source = {"source": str(path.resolve()), "bytes": path.stat().st_size, "val_fraction": val_fraction}
    return {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size(), **source}


def _drop_stale(root: Path, wanted: dict, outputs: tuple[Path, ...]) -> None:
    """Remove token files made from another tokenizer or source (per `meta.json`)."""
    meta = root / META_FILE
    if meta.exists() and json.loads(meta.read_text()) != wanted:
        for path in outputs:
            path.unlink(missing_ok=True)
        meta.unlink()


def _download_text(name: str, root: Path, urls) -> Path:
    """Fetch one TinyStories text file into `root` (or find it there), with an offline hint on failure."""
    bases = [urls] if isinstance(urls, str) else list(urls or TINYSTORIES_URLS)
    try:
        return download([base.rstrip("/") + "/" + name for base in bases], root / name, desc=name,
                        check=_check_story_text)
    except DownloadError as err:
        error = DownloadError(
            f"could not download the TinyStories text {name}.\n{err}\nTo train without network access, "
            f"pass --data sample (the TinyStories sample inside the package) or --text-file PATH (a local "
            f"text file of stories separated by {EOT_TEXT} lines), or put {TRAIN_TEXT} and {VALID_TEXT} "
            f"into {root}.")
        error.reasons = err.reasons
        raise error from err


def _check_story_text(path: Path) -> None:
    """Reject a download that is empty or has no story separator in its first MiB (e.g. an HTML page)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if not head:
        raise ValueError(f"{path.name} is empty")
    if EOT_TEXT.encode() not in head:
        raise ValueError(f"{path.name} does not look like TinyStories text: no {EOT_TEXT} in its first MiB")


def _tokenize_file(text: Path, out: Path, tokenizer: Tokenizer, verbose: bool) -> None:
    """Tokenize every story of `text` into the token file `out`."""
    with TokenWriter(out, header=True) as writer, progress_bar(text.stat().st_size, f"tokenizing {text.name}") as bar:
        batch: list[str] = []
        for story in iter_stories(text, on_read=bar.update):
            batch.append(story)
            if len(batch) == STORIES_PER_BATCH:
                writer.write(stories_to_tokens(batch, tokenizer))
                batch = []
        writer.write(stories_to_tokens(batch, tokenizer))
    _check_written(out, writer.count, verbose)


def _split_local_file(text: Path, train_bin: Path, val_bin: Path, tokenizer: Tokenizer, val_fraction: float,
                      verbose: bool) -> None:
    """Tokenize a local story file: the first stories into train_bin, the last `val_fraction` into val_bin."""
    count = sum(1 for _ in iter_stories(text))
    if count < 2:
        raise StoryFileError(f"{text} holds {count} {'story' if count == 1 else 'stories'}: at least 2 are "
                             f"needed to split off a validation set, each story followed by a line {EOT_TEXT} "
                             f"(the TinyStories format)")
    num_val = min(count - 1, max(1, round(count * val_fraction)))
    num_train = count - num_val
    with TokenWriter(train_bin) as train, TokenWriter(val_bin) as val, \
            progress_bar(text.stat().st_size, f"tokenizing {text.name}") as bar:
        batch: list[str] = []
        batch_start = 0  # index of batch[0] among all stories
        for index, story in enumerate(iter_stories(text, on_read=bar.update)):
            if index == num_train or len(batch) == STORIES_PER_BATCH:  # never mix the splits in one batch
                (train if batch_start < num_train else val).write(stories_to_tokens(batch, tokenizer))
                batch, batch_start = [], index
            batch.append(story)
        (train if batch_start < num_train else val).write(stories_to_tokens(batch, tokenizer))
    _check_written(train_bin, train.count, verbose, f"{num_train:,} stories")
    _check_written(val_bin, val.count, verbose, f"{num_val:,} stories")


def _check_written(path: Path, count: int, verbose: bool, what: str = "") -> None:
    """Refuse an empty token file, re-open the file to check its header, and say what was written."""
    if count == 0:
        path.unlink(missing_ok=True)
        raise StoryFileError(f"{path} came out empty: its source holds no stories")
    read_tokens(path)  # re-open: the header and size must agree
    if verbose:
        print(f"wrote {path} ({count:,} tokens{', ' + what if what else ''})")


def bits_per_byte(loss_nats: float, num_tokens: int, num_bytes: int) -> float:
    """Mean loss in nats per token -> bits per byte of text: loss * tokens / (ln 2 * bytes).

    Per byte, not per token, so models with different tokenizers compare (nanochat's metric).
    """
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte: the {num_tokens} tokens hold no text bytes")
    return loss_nats * num_tokens / (math.log(2) * num_bytes)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 length in bytes of every token id (i64, (V,)); special tokens such as <|endoftext|>
    separate stories and count 0 bytes, as they are not text."""
    special = {tokenizer.encoding.encode_single_token(text) for text in tokenizer.encoding.special_tokens_set}
    lengths = np.zeros(tokenizer.vocab_size(), dtype=np.int64)  # (V,)
    for i in range(tokenizer.vocab_size()):
        if i not in special:
            lengths[i] = len(tokenizer.encoding.decode_single_token_bytes(i))
    return lengths
