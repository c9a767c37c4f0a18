"""Story text -> tokens (TextDataset, iter_stories) and token files (TokenBinDataset, both layouts)."""
from pathlib import Path

import numpy as np
import pytest

import deers
from deers.dataset import (TextDataset, TokenBinDataset, TokenFileError, TokenWriter, iter_stories, read_tokens,
                           write_tokens)
from deers.dataset.tokens import HEADER_BYTES, HEADER_MAGIC
from tiny_bpe import tiny_tokenizer

SHARED_STORIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories" / \
    "TinyStories-train-head-2MiB.txt"


# ---- iter_stories / TextDataset -------------------------------------------------------------------
def test_iter_stories_splits_strips_and_keeps_a_truncated_tail(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("First story.\n<|endoftext|>\n\n<|endoftext|>\r\nSecond, café.\r\nline two\n"
                     "<|endoftext|>\nThird is cut off mid-senten".encode())
    expected = ["First story.", "Second, café.\nline two", "Third is cut off mid-senten"]
    assert list(iter_stories(path)) == expected
    # tiny chunks split the separator and a multi-byte character across reads
    assert list(iter_stories(path, chunk_bytes=3)) == expected


def test_text_dataset_tokens(tmp_path):
    pytest.importorskip("tiktoken")
    tok = tiny_tokenizer(tmp_path)
    stories = ["Once upon a time there was a dog.", "The sun was warm.", "Lily liked to play"]
    path = tmp_path / "s.txt"
    path.write_text("\n<|endoftext|>\n".join(stories) + "\n")
    data = TextDataset(path, tok)
    expected = []
    for story in stories:
        expected += [tok.eot_token] + tok.encode(story)
    assert data.tokens.dtype == np.uint16 and data.num_stories == 3
    assert data.tokens.tolist() == expected and len(data) == len(expected)
    bin_path = data.write_bin(tmp_path / "s.bin")
    loaded = TokenBinDataset.load(bin_path, seq_len=4)
    assert loaded.header and loaded.tokens.tolist() == expected


@pytest.mark.skipif(not SHARED_STORIES.is_file(), reason="TinyStories sample not present")
def test_real_tinystories_sample_story_count():
    stories = list(iter_stories(SHARED_STORIES))
    assert len(stories) == 2317  # 2,316 complete stories + the truncated last one
    assert stories[0].startswith("One day, a little girl named Lily found a needle in her room.")


# ---- token files ----------------------------------------------------------------------------------
def make_tokens(n: int = 1000) -> np.ndarray:
    return (np.arange(n) * 37 % 50257).astype(np.uint16)


@pytest.mark.parametrize("header", [False, True])
def test_write_and_read_both_layouts(tmp_path, header):
    tokens = make_tokens()
    path = write_tokens(tmp_path / "t.bin", tokens, header=header)
    size = path.stat().st_size
    assert size == 2 * len(tokens) + (HEADER_BYTES if header else 0)
    if header:
        assert np.fromfile(path, dtype="<i4", count=3).tolist() == [HEADER_MAGIC, 1, len(tokens)]
    read, had_header = read_tokens(path)
    assert had_header == header and read.dtype == np.uint16
    np.testing.assert_array_equal(read, tokens)
    ds = TokenBinDataset.load(path, seq_len=16)
    assert len(ds) == 1000 and ds.num_windows == 1000 - 16 and ds.header == header
    assert not list(tmp_path.glob("*.tmp"))


def test_header_detection_errors(tmp_path):
    truncated = tmp_path / "trunc.bin"
    write_tokens(truncated, make_tokens(), header=True)
    truncated.write_bytes(truncated.read_bytes()[:-6])
    with pytest.raises(TokenFileError, match="truncated"):
        TokenBinDataset.load(truncated, 8)
    v2 = tmp_path / "v2.bin"
    header = np.zeros(256, "<i4")
    header[:3] = (HEADER_MAGIC, 2, 10)
    v2.write_bytes(header.tobytes() + bytes(40))
    with pytest.raises(TokenFileError, match="version 2"):
        TokenBinDataset.load(v2, 4)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(TokenFileError, match="whole number"):
        TokenBinDataset.load(odd, 1)
    with pytest.raises(TokenFileError, match="too few"):
        TokenBinDataset(make_tokens(8), seq_len=8)


def test_writer_rejects_out_of_range_and_leaves_nothing(tmp_path):
    with pytest.raises(TokenFileError, match="65535"):
        write_tokens(tmp_path / "big.bin", np.array([1, 70000]), header=True)
    assert list(tmp_path.iterdir()) == []


def test_writer_streams_chunks(tmp_path):
    tokens = make_tokens(500)
    with TokenWriter(tmp_path / "s.bin") as out:
        for chunk in np.array_split(tokens, 7):
            out.write(chunk)
        assert not (tmp_path / "s.bin").exists()  # only the temporary file exists until the end
    np.testing.assert_array_equal(read_tokens(tmp_path / "s.bin")[0], tokens)


@pytest.mark.parametrize("header", [False, True])
def test_sample_batch_shapes_shift_and_determinism(tmp_path, header):
    tokens = np.arange(3000, dtype=np.uint16)  # token value == position, so windows are easy to check
    ds = TokenBinDataset.load(write_tokens(tmp_path / "t.bin", tokens, header=header), seq_len=32)
    deers.manual_seed(123)
    x, y = ds.sample_batch(8)
    assert x.shape == (8, 32) and y.shape == (8, 32)
    assert x.dtype == deers.i64 and y.dtype == deers.i64 and x.device == deers.Device.CPU
    xn, yn = x.numpy(), y.numpy()
    np.testing.assert_array_equal(yn, xn + 1)  # targets are the next token
    np.testing.assert_array_equal(xn, xn[:, :1] + np.arange(32))  # each row is one contiguous window
    assert xn.min() >= 0 and yn.max() <= 2999
    deers.manual_seed(123)
    x2, _ = ds.sample_batch(8)
    np.testing.assert_array_equal(x2.numpy(), xn)
    x3, _ = ds.sample_batch(8)
    assert not np.array_equal(x3.numpy(), xn)


def test_sample_batch_reaches_the_last_window(tmp_path):
    ds = TokenBinDataset(np.arange(6, dtype=np.uint16), seq_len=4)  # windows start at 0 or 1
    deers.manual_seed(0)
    starts = {int(ds.sample_batch(16)[0].numpy()[i, 0]) for i in range(16)}
    assert starts == {0, 1}


@pytest.mark.parametrize("drop_last", [False, True])
def test_iter_batches_walks_non_overlapping_windows(tmp_path, drop_last):
    tokens = np.arange(1000, dtype=np.uint16)
    ds = TokenBinDataset(tokens, seq_len=10)  # (1000 - 1) // 10 = 99 windows
    batches = list(ds.iter_batches(batch_size=8, drop_last=drop_last))
    assert len(batches) == ds.num_eval_batches(8, drop_last=drop_last) == (12 if drop_last else 13)
    inputs = np.concatenate([x.numpy() for x, _ in batches])
    targets = np.concatenate([y.numpy() for _, y in batches])
    windows = 96 if drop_last else 99
    assert inputs.shape == (windows, 10) and inputs.dtype == np.int64
    np.testing.assert_array_equal(inputs.reshape(-1), np.arange(windows * 10))
    np.testing.assert_array_equal(targets, inputs + 1)
