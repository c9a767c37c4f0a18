"""The examples' command lines: every invalid value is an argparse error before any work starts,
defaults that depend on other flags follow them, and --help shows each default once."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

import deers.dataset.mnist as mnist_dataset
from local_http_server import closed_port_url

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ("tinystories_train", "sample", "mnist_train")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples():
    pytest.importorskip("tiktoken")  # the trainer and the sampler import the tokenizer
    return {name: load_example(name) for name in SCRIPTS}


def parse_error(module, argv: list[str], capsys) -> str:
    """The argparse error message for argv (argparse exits with status 2 and writes to stderr)."""
    with pytest.raises(SystemExit) as info:
        module.parse_args(argv)
    assert info.value.code == 2, f"{argv} was accepted"
    return capsys.readouterr().err


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "a-file").write_text("x")
    return tmp_path


TRAINER_ERRORS = [
    (["--n-head", "0"], "argument --n-head: must be a positive integer, got 0"),
    (["--n-head", "-2"], "argument --n-head: must be a positive integer, got -2"),
    (["--n-embd", "128", "--n-head", "6"], "--n-head 6 must divide --n-embd 128"),
    (["--n-embd", "96", "--n-head", "32"], "--n-head 32 must divide --n-embd 96 into heads of an even size"),
    (["--n-embd", "100"], "--n-embd 100 is not a multiple of 32"),
    (["--steps", "0"], "argument --steps: must be a positive integer"),
    (["--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["--seq-len", "-1"], "argument --seq-len: must be a positive integer"),
    (["--n-layer", "0"], "argument --n-layer: must be a positive integer"),
    (["--mlp-hidden", "0"], "argument --mlp-hidden: must be a positive integer"),
    (["--lr", "0"], "argument --lr: must be a positive number"),
    (["--lr", "nan"], "argument --lr: must be a positive number"),
    (["--weight-decay", "-0.1"], "argument --weight-decay: must be a number >= 0"),
    (["--grad-clip", "-1"], "argument --grad-clip: must be a number >= 0"),
    (["--warmup", "-1"], "argument --warmup: must be an integer >= 0"),
    (["--steps", "10", "--warmup", "6", "--warmdown", "5"], "--warmup 6 + --warmdown 5 exceed --steps 10"),
    (["--eval-batches", "0"], "argument --eval-batches: must be a positive integer"),
    (["--sample-tokens", "0"], "argument --sample-tokens: must be a positive integer"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be a positive integer"),
    (["--val-fraction", "1"], "argument --val-fraction: must be a number strictly between 0 and 1"),
    (["--data", "everything"], "argument --data: invalid choice"),
    (["--optimizer", "sgd"], "argument --optimizer: invalid choice"),
    (["--grad-accum", "0"], "argument --grad-accum: must be a positive integer"),
    (["--muon-lr", "-0.02"], "argument --muon-lr: must be a positive number"),
    (["--device", "gpu"], "--device gpu: unknown device kind 'gpu'"),
    (["--device", "cuda:x"], "--device cuda:x:"),
    (["--text-file", "{tmp}/missing.txt"], "--text-file {tmp}/missing.txt: no such file"),
    (["--text-file", "{tmp}/empty.txt"], "--text-file {tmp}/empty.txt: the file is empty"),
    (["--tokenizer-file", "{tmp}/missing.tiktoken"], "--tokenizer-file {tmp}/missing.tiktoken: no such file"),
    (["--text-file", "{tmp}/a-file", "--data", "sample"], "--text-file and --data sample both choose the data"),
]


@pytest.mark.parametrize("argv, message", TRAINER_ERRORS, ids=[" ".join(a) for a, _ in TRAINER_ERRORS])
def test_trainer_rejects_invalid_values_before_any_work(examples, files, capsys, argv, message):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    assert message.replace("{tmp}", str(files)) in parse_error(examples["tinystories_train"], argv, capsys)


def test_trainer_dtype_without_its_package_is_a_parse_error(examples, monkeypatch, capsys):
    trainer = examples["tinystories_train"]

    def as_dtype(name):  # what deers.dtype.as_dtype says for bf16 when ml_dtypes is missing
        raise TypeError("dtype bf16 needs the optional package ml_dtypes: pip install 'deers[bf16]'")

    monkeypatch.setattr(trainer, "as_dtype", as_dtype)
    assert "--dtype bf16: dtype bf16 needs the optional package ml_dtypes" in \
        parse_error(trainer, ["--dtype", "bf16"], capsys)


def test_trainer_sizes_follow_the_width(examples):
    parse = examples["tinystories_train"].parse_args
    default = parse([])
    assert (default.n_embd, default.n_head, default.mlp_hidden) == (192, 6, 768)  # docs/design.md's model
    assert default.steps == 12000 and default.data == "auto"
    narrow = parse(["--n-embd", "128"])
    assert (narrow.n_head, narrow.mlp_hidden) == (4, 512)  # heads of 32, MLP at 4x
    assert (parse(["--n-embd", "64"]).n_head, parse(["--n-embd", "64"]).mlp_hidden) == (2, 256)
    given = parse(["--n-embd", "128", "--n-head", "8", "--mlp-hidden", "300"])
    assert (given.n_head, given.mlp_hidden) == (8, 300)
    assert parse(["--resume"]).steps is None  # decided by the checkpoint
    assert parse(["--text-file", __file__]).data == "file"


SAMPLE_ERRORS = [
    (["--temperature", "-1"], "argument --temperature: must be a number >= 0, got -1"),
    (["--top-k", "-5"], "argument --top-k: must be an integer >= 0"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive integer"),
    (["--num-samples", "0"], "argument --num-samples: must be a positive integer"),
    (["--device", "tpu"], "--device tpu: unknown device kind"),
    (["--tokenizer-file", "{tmp}/missing.tiktoken"], "--tokenizer-file {tmp}/missing.tiktoken: no such file"),
]


@pytest.mark.parametrize("argv, message", SAMPLE_ERRORS, ids=[" ".join(a) for a, _ in SAMPLE_ERRORS])
def test_sample_rejects_invalid_values(examples, files, capsys, argv, message):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    assert message.replace("{tmp}", str(files)) in parse_error(examples["sample"], argv, capsys)


MNIST_ERRORS = [
    (["--epochs", "0"], "argument --epochs: must be a positive integer"),
    (["--batch-size", "-8"], "argument --batch-size: must be a positive integer"),
    (["--lr=-1e-3"], "argument --lr: must be a positive number"),
    (["--momentum", "1"], "argument --momentum: must lie in [0, 1)"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be a number >= 0"),
    (["--limit", "0"], "argument --limit: must be a positive integer"),
    (["--device", "gpu"], "--device gpu: unknown device kind"),
    (["--data", "{tmp}/a-file"], "--data {tmp}/a-file: not a folder"),
]


@pytest.mark.parametrize("argv, message", MNIST_ERRORS, ids=[" ".join(a) for a, _ in MNIST_ERRORS])
def test_mnist_rejects_invalid_values(files, capsys, argv, message):
    module = load_example("mnist_train")
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    assert message.replace("{tmp}", str(files)) in parse_error(module, argv, capsys)


@pytest.mark.parametrize("name", ["sample", "mnist_train"])
def test_missing_safetensors_is_a_message(name, tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    module = load_example(name)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if it were not installed
    with pytest.raises(SystemExit, match=r"needs the safetensors package .*: pip install -e '\.\[train\]'"):
        module.main(["--out", str(tmp_path)] if name == "mnist_train" else ["--checkpoint", str(tmp_path)])


def test_mnist_offline_error_names_the_data_flag(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    monkeypatch.setattr(mnist_dataset, "MNIST_MIRRORS", [closed_port_url("/mnist/")])  # offline, at once
    with pytest.raises(SystemExit) as info:
        load_example("mnist_train").main(["--data", str(tmp_path / "mnist"), "--out", str(tmp_path / "run")])
    message = str(info.value)
    assert message.startswith("error: could not download train-images-idx3-ubyte.gz")
    assert "--data DIR" in message and "t10k-labels-idx1-ubyte" in message


def test_mnist_bad_idx_file_is_a_message(tmp_path):
    pytest.importorskip("safetensors")
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 5 items declared, 3 present
    with pytest.raises(SystemExit, match="^error: .*truncated"):
        load_example("mnist_train").main(["--data", str(tmp_path), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_each_default_once(name, capsys):
    pytest.importorskip("tiktoken")
    with pytest.raises(SystemExit):
        load_example(name).parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])  # one block per option
    assert len(options) > 5
    for block in options:
        assert len(re.findall(r"\(default", " ".join(block.split()))) <= 1, block
