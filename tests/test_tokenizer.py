"""Tokenizer on a small generated BPE vocabulary, and on GPT-2's when its offline cache is reachable."""
import os
from pathlib import Path

import pytest

pytest.importorskip("tiktoken")

from deers.tokenizer import GPT2_PAT_STR, Tokenizer, TokenizerUnavailable  # noqa: E402
from tiny_bpe import CORPUS, tiny_tokenizer  # noqa: E402

SHARED_CACHE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tiktoken-cache"
SHARED_GPT2_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gpt2-bpe" / "gpt2.tiktoken"
TEXTS = ["Once upon a time there was a little girl.", "héllo wörld ✓ 🦌", "", "  spaces\n\nand\ttabs  ",
         "x" * 300]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("bpe"), num_merges=100)


def test_tiny_round_trip_and_merges(tiny):
    for text in TEXTS:
        assert tiny.decode(tiny.encode(text)) == text
    ids = tiny.encode(CORPUS)
    assert len(ids) < len(CORPUS.encode()) // 2  # the merges are used
    assert max(ids) < tiny.vocab_size()


def test_tiny_eot_and_vocab(tiny):
    assert tiny.vocab_size() == 256 + 100 + 1
    assert tiny.eot_token == 356
    ids = tiny.encode("the dog<|endoftext|>the ball")
    assert ids.count(tiny.eot_token) == 1
    assert tiny.decode(ids) == "the dog<|endoftext|>the ball"
    assert tiny.eot_token not in tiny.encode_ordinary("<|endoftext|>")


def test_tiny_encode_batch_matches_encode(tiny):
    texts = TEXTS + ["a<|endoftext|>b"] * 5
    assert tiny.encode_batch(texts, num_threads=2) == [tiny.encode(t) for t in texts]
    assert tiny.encode_batch([]) == []


def test_from_tiktoken_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tiktoken"):
        Tokenizer.from_tiktoken_file(tmp_path / "nope.tiktoken")


def test_gpt2_unavailable_says_how_to_fix(monkeypatch, tmp_path):
    import tiktoken

    def offline(name):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(TokenizerUnavailable) as info:
        Tokenizer.gpt2()
    message = str(info.value)
    assert "TIKTOKEN_CACHE_DIR" in message and str(tmp_path) in message
    assert "from_tiktoken_file" in message and "network is unreachable" in message


# ---- the real GPT-2 vocabulary (offline cache) ---------------------------------------------------
def _gpt2_cache() -> str | None:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    return str(SHARED_CACHE) if SHARED_CACHE.is_dir() else None


needs_gpt2 = pytest.mark.skipif(_gpt2_cache() is None, reason="no offline tiktoken cache for GPT-2")


@pytest.fixture(scope="module")
def gpt2():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", _gpt2_cache())
        return Tokenizer.gpt2()


@needs_gpt2
def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_token == 50256 and gpt2.vocab_size() == 50257
    assert gpt2.encode("<|endoftext|>") == [50256]
    for text in TEXTS:
        assert gpt2.decode(gpt2.encode(text)) == text


@needs_gpt2
def test_gpt2_pattern_matches_tiktoken(gpt2):
    assert gpt2.encoding._pat_str == GPT2_PAT_STR


@pytest.mark.skipif(not SHARED_GPT2_FILE.is_file(), reason="gpt2.tiktoken rank file not present")
@needs_gpt2
def test_gpt2_from_rank_file_matches(gpt2):
    local = Tokenizer.from_tiktoken_file(SHARED_GPT2_FILE, name="gpt2-local")
    assert local.eot_token == 50256 and local.vocab_size() == 50257
    for text in TEXTS + [CORPUS, "a<|endoftext|>b"]:
        assert local.encode(text) == gpt2.encode(text)
