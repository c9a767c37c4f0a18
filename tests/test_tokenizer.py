"""Tokenizer on a small generated BPE vocabulary, and GPT-2's from the rank file inside the package:
known ids always, and exactly tiktoken's own "gpt2" tokens when tiktoken's download cache is here."""
import hashlib
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("tiktoken")

from deers.data import GPT2_RANK_FILE, data_path  # noqa: E402
from deers.tokenizer import GPT2_PAT_STR, GPT2_RANKS_SHA256, Tokenizer, TokenizerUnavailable  # noqa: E402
from tiny_bpe import CORPUS, tiny_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SHARED_CACHE = SHARED_DATA / "tiktoken-cache"
SHARED_STORIES = SHARED_DATA / "tinystories" / "TinyStories-train-head-2MiB.txt"
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


def test_from_tiktoken_file_leaves_tiktoken_cache_alone(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tiny_tokenizer(tmp_path, num_merges=10)
    assert list(cache.iterdir()) == []  # tiktoken's load_tiktoken_bpe would have copied the file in


def test_rank_file_with_a_bad_line_names_it(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("YQ== 0\nnot-a-rank-line\n")
    with pytest.raises(ValueError, match="line 2"):
        Tokenizer.from_tiktoken_file(path)


# ---- GPT-2: the rank file inside the package --------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


def test_gpt2_known_ids(gpt2):
    assert gpt2.name == "gpt2"
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Once upon a time") == [4874, 2402, 257, 640]
    assert gpt2.eot_token == 50256 and gpt2.vocab_size() == 50257
    assert gpt2.encode("<|endoftext|>") == [50256]
    for text in TEXTS:
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_pattern_is_tiktokens():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert GPT2_PAT_STR == r50k_pat_str


def test_gpt2_needs_no_network_and_no_cache(monkeypatch, tmp_path):
    import tiktoken
    import tiktoken.load

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    for module, name in ((tiktoken, "get_encoding"), (tiktoken.load, "read_file"), (tiktoken.load, "read_file_cached")):
        monkeypatch.setattr(module, name, offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    assert Tokenizer.gpt2().encode("Hello world") == [15496, 995]
    assert list(tmp_path.iterdir()) == []


def test_gpt2_rank_file_ships_in_the_package():
    path = data_path(GPT2_RANK_FILE)
    assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == GPT2_RANKS_SHA256
    assert (path.parent / "GPT2-LICENSE.txt").read_text().startswith("Modified MIT License")


def test_gpt2_damaged_or_missing_rank_file_says_so(monkeypatch, tmp_path):
    import deers.tokenizer as tokenizer_module

    damaged = tmp_path / GPT2_RANK_FILE
    damaged.write_bytes(data_path(GPT2_RANK_FILE).read_bytes()[:-10])
    monkeypatch.setattr(tokenizer_module, "data_path", lambda name: tmp_path / name)
    with pytest.raises(TokenizerUnavailable, match="damaged.*reinstall"):
        Tokenizer.gpt2()
    damaged.unlink()
    with pytest.raises(TokenizerUnavailable, match="missing.*reinstall"):
        Tokenizer.gpt2()


def test_without_tiktoken_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken now raises ImportError
    with pytest.raises(TokenizerUnavailable, match=r"pip install 'deers\[train\]'"):
        Tokenizer.gpt2()


# ---- the same tokens as tiktoken's own "gpt2" (needs its cached download: TIKTOKEN_CACHE_DIR) -------
def _tiktoken_cache() -> str | None:
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    return str(SHARED_CACHE) if SHARED_CACHE.is_dir() else None


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's own "gpt2" encoding, from its offline cache (skips without one: no download in tests)."""
    import tiktoken

    cache = _tiktoken_cache()
    if cache is None:
        pytest.skip("tiktoken's GPT-2 files are not cached here (set TIKTOKEN_CACHE_DIR to compare with them)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", cache)
        mp.setattr(tiktoken.load, "read_file", _no_download)
        try:
            return tiktoken.get_encoding("gpt2")
        except ConnectionError as err:
            pytest.skip(f"tiktoken's GPT-2 files are not all in {cache} ({err})")


def _no_download(blobpath: str) -> bytes:
    raise ConnectionError(f"the test would have downloaded {blobpath}")


def test_gpt2_matches_tiktokens_own_encoding(gpt2, tiktoken_gpt2):
    assert gpt2.vocab_size() == tiktoken_gpt2.n_vocab and gpt2.eot_token == tiktoken_gpt2.eot_token
    assert gpt2.encoding._pat_str == tiktoken_gpt2._pat_str
    assert gpt2.encoding._mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    texts = TEXTS + [CORPUS, "a<|endoftext|>b", "def f(x):\n\treturn x ** 2  # ok?\n", "I'm you're they'll 12345"]
    for text in texts:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
        assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.mark.skipif(not SHARED_STORIES.is_file(), reason="the TinyStories text file of ../shared is not present")
def test_gpt2_matches_tiktoken_on_real_stories(gpt2, tiktoken_gpt2):
    text = SHARED_STORIES.read_text()[:200_000]
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
