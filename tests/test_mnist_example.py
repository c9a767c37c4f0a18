"""examples/mnist_train.py end to end on small generated IDX files: the loss falls, the epoch lines
have the documented format, a checkpoint is written, and --resume continues exactly."""
import gzip
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist_train.py"
LINE = re.compile(r"^epoch (\d+)/(\d+) \| train_loss (\d+\.\d{4}) \| test_acc (\d+\.\d{2})% \| (\d+\.\d)s$")


def _load_example():
    spec = importlib.util.spec_from_file_location("mnist_train_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (uint8, big-endian dims), gzip-compressed like the real MNIST files."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Ten noisy class templates: 28x28 uint8 images that an MLP can learn in a few steps."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    templates = rng.random((10, 28, 28)) < 0.15
    for split, count in (("train", 480), ("t10k", 160)):
        labels = rng.integers(0, 10, count)
        noise = rng.random((count, 28, 28)) < 0.08
        images = np.where(templates[labels] ^ noise, 255, 0)
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def _run(example, mnist_dir, out, *extra):
    return example.main(["--data", str(mnist_dir), "--out", str(out), "--batch-size", "32", "--limit", "320",
                         "--seed", "3", *extra])


def test_mnist_example_trains_prints_and_checkpoints(mnist_dir, tmp_path, capsys):
    example = _load_example()
    history = _run(example, mnist_dir, tmp_path / "run", "--epochs", "2")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line).group(1, 2) for line in lines] == [("1", "2"), ("2", "2")]
    assert history[1]["train_loss"] < history[0]["train_loss"] < 2.5
    assert history[1]["test_acc"] > 50.0
    assert (tmp_path / "run" / example.CHECKPOINT_NAME).is_file()


def test_mnist_example_sgd_option(mnist_dir, tmp_path):
    history = _run(_load_example(), mnist_dir, tmp_path / "sgd", "--epochs", "2", "--optimizer", "sgd",
                   "--lr", "0.05")
    assert history[1]["train_loss"] < history[0]["train_loss"]


def test_mnist_example_resume_continues_exactly(mnist_dir, tmp_path, capsys):
    example = _load_example()
    # a constant learning rate: with the cosine default, --epochs 2 and --epochs 3 are different schedules
    straight = _run(example, mnist_dir, tmp_path / "straight", "--epochs", "3", "--schedule", "constant")
    _run(example, mnist_dir, tmp_path / "resumed", "--epochs", "2", "--schedule", "constant")
    capsys.readouterr()
    resumed = _run(example, mnist_dir, tmp_path / "resumed", "--epochs", "3", "--resume", "--schedule", "constant")
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1/3" not in out
    assert [h["epoch"] for h in resumed] == [3]
    assert resumed[0]["train_loss"] == straight[2]["train_loss"]
    assert resumed[0]["test_acc"] == straight[2]["test_acc"]
    with pytest.raises(SystemExit, match="no checkpoint"):
        _run(example, mnist_dir, tmp_path / "nothing-here", "--resume")
