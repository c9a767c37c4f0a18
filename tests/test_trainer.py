"""examples/tinystories_train.py and examples/sample.py end to end, on a generated story file with a
small BPE vocabulary (no network, no /work/shared): log format, checkpoints, exact resume after
Ctrl-C, mixed precision, sampling."""
import importlib.util
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("safetensors")

import deers  # noqa: E402
from deers import checkpoint  # noqa: E402
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


def tiny_args(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--text-file", str(corpus / "stories.txt"), "--tokenizer-file", str(corpus / "tiny.tiktoken"),
            "--data-dir", str(corpus / "data"), "--out", str(out), "--steps", str(steps), "--batch-size", "4",
            "--seq-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--mlp-hidden", "32",
            "--lr", "3e-3", "--sample-tokens", "12", "--eval-batches", "2", "--val-fraction", "0.05", *extra]


def test_trainer_end_to_end(trainer, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    history = trainer.main(tiny_args(corpus, out, 40, "--log-every", "10", "--eval-every", "20",
                                     "--sample-every", "20", "--checkpoint-every", "20"))
    lines = capsys.readouterr().out.splitlines()
    logs = [LOG_LINE.match(line) for line in lines if line.startswith("step ") and "train_loss" in line]
    assert [int(m.group(1)) for m in logs] == [10, 20, 30, 40] and all(m.group(2) == "40" for m in logs)
    assert [line.split(" | ")[0] for line in lines if "val_loss" in line] == ["step 20", "step 40"]
    samples = [line for line in lines if line.startswith("sample: ")]
    assert len(samples) == 2 and all(s.startswith("sample: Once upon a time") for s in samples)

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
    first, again = sampler.main(args), sampler.main(args)
    assert first == again and first[0].startswith("Once upon a time")
    assert sampler.main(args + ["--temperature", "0"]) == sampler.main(args + ["--temperature", "0", "--seed", "9"])


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

    resumed = trainer.main(tiny_args(corpus, tmp_path / "b", 24, *common, "--resume"))
    assert "resumed from" in capsys.readouterr().out
    assert resumed == straight  # every train loss and val loss, bit for bit
    final_a, _ = checkpoint.read(tmp_path / "a" / "ckpt.safetensors")
    final_b, _ = checkpoint.read(tmp_path / "b" / "ckpt.safetensors")
    for name, value in final_a.items():
        np.testing.assert_array_equal(final_b[name], value, err_msg=name)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_low_precision_training_keeps_f32_master_weights(trainer, corpus, tmp_path, dtype, capsys):
    if dtype == "bf16" and deers.bf16 is None:
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
