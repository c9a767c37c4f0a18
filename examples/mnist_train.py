"""Train an MLP (784-256-128-10) or PyTorch's MNIST example CNN on MNIST with Deers.

    python examples/mnist_train.py                                # downloads MNIST on first use
    python examples/mnist_train.py --model cnn                    # the CNN: about 99% test accuracy
    python examples/mnist_train.py --data /path/to/mnist --epochs 3 --device cpu
    python examples/mnist_train.py --out runs/mnist --resume      # continue from the last epoch's checkpoint

--model cnn is the network of PyTorch's examples/mnist (the same layer names, so its state_dict
loads): conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2, dropout 0.25, linear
9216->128, ReLU, dropout 0.5, linear 128->10.

Defaults: AdamW (lr 1e-3, weight decay 0.01) with the learning rate decayed to 0 along a cosine
over the run, batch size 128 (the CNN: 64, as in PyTorch's example), 3 epochs. Prints one line
per epoch, e.g. `epoch 1/3 | train_loss 0.2345 | test_acc 97.12% | 4.1s`, and saves a checkpoint (model, optimizer,
data-loader position, RNG) to --out at the end of every epoch (one `saved ...` line). --resume
continues the run with its own settings (batch size, optimizer, learning rate, schedule, seed) up
to its own --epochs; `--resume --epochs N` extends it to N epochs, the cosine then spanning all N.
Without network access, pass --data DIR: a folder with the four MNIST IDX files.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import deers
from deers import checkpoint, loss
from deers.checkpoint import CheckpointError
from deers.cli import (
    HelpFormatter,
    check_device,
    nonnegative_float,
    positive_float,
    positive_int,
)
from deers.dataset import MNIST, DataLoader, IDXFormatError
from deers.download import DownloadError
from deers.nn import Conv2d, Dropout, Linear, Module, ReLU, Sequential, max_pool2d
from deers.optim import SGD, AdamW, LRSchedule

MEAN, STD = 0.1307, 0.3081  # pixel statistics of the MNIST training set
CHECKPOINT_NAME = "mnist.safetensors"
DEFAULT_EPOCHS = 3
# Settings that define a run: on --resume they come from the checkpoint (--epochs too, unless given).
RUN_SETTINGS = ("model", "batch_size", "lr", "schedule", "optimizer", "momentum", "weight_decay", "seed", "limit")


def momentum_value(text: str) -> float:
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: every invalid value is an argparse error before any work starts."""
    parser = argparse.ArgumentParser(description="Train an MLP or a CNN on MNIST with Deers.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                        help="mlp: 784-256-128-10; cnn: PyTorch's MNIST example CNN (two convolutions)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="folder with the MNIST IDX files, downloaded there if missing "
                             "(default: $DEERS_DATA_DIR/mnist or ~/.cache/deers/mnist)")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                        help=f"passes over the training set (default: {DEFAULT_EPOCHS}; with --resume the run's own)")
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="B",
                        help="images per step (default: 128 for the MLP, 64 for the CNN)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, metavar="X", help="peak learning rate")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="cosine: decay the learning rate to 0 over the run; constant: keep --lr")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="the optimizer")
    parser.add_argument("--momentum", type=momentum_value, default=0.9, metavar="X", help="SGD momentum")
    parser.add_argument("--weight-decay", type=nonnegative_float, default=0.01, metavar="X",
                        help="AdamW's decoupled weight decay")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialization and the batch order")
    parser.add_argument("--out", default="runs/mnist", metavar="DIR", help="folder for the checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use only the first N training images (default: all)")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 64 if args.model == "cnn" else 128
    check_device(parser, args.device)
    if args.data is not None and Path(args.data).exists() and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: not a folder (give the folder that holds the IDX files)")
    return args


class Net(Module):
    """PyTorch's examples/mnist CNN, layer for layer (and name for name)."""

    def __init__(self):
        super().__init__()
        self.conv1 = Conv2d(1, 32, 3, 1)
        self.conv2 = Conv2d(32, 64, 3, 1)
        self.dropout1 = Dropout(0.25)
        self.dropout2 = Dropout(0.5)
        self.fc1 = Linear(9216, 128)
        self.fc2 = Linear(128, 10)

    def forward(self, x: deers.Tensor) -> deers.Tensor:
        x = self.conv1(x).relu()  # (B, 1, 28, 28) -> (B, 32, 26, 26)
        x = self.conv2(x).relu()  # (B, 64, 24, 24)
        x = self.dropout1(max_pool2d(x, 2))  # (B, 64, 12, 12)
        x = self.fc1(x.flatten(1)).relu()  # (B, 9216) -> (B, 128)
        return self.fc2(self.dropout2(x))  # (B, 10)


def make_model(device: str, kind: str = "mlp") -> Module:
    if kind == "cnn":
        return Net().to_device(device)
    return Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10)).to_device(device)


def to_inputs(images: np.ndarray, device: str, kind: str = "mlp") -> deers.Tensor:
    """uint8 images (B, 28, 28) -> normalised f32 (B, 784) for the MLP, (B, 1, 28, 28) for the CNN."""
    shape = (len(images), 1, 28, 28) if kind == "cnn" else (len(images), 784)
    x = images.reshape(shape).astype(np.float32)
    x *= 1.0 / (255.0 * STD)
    x -= MEAN / STD
    return deers.tensor(x, device=device)


def evaluate(model: Module, images: np.ndarray, labels: np.ndarray, device: str, kind: str = "mlp") -> float:
    """Accuracy in percent over the whole test set (the CNN in smaller batches: its im2col
    matrices hold 9 values per input pixel)."""
    batch_size = 250 if kind == "cnn" else 1000
    model.eval()
    correct = 0
    with deers.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_inputs(images[start:start + batch_size], device, kind))
            predicted = logits.argmax(dim=-1).numpy()
            correct += int((predicted == labels[start:start + batch_size]).sum())
    model.train()
    return 100.0 * correct / max(len(images), 1)


def progress(batches, epoch: int, epochs: int):
    """A tqdm bar over the batches when stderr is a terminal (and tqdm is installed)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not sys.stderr.isatty())


def restore_run_settings(args: argparse.Namespace, path: str) -> dict:
    """Load the run's settings from its checkpoint into args (see RUN_SETTINGS); returns the checkpoint's info."""
    if not os.path.exists(path):
        raise SystemExit(f"error: --resume: no checkpoint at {path} (train without --resume first, or point --out at "
                         f"the run's folder)")
    try:
        run = json.loads(checkpoint.read(path)[1]["extra"])["args"]
    except (KeyError, TypeError, ValueError) as err:  # CheckpointError is a ValueError
        raise SystemExit(f"error: --resume: {path} is not a checkpoint of this example ({err})") from err
    for name in RUN_SETTINGS:
        setattr(args, name, run.get(name, getattr(args, name)))
    if args.epochs is None:
        args.epochs = run.get("epochs") or DEFAULT_EPOCHS
    return run


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if importlib.util.find_spec("safetensors") is None:
        raise SystemExit("error: the MNIST example needs the safetensors package (checkpoints): "
                         "pip install -e '.[train]' (or pip install 'deers[train]')")
    path = os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        restore_run_settings(args, path)
    args.epochs = args.epochs or DEFAULT_EPOCHS
    try:
        return train(args, path)
    except (DownloadError, IDXFormatError, CheckpointError) as err:  # no network, a bad file: a message
        raise SystemExit(f"error: {err}") from err


def train(args: argparse.Namespace, path: str) -> list[dict]:
    """The training loop; returns one dict per epoch run (epoch, train_loss, test_acc, seconds)."""
    deers.manual_seed(args.seed)
    train_set = MNIST(args.data, train=True)
    test_set = MNIST(args.data, train=False)
    train_images, train_labels = train_set.images, train_set.labels.astype(np.int64)
    if args.limit is not None:
        train_images, train_labels = train_images[:args.limit], train_labels[:args.limit]

    model = make_model(args.device, args.model)
    if args.optimizer == "adamw":
        optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loader = DataLoader((train_images, train_labels), batch_size=args.batch_size, shuffle=True, seed=args.seed)

    total_steps = args.epochs * len(loader)
    schedule = LRSchedule(args.lr, total_steps, kind="cosine") if args.schedule == "cosine" else None

    first_epoch = 1
    if args.resume:
        info = checkpoint.load(path, model=model, optimizer=optimizer)
        loader.load_state_dict(info["extra"]["loader"])
        first_epoch = info["step"] + 1
        print(f"resumed from {path} after epoch {info['step']} of {args.epochs}")
        if first_epoch > args.epochs:
            print(f"the run has finished its {args.epochs} epochs; extend it with --resume --epochs N "
                  f"(N > {info['step']})")

    history = []
    for epoch in range(first_epoch, args.epochs + 1):
        start = time.perf_counter()
        total, batches = 0.0, 0
        for batch, (images, labels) in enumerate(progress(loader, epoch, args.epochs)):
            if schedule is not None:
                optimizer.set_lr(schedule((epoch - 1) * len(loader) + batch))
            logits = model(to_inputs(images, args.device, args.model))  # (B, 10)
            batch_loss = loss.cross_entropy(logits, deers.tensor(labels, device=args.device))
            optimizer.step(batch_loss.backward())
            total += batch_loss.item()
            batches += 1
        accuracy = evaluate(model, test_set.images, test_set.labels, args.device, args.model)
        seconds = time.perf_counter() - start
        train_loss = total / max(batches, 1)
        print(f"epoch {epoch}/{args.epochs} | train_loss {train_loss:.4f} | test_acc {accuracy:.2f}% | {seconds:.1f}s",
              flush=True)
        checkpoint.save(path, model=model, optimizer=optimizer, step=epoch,
                        extra={"loader": loader.state_dict(), "args": vars(args), "test_acc": accuracy})
        print(f"saved {path}", flush=True)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_acc": accuracy, "seconds": seconds})
    return history


if __name__ == "__main__":
    main()
