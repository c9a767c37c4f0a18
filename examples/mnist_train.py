"""Train an MLP (784-256-128-10) on MNIST with Deers.

    python examples/mnist_train.py                                # downloads MNIST on first use
    python examples/mnist_train.py --data /path/to/mnist --epochs 3 --device cpu
    python examples/mnist_train.py --out runs/mnist --resume      # continue from the last epoch's checkpoint

Defaults: AdamW (lr 1e-3, weight decay 0.01) with the learning rate decayed to 0 along a cosine
over the run, batch size 128, 3 epochs. Prints one line per epoch, e.g.
`epoch 1/3 | train_loss 0.2345 | test_acc 97.12% | 4.1s`, and saves a checkpoint (model, optimizer,
data-loader position, RNG) to --out at the end of every epoch. Resume with the same --epochs to
continue the same learning-rate schedule.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import deers
from deers import checkpoint, loss
from deers.dataset import MNIST, DataLoader
from deers.nn import Linear, Module, ReLU, Sequential
from deers.optim import SGD, AdamW, LRSchedule

MEAN, STD = 0.1307, 0.3081  # pixel statistics of the MNIST training set
CHECKPOINT_NAME = "mnist.safetensors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train an MLP on MNIST with Deers.")
    parser.add_argument("--data", default=None, help="folder with the MNIST IDX files (downloaded there if missing)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="cosine: decay the learning rate to 0 over the run; constant: keep --lr")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/mnist", help="folder for the checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    return parser.parse_args(argv)


def make_model(device: str) -> Module:
    return Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10)).to_device(device)


def to_inputs(images: np.ndarray, device: str) -> deers.Tensor:
    """uint8 images (B, 28, 28) -> normalised f32 (B, 784) on the device."""
    x = images.reshape(len(images), 784).astype(np.float32)  # (B, 784)
    x *= 1.0 / (255.0 * STD)
    x -= MEAN / STD
    return deers.tensor(x, device=device)


def evaluate(model: Module, images: np.ndarray, labels: np.ndarray, device: str, batch_size: int = 1000) -> float:
    """Accuracy in percent over the whole test set."""
    model.eval()
    correct = 0
    with deers.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(to_inputs(images[start:start + batch_size], device))
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


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    deers.manual_seed(args.seed)
    train = MNIST(args.data, train=True)
    test = MNIST(args.data, train=False)
    train_images, train_labels = train.images, train.labels.astype(np.int64)
    if args.limit is not None:
        train_images, train_labels = train_images[:args.limit], train_labels[:args.limit]

    model = make_model(args.device)
    if args.optimizer == "adamw":
        optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loader = DataLoader((train_images, train_labels), batch_size=args.batch_size, shuffle=True, seed=args.seed)

    total_steps = args.epochs * len(loader)
    schedule = LRSchedule(args.lr, total_steps, kind="cosine") if args.schedule == "cosine" else None

    path = os.path.join(args.out, CHECKPOINT_NAME)
    first_epoch = 1
    if args.resume:
        if not os.path.exists(path):
            raise SystemExit(f"--resume: no checkpoint at {path}")
        info = checkpoint.load(path, model=model, optimizer=optimizer)
        loader.load_state_dict(info["extra"]["loader"])
        first_epoch = info["step"] + 1
        print(f"resumed from {path} after epoch {info['step']}")

    history = []
    for epoch in range(first_epoch, args.epochs + 1):
        start = time.perf_counter()
        total, batches = 0.0, 0
        for batch, (images, labels) in enumerate(progress(loader, epoch, args.epochs)):
            if schedule is not None:
                optimizer.set_lr(schedule((epoch - 1) * len(loader) + batch))
            logits = model(to_inputs(images, args.device))  # (B, 10)
            batch_loss = loss.cross_entropy(logits, deers.tensor(labels, device=args.device))
            optimizer.step(batch_loss.backward())
            total += batch_loss.item()
            batches += 1
        accuracy = evaluate(model, test.images, test.labels, args.device)
        seconds = time.perf_counter() - start
        train_loss = total / max(batches, 1)
        print(f"epoch {epoch}/{args.epochs} | train_loss {train_loss:.4f} | test_acc {accuracy:.2f}% | {seconds:.1f}s",
              flush=True)
        checkpoint.save(path, model=model, optimizer=optimizer, step=epoch,
                        extra={"loader": loader.state_dict(), "args": vars(args), "test_acc": accuracy})
        history.append({"epoch": epoch, "train_loss": train_loss, "test_acc": accuracy, "seconds": seconds})
    return history


if __name__ == "__main__":
    main()
