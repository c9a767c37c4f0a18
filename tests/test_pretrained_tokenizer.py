"""Tokenizer.from_pretrained: a tokenizer.json trained here with the `tokenizers` library on a few
paragraphs encodes and decodes exactly as transformers' tokenizer built from the same file; special
tokens are single ids; a post-processor's BOS is added as transformers adds it. No network."""
from __future__ import annotations

import json

import pytest

tokenizers = pytest.importorskip("tokenizers", reason="Tokenizer.from_pretrained reads tokenizer.json with the "
                                 "tokenizers library (pip install 'deers[hf]')")

from deers.tokenizer import Tokenizer, TokenizerUnavailable  # noqa: E402

PARAGRAPHS = [
    "Once upon a time there was a little fox who lived at the edge of a great forest. Every morning she ran "
    "down to the river to drink, and every evening she climbed the hill to watch the sun go down.",
    "The river was wide and slow. Fish jumped in it, and ducks floated on it, and the old heron stood in the "
    "shallows for hours without moving, waiting for his breakfast to swim past his long yellow legs.",
    "Numbers too: 1, 22, 333 and 4444 items cost $5.99 (or 6.00 with tax). Unicode as well: café, naïve, 東京, 🙂.",
    "   Leading spaces, tabs\tand\nnew lines\n\nshould survive the round trip exactly as they were written.",
]
SAMPLES = PARAGRAPHS + ["", "a", "Hello<|endoftext|>world", "<|endoftext|><|endoftext|>", "unseen wörds ✓ zzzqqq"]


def train(folder, bos: bool = False):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on PARAGRAPHS, saved as folder/tokenizer.json."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, processors, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>"]
    tok.train_from_iterator(PARAGRAPHS * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                               "bos_token": "<s>" if bos else None}))
    return folder


@pytest.mark.parametrize("bos", [False, True], ids=["gpt2-like", "with-bos"])
def test_encode_decode_equal_transformers(tmp_path, bos):
    transformers = pytest.importorskip("transformers")
    folder = train(tmp_path / "tok", bos)
    ours = Tokenizer.from_pretrained(folder)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == theirs.decode(ids), text
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == text
    assert ours.vocab_size() == len(theirs)


def test_special_tokens_are_single_ids(tmp_path):
    tok = Tokenizer.from_pretrained(train(tmp_path / "tok"))
    eot = tok.eot_token
    assert eot is not None and tok.encode("<|endoftext|>") == [eot]
    ids = tok.encode("the fox<|endoftext|>the river")
    assert ids.count(eot) == 1 and tok.decode(ids) == "the fox<|endoftext|>the river"
    assert eot not in tok.encode_ordinary("<|endoftext|>")  # as plain characters
    assert tok.decode(tok.encode_ordinary("<|endoftext|>")) == "<|endoftext|>"
    assert tok.encode_batch(["the fox", "<|endoftext|>"]) == [tok.encode("the fox"), [eot]]


def test_missing_tokenizer_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerUnavailable, match=f"{tmp_path / 'tokenizer.json'} is missing"):
        Tokenizer.from_pretrained(tmp_path)


def test_gpt2_without_a_folder_is_the_built_in_tokenizer():
    pytest.importorskip("tiktoken")
    tok = Tokenizer.from_pretrained("gpt2")
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
