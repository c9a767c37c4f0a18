"""The TinyStories pipeline end to end: download from a local server (or a local file), tokenize, reuse."""
import numpy as np
import pytest

pytest.importorskip("tiktoken")

import deers.tinystories as tinystories  # noqa: E402
from deers.dataset import TokenBinDataset, read_tokens  # noqa: E402
from deers.download import DownloadError  # noqa: E402
from deers.tinystories import TRAIN_TEXT, VALID_TEXT, prepare_tinystories  # noqa: E402
from local_http_server import LocalServer, closed_port_url  # noqa: E402
from tiny_bpe import tiny_tokenizer  # noqa: E402

SENTENCES = ["Once upon a time there was a little girl named Lily.", "She liked to play in the park.",
             "One day the dog found a big red ball.", "The sun was warm and the sky was blue.",
             "Tom said: 'Let us play again tomorrow!'", "They went home and had a nap."]


def make_stories(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), rng.integers(1, 5))) for _ in range(n)]


def story_file_bytes(stories: list[str]) -> bytes:
    return "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode()


def expected_tokens(stories: list[str], tok) -> list[int]:
    out = []
    for story in stories:
        out += [tok.eot_token] + tok.encode(story)
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture()
def corpus():
    train, valid = make_stories(60, seed=0), make_stories(8, seed=1)
    files = {f"/ts/{TRAIN_TEXT}": story_file_bytes(train), f"/ts/{VALID_TEXT}": story_file_bytes(valid)}
    return train, valid, files


def test_downloads_tokenizes_and_then_reuses(tmp_path, tok, corpus):
    train, valid, files = corpus
    root = tmp_path / "ts"
    with LocalServer(files, drop_after={f"/ts/{TRAIN_TEXT}": 500}) as server:
        train_bin, val_bin = prepare_tinystories(root, tokenizer=tok, urls=server.url("/ts/"), verbose=False)
        assert (train_bin, val_bin) == (root / "train.bin", root / "val.bin")
        assert read_tokens(train_bin)[1] is True  # llm.c header layout
        assert TokenBinDataset.load(train_bin, 8).tokens.tolist() == expected_tokens(train, tok)
        assert TokenBinDataset.load(val_bin, 8).tokens.tolist() == expected_tokens(valid, tok)
        assert (root / TRAIN_TEXT).read_bytes() == files[f"/ts/{TRAIN_TEXT}"]
        assert [r for r in server.requests if r[1]] == [(f"/ts/{TRAIN_TEXT}", "bytes=500-")]  # resumed
        assert not list(root.glob("*.part")) and not list(root.glob("*.tmp"))

        seen, stamp = len(server.requests), train_bin.stat().st_mtime_ns
        prepare_tinystories(root, tokenizer=tok, urls=server.url("/ts/"), verbose=False)
        assert len(server.requests) == seen and train_bin.stat().st_mtime_ns == stamp  # nothing redone


def test_changing_the_tokenizer_rebuilds_without_downloading(tmp_path, tok, corpus):
    train, _, files = corpus
    root = tmp_path / "ts"
    with LocalServer(files) as server:
        prepare_tinystories(root, tokenizer=tok, urls=server.url("/ts/"), verbose=False)
        seen = len(server.requests)
        smaller = tiny_tokenizer(tmp_path, num_merges=30)
        train_bin, _ = prepare_tinystories(root, tokenizer=smaller, urls=server.url("/ts/"), verbose=False)
        assert len(server.requests) == seen
    assert read_tokens(train_bin)[0].tolist() == expected_tokens(train, smaller)


def test_offline_failure_names_the_text_file_flag(tmp_path, tok):
    with pytest.raises(DownloadError) as info:
        prepare_tinystories(tmp_path / "ts", tokenizer=tok, urls=closed_port_url("/ts/"), verbose=False)
    assert "--text-file" in str(info.value) and VALID_TEXT in str(info.value)
    assert not list((tmp_path / "ts").glob("*.bin"))


def test_a_page_that_is_not_story_text_is_rejected(tmp_path, tok):
    files = {f"/ts/{VALID_TEXT}": b"<html>Sign in to continue</html>"}
    with LocalServer(files) as server:
        with pytest.raises(DownloadError, match="does not look like TinyStories"):
            prepare_tinystories(tmp_path / "ts", tokenizer=tok, urls=server.url("/ts/"), verbose=False)
    assert not list((tmp_path / "ts").iterdir())


@pytest.mark.parametrize("batch", [4, 2048])
def test_local_text_file_split(tmp_path, tok, monkeypatch, batch):
    monkeypatch.setattr(tinystories, "STORIES_PER_BATCH", batch)
    stories = make_stories(50, seed=2)
    text = tmp_path / "stories.txt"
    text.write_bytes(story_file_bytes(stories) + b"A last story cut off mid-sent")
    stories.append("A last story cut off mid-sent")
    train_bin, val_bin = prepare_tinystories(tmp_path / "ts", tokenizer=tok, text_file=text, val_fraction=0.1,
                                             verbose=False)
    assert read_tokens(train_bin)[0].tolist() == expected_tokens(stories[:46], tok)
    assert read_tokens(val_bin)[0].tolist() == expected_tokens(stories[46:], tok)  # round(51 * 0.1) = 5


def test_local_text_file_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="--text-file"):
        prepare_tinystories(tmp_path / "ts", tokenizer=tok, text_file=tmp_path / "missing.txt", verbose=False)
    one = tmp_path / "one.txt"
    one.write_text("Only one story.\n<|endoftext|>\n")
    with pytest.raises(ValueError, match="at least 2"):
        prepare_tinystories(tmp_path / "ts", tokenizer=tok, text_file=one, verbose=False)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_tinystories(tmp_path / "ts", tokenizer=tok, text_file=one, val_fraction=1.0, verbose=False)
