"""examples/tinystories_train.py and examples/sample.py end to end, on a generated story file with a
small BPE vocabulary (no network, no ../shared): log format, checkpoints, exact resume after
Ctrl-C, extending a run and its schedule, the bundled-sample fallback, mixed precision, sampling,
and the messages a user gets instead of tracebacks."""
import importlib.util
import math
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("safetensors")

import deers  # noqa: E402
import deers.tinystories as tinystories  # noqa: E402
from deers import checkpoint  # noqa: E402
from deers.optim import LRSchedule  # noqa: E402
from local_http_server import closed_port_url  # noqa: E402
from tiny_bpe import train_byte_bpe, write_tiktoken_file  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOG_LINE = re.compile(r"^step (\d+)/(\d+) \| train_loss (\d+\.\d{4}) \| lr (\d\.\d\de[-+]\d\d) \| (\d+\.\d{3})s \| "
                      r"(\d+) tok/s$")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_stories(count: int, seed: int) -> str:
    """Short stories from a small grammar, separated like TinyStories."""
    rng = np.random.default_rng(seed)
    names, animals = ["Lily", "Tom", "Ben", "Mia", "Sam"], ["cat", "dog", "bird", "fish"]
    adjectives, verbs = ["little", "big", "happy", "red"], ["play", "run", "jump", "sing"]
    stories = []
    for _ in range(count):
        name, animal, adjective, verb = (rng.choice(options) for options in (names, animals, adjectives, verbs))
        stories.append(f"Once upon a time there was a {adjective} {animal} named {name}. {name} liked to {verb}. "
                       f"One day {name} went to {verb} with a friend. They were happy.")
    return "\n<|endoftext|>\n".join(stories)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stories")
    text = make_stories(300, seed=0)
    (folder / "stories.txt").write_text(text)
    write_tiktoken_file(train_byte_bpe(text[:4000], 60), folder / "tiny.tiktoken")
    return folder


@pytest.fixture(scope="module")
def trainer():
    return load_example("tinystories_train")


def tiny_args(corpus: Path, out: Path, steps: "int | None", *extra: str, data: str = "text") -> list[str]:
    """A tiny run; steps=None leaves --steps out (a --resume then continues to the run's own total)."""
    source = ["--text-file", str(corpus / "stories.txt"), "--data-dir", str(corpus / "data")] if data == "text" \
        else ["--data-dir", str(corpus / f"data-{data}")]
    return [*source, "--tokenizer-file", str(corpus / "tiny.tiktoken"), "--out", str(out),
            *(["--steps", str(steps)] if steps is not None else []), "--batch-size", "4",
            "--seq-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--mlp-hidden", "32",
            "--lr", "3e-3", "--sample-tokens", "12", "--eval-batches", "2", "--val-fraction", "0.05", *extra]


def log_lines(text: str) -> list[re.Match]:
    return [LOG_LINE.match(line) for line in text.splitlines() if line.startswith("step ") and "train_loss" in line]


def test_trainer_end_to_end(trainer, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    history = trainer.main(tiny_args(corpus, out, 40, "--log-every", "10", "--eval-every", "20",
                                     "--sample-every", "20", "--checkpoint-every", "20"))
    lines = capsys.readouterr().out.splitlines()
    logs = [LOG_LINE.match(line) for line in lines if line.startswith("step ") and "train_loss" in line]
    assert [int(m.group(1)) for m in logs] == [1, 10, 20, 30, 40] and all(m.group(2) == "40" for m in logs)
    assert [line.split(" | ")[0] for line in lines if "val_loss" in line] == ["step 20", "step 40"]
    samples = [line for line in lines if line.startswith("sample: ")]
    assert len(samples) == 2 and all(s.startswith("sample: Once upon a time") for s in samples)
    saved = [line for line in lines if line.startswith("saved ")]  # one line per checkpoint, periodic or final
    assert saved == [f"saved {out / 'ckpt.safetensors'} at step 20", f"saved {out / 'ckpt.safetensors'} at step 40"]
    assert any(line.startswith(f"data: {corpus / 'stories.txt'}") for line in lines)  # says which data

    vocab = 256 + 60 + 1
    assert len(history["train"]) == 40 and [s for s, _ in history["val"]] == [20, 40]
    assert history["val"][-1][1] < math.log(vocab) - 1.0  # it learned something
    tensors, metadata = checkpoint.read(out / "ckpt.safetensors")
    assert "wte.weight" in tensors and "optim.wte.weight.exp_avg" in tensors
    assert tensors["lm_head.weight"].shape == (vocab, 16) and tensors["wte.weight"].dtype == np.float32
    assert metadata["step"] == "40"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "loss.png").stat().st_size > 0
    else:
        assert any("matplotlib is not installed" in line for line in lines)

    sampler = load_example("sample")
    args = ["--checkpoint", str(out / "ckpt.safetensors"), "--max-new-tokens", "20", "--seed", "3"]
    capsys.readouterr()
    first, again = sampler.main(args), sampler.main(args)
    assert first == again and first[0].startswith("Once upon a time")
    assert f"checkpoint: {out / 'ckpt.safetensors'} (step 40" in capsys.readouterr().err  # says what it loaded
    assert sampler.main(args + ["--temperature", "0"]) == sampler.main(args + ["--temperature", "0", "--seed", "9"])
    for folder in (["--checkpoint", str(out)], ["--out", str(out)]):  # the run folder, as the trainer's --out
        assert sampler.main(folder + args[2:]) == first
        assert f"checkpoint: {out / 'ckpt.safetensors'}" in capsys.readouterr().err


def test_resume_after_ctrl_c_continues_with_identical_losses(trainer, corpus, tmp_path, monkeypatch, capsys):
    common = ("--log-every", "5", "--eval-every", "10", "--sample-every", "100", "--checkpoint-every", "100",
              "--warmup", "3", "--warmdown", "8")
    straight = trainer.main(tiny_args(corpus, tmp_path / "a", 24, *common))

    evaluate = trainer.evaluate
    calls = []

    def evaluate_then_ctrl_c(*args, **kwargs):  # Ctrl-C arrives during the evaluation at step 10
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate_then_ctrl_c)
    stopped = trainer.main(tiny_args(corpus, tmp_path / "b", 24, *common))
    assert len(stopped["train"]) == 10 and "interrupted" in capsys.readouterr().out
    assert checkpoint.read(tmp_path / "b" / "ckpt.safetensors")[1]["step"] == "10"

    resumed = trainer.main(tiny_args(corpus, tmp_path / "b", None, *common, "--resume"))  # no --steps: the run's 24
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 10 of 24" in out and "extending" not in out
    assert resumed == straight  # every train loss and val loss, bit for bit
    final_a, _ = checkpoint.read(tmp_path / "a" / "ckpt.safetensors")
    final_b, _ = checkpoint.read(tmp_path / "b" / "ckpt.safetensors")
    for name, value in final_a.items():
        np.testing.assert_array_equal(final_b[name], value, err_msg=name)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_low_precision_training_keeps_f32_master_weights(trainer, corpus, tmp_path, dtype, capsys):
    if dtype == "bf16" and not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes")
    common = ("--log-every", "100", "--eval-every", "100", "--sample-every", "100", "--checkpoint-every", "100")
    reference = trainer.main(tiny_args(corpus, tmp_path / "f32", 12, *common))
    low = trainer.main(tiny_args(corpus, tmp_path / dtype, 12, *common, "--dtype", dtype))
    first, first_low = reference["train"][0][1], low["train"][0][1]
    assert abs(first_low - first) < (0.05 if dtype == "bf16" else 0.01)  # same weights and batch, rounded
    assert low["train"][-1][1] < low["train"][0][1] - 0.3
    tensors, _ = checkpoint.read(tmp_path / dtype / "ckpt.safetensors")
    assert all(value.dtype == np.float32 for value in tensors.values())


def test_resume_without_a_checkpoint_says_so(trainer, corpus, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        trainer.main(tiny_args(corpus, tmp_path / "none", 5, "--resume"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ckpt.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read"):
        trainer.main(tiny_args(corpus, tmp_path / "junk", None, "--resume"))


QUIET = ("--log-every", "1", "--eval-every", "100", "--sample-every", "100", "--checkpoint-every", "100")


def test_resume_of_a_finished_run_trains_no_further(trainer, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    trainer.main(tiny_args(corpus, out, 6, *QUIET))
    before = (out / "ckpt.safetensors").read_bytes()
    capsys.readouterr()
    assert trainer.main(tiny_args(corpus, out, None, *QUIET, "--resume")) == {"train": [], "val": []}
    text = capsys.readouterr().out
    assert "has finished its 6 steps" in text and "--resume --steps N" in text and not log_lines(text)
    assert (out / "ckpt.safetensors").read_bytes() == before
    with pytest.raises(SystemExit, match="already at step 6"):
        trainer.main(tiny_args(corpus, out, 4, *QUIET, "--resume"))


def test_resume_with_more_steps_extends_on_the_stated_schedule(trainer, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    trainer.main(tiny_args(corpus, out, 20, *QUIET))  # warmup 2, warmdown 4 (the defaults for 20 steps)
    capsys.readouterr()
    history = trainer.main(tiny_args(corpus, out, 30, *QUIET, "--resume"))
    text = capsys.readouterr().out
    assert "extending the run from 20 to 30 steps" in text and "(warmup 3, warmdown 6)" in text
    schedule = LRSchedule(3e-3, 30, warmup=3, warmdown=6)  # what --help promises: a 30-step run's schedule
    logs = log_lines(text)
    assert [int(m.group(1)) for m in logs] == list(range(21, 31)) and all(m.group(2) == "30" for m in logs)
    assert [m.group(4) for m in logs] == [f"{schedule(step - 1):.2e}" for step in range(21, 31)]
    assert len(history["train"]) == 30 and checkpoint.read(out / "ckpt.safetensors")[1]["step"] == "30"
    trainer.main(tiny_args(corpus, out, None, *QUIET, "--resume"))  # the extended run is now the run's total
    assert "has finished its 30 steps" in capsys.readouterr().out


def test_no_network_falls_back_to_the_bundled_sample_in_one_line(trainer, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tinystories, "TINYSTORIES_URLS", [closed_port_url("/ts/")])  # offline, at once
    out = tmp_path / "run"
    trainer.main(tiny_args(corpus, out, 2, *QUIET, data="auto"))
    lines = capsys.readouterr().out.splitlines()
    fallback = [line for line in lines if "could not download" in line]
    assert len(fallback) == 1 and "training on the TinyStories sample inside the package" in fallback[0]
    assert "--data sample" in fallback[0]
    data_line = next(line for line in lines if line.startswith("data: "))
    assert data_line.startswith("data: the TinyStories sample inside the package (2,316 stories)")
    assert len(log_lines("\n".join(lines))) == 2
    run = checkpoint.read(out / "ckpt.safetensors")[1]
    assert '"data": "sample"' in run["extra"]  # recorded, so --resume stays on the sample

    trainer.main(tiny_args(corpus, out, 3, *QUIET, "--resume", data="auto"))
    assert "could not download" not in capsys.readouterr().out  # the resumed run does not try again
    with pytest.raises(SystemExit, match="--data sample"):
        trainer.main(tiny_args(corpus, tmp_path / "strict", 2, *QUIET, "--data", "tinystories", data="strict"))


def test_bundled_sample_has_a_train_and_a_validation_split(corpus):
    tok = load_example("tinystories_train").Tokenizer.from_tiktoken_file(corpus / "tiny.tiktoken")
    train_bin, val_bin = tinystories.prepare_sample(corpus / "data-auto", tokenizer=tok, verbose=False)
    train = deers.dataset.read_tokens(train_bin)[0]
    val = deers.dataset.read_tokens(val_bin)[0]
    eot = tok.eot_token
    assert int((train == eot).sum()) == 2200 and int((val == eot).sum()) == 116  # 2,316 stories, 5% held out
    text = (corpus / "data-auto" / tinystories.SAMPLE_TEXT).read_text()
    assert text.startswith("One day, a little girl named Lily found a needle in her room.")
    assert text.endswith("<|endoftext|>\n")  # the truncated last story of the 2 MiB cut is gone


@pytest.mark.parametrize("content, message", [
    ("A single story with no separator at all.", "holds 1 story: at least 2 are needed"),
    ("<|endoftext|>\n\n<|endoftext|>\n", "holds 0 stories"),
])
def test_a_text_file_that_cannot_be_split_is_a_message(trainer, corpus, tmp_path, content, message):
    text = tmp_path / "stories.txt"
    text.write_text(content)
    args = tiny_args(corpus, tmp_path / "run", 2, *QUIET)
    args[args.index("--text-file") + 1] = str(text)
    args[args.index("--data-dir") + 1] = str(tmp_path / "data")
    with pytest.raises(SystemExit, match=f"^error: .*{re.escape(message)}"):
        trainer.main(args)


@pytest.mark.parametrize("package", ["tiktoken", "safetensors"])
def test_a_missing_package_is_a_message(trainer, corpus, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(SystemExit, match=rf"needs the {package} package: pip install -e '\.\[train\]'"):
        trainer.main(tiny_args(corpus, tmp_path / "run", 2, *QUIET))


def test_sample_errors_are_messages(corpus, tmp_path):
    sampler = load_example("sample")
    with pytest.raises(SystemExit, match="no checkpoint at .*nowhere .*tinystories_train.py --out"):
        sampler.main(["--checkpoint", str(tmp_path / "nowhere")])
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(SystemExit, match="no ckpt.safetensors in the folder"):
        sampler.main(["--checkpoint", str(tmp_path / "empty-run")])
    other = deers.nn.Linear(2, 2)  # a safetensors checkpoint, but not of the GPT trainer
    checkpoint.save(tmp_path / "other.safetensors", model=other, step=1)
    with pytest.raises(SystemExit, match="not a GPT checkpoint"):
        sampler.main(["--checkpoint", str(tmp_path / "other.safetensors")])
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="cannot be read"):
        sampler.main(["--checkpoint", str(tmp_path / "junk.safetensors")])


def test_grad_accumulation_equals_the_big_batch(trainer, corpus, tmp_path, capsys):
    """--grad-accum 2 --batch-size 4 draws the rows of --batch-size 8 and makes the same updates (float tolerance)."""
    common = ("--log-every", "1", "--eval-every", "3", "--sample-every", "100", "--checkpoint-every", "100",
              "--warmup", "1", "--warmdown", "1")
    big = trainer.main([*tiny_args(corpus, tmp_path / "big", 3, *common), "--batch-size", "8"])
    assert "128 tokens per step (8 x 16)" in capsys.readouterr().out
    accum = trainer.main([*tiny_args(corpus, tmp_path / "accum", 3, *common), "--grad-accum", "2"])
    out = capsys.readouterr().out
    assert "128 tokens per step in 2 micro-batches of 4 x 16" in out
    np.testing.assert_allclose([loss for _, loss in accum["train"]], [loss for _, loss in big["train"]], rtol=1e-6)
    big_state, _ = checkpoint.read(tmp_path / "big" / "ckpt.safetensors")
    accum_state, _ = checkpoint.read(tmp_path / "accum" / "ckpt.safetensors")
    assert set(big_state) == set(accum_state)
    for name, value in big_state.items():
        np.testing.assert_allclose(accum_state[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_muon_run_resumes_exactly_with_both_optimizers(trainer, corpus, tmp_path, monkeypatch, capsys):
    common = ("--optimizer", "muon", "--muon-lr", "0.02", "--log-every", "4", "--eval-every", "6",
              "--sample-every", "100", "--checkpoint-every", "100", "--warmup", "2", "--warmdown", "4")
    straight = trainer.main(tiny_args(corpus, tmp_path / "a", 12, *common))
    out = capsys.readouterr().out
    assert "optimizer: Muon(4 parameters, lr=0.02" in out and "AdamW(5 parameters" in out
    assert straight["train"][-1][1] < straight["train"][0][1] - 0.3  # it learns

    evaluate = trainer.evaluate
    calls = []

    def evaluate_then_ctrl_c(*args, **kwargs):  # Ctrl-C arrives during the evaluation at step 6
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate_then_ctrl_c)
    trainer.main(tiny_args(corpus, tmp_path / "b", 12, *common))
    tensors, _ = checkpoint.read(tmp_path / "b" / "ckpt.safetensors")
    assert "optim.blocks.0.attn.qkv.weight.momentum_buffer" in tensors and "optim.wte.weight.exp_avg" in tensors
    resumed = trainer.main(tiny_args(corpus, tmp_path / "b", None, *common, "--resume"))
    assert resumed == straight  # every train loss, val loss and val bpb, bit for bit
    final_a, _ = checkpoint.read(tmp_path / "a" / "ckpt.safetensors")
    final_b, _ = checkpoint.read(tmp_path / "b" / "ckpt.safetensors")
    for name, value in final_a.items():
        np.testing.assert_array_equal(final_b[name], value, err_msg=name)


def test_bits_per_byte_on_a_hand_computed_case(trainer, corpus):
    assert tinystories.bits_per_byte(2 * math.log(2), 3, 6) == pytest.approx(1.0)  # 2 bits x 3 tokens / 6 bytes
    tokenizer = deers.tokenizer.Tokenizer.from_tiktoken_file(corpus / "tiny.tiktoken")
    lengths = tinystories.token_byte_lengths(tokenizer)
    text = "Once upon a time, a café."
    assert lengths[tokenizer.encode(text)].sum() == len(text.encode("utf-8")) == 26
    assert lengths[tokenizer.eot_token] == 0

    # A model with a zero lm_head predicts uniformly: loss ln V per token, log2 V bits. The validation
    # tokens are 8 single bytes, then <|endoftext|>: two windows of 4 predict 8 targets holding 7 bytes.
    V = tokenizer.vocab_size()
    model = trainer.GPT(trainer.GPTConfig(vocab_size=V, sequence_len=4, n_layer=1, n_head=2, n_embd=8,
                                          mlp_hidden_dim=16))
    model.lm_head.weight.data.assign(deers.zeros(model.lm_head.weight.shape).data)
    val = trainer.TokenBinDataset(np.array([*b"abcdefgh", tokenizer.eot_token], dtype=np.uint16), seq_len=4)
    loss, bpb = trainer.evaluate(model, val, batch_size=1, max_batches=5, device="cpu", token_bytes=lengths)
    assert V == 317 and loss == pytest.approx(math.log(317), rel=1e-6)
    assert bpb == pytest.approx(8.308339030139408 * 8 / 7, rel=1e-6)  # log2(317) bits x 8 tokens / 7 bytes
