"""examples/finetune.py and examples/generate.py in miniature, on a tiny Qwen3 folder built with
transformers and a tokenizer trained here: fine-tune two steps, save, then stream from the result;
and their command lines refuse bad values before any work. No network."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the example tests build their model with transformers (needs torch)")
transformers = pytest.importorskip("transformers", reason="the example tests build their model with transformers")
pytest.importorskip("tokenizers", reason="the examples read tokenizer.json with the tokenizers library")

from test_pretrained_tokenizer import PARAGRAPHS, train  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"pretrained_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Qwen3 with a trained tokenizer.json, and a text file to fine-tune on."""
    from hf_tiny_models import randomize

    root = tmp_path_factory.mktemp("example")
    train(root / "model")
    import tokenizers

    vocab = tokenizers.Tokenizer.from_file(str(root / "model" / "tokenizer.json")).get_vocab_size()
    config = transformers.Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=128, tie_word_embeddings=True)
    model = transformers.Qwen3ForCausalLM(config)
    randomize(model)
    model.save_pretrained(root / "model")
    (root / "text.txt").write_text("\n\n".join(PARAGRAPHS * 4))
    return root


def test_finetune_then_generate_from_the_saved_folder(folder, capsys):
    finetune, generate = load_example("finetune"), load_example("generate")
    out = folder / "tuned"
    result = finetune.main(["--model", str(folder / "model"), "--text-file", str(folder / "text.txt"), "--out", str(out),
                            "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--lr", "1e-3", "--log-every", "1"])
    printed = capsys.readouterr().out
    assert re.search(r"^step 2/2 \| loss \d+\.\d{4} \| ", printed, re.M), printed
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    tuned = transformers.AutoModelForCausalLM.from_pretrained(out)  # transformers reads what it wrote
    assert tuned.config.model_type == "qwen3" and len(result["losses"]) == 2
    text = generate.main(["--model", str(out), "--prompt", "The fox", "--max-new-tokens", "5", "--temperature", "0",
                          "--keep-going"])
    captured = capsys.readouterr()
    assert captured.out.startswith("The fox") and text.startswith("The fox")
    assert re.search(r"prefill: \d+ tokens at [\d.]+ tokens/s \| decode: 4 tokens at [\d.]+ tokens/s", captured.err), \
        captured.err


@pytest.mark.parametrize("name, argv, message", [
    ("generate", ["--top-p", "0"], "argument --top-p: must be a number in (0, 1], got 0"),
    ("generate", ["--top-p", "1.5"], "argument --top-p: must be a number in (0, 1], got 1.5"),
    ("generate", ["--temperature", "-1"], "argument --temperature: must be a number >= 0"),
    ("generate", ["--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive integer"),
    ("generate", ["--dtype", "f8"], "argument --dtype: invalid choice"),
    ("finetune", [], "the following arguments are required: --text-file"),
    ("finetune", ["--text-file", "/no/such/file.txt"], "--text-file /no/such/file.txt: no such file"),
    ("finetune", ["--text-file", "x", "--lr", "0"], "argument --lr: must be a positive number"),
])
def test_command_lines_refuse_bad_values(name, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        load_example(name).parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_missing_model_is_one_line(capsys):
    with pytest.raises(SystemExit, match="error: no folder ./no/model/here"):
        load_example("generate").main(["--model", "./no/model/here"])
