"""The MNIST MLP of examples/mnist_train.py trained in PyTorch, for a time-per-epoch comparison.

    python benchmarks/mnist_torch.py --data /path/to/mnist --epochs 3

Same model (784-256-128-10, ReLU), same PyTorch-default init, same optimizer (AdamW lr 1e-3,
weight decay 0.01, or SGD), same cosine learning-rate decay, batch size, input normalisation and shuffled batches (the data is read
and batched by deers.dataset, so only the training arithmetic differs). Prints the same per-epoch
line as the Deers example.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from deers.dataset import MNIST, DataLoader

MEAN, STD = 0.1307, 0.3081


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train, test = MNIST(args.data, train=True), MNIST(args.data, train=False)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader((train.images, train.labels.astype(np.int64)), batch_size=args.batch_size, seed=args.seed)
    total_steps = args.epochs * len(loader)
    if args.schedule == "cosine":  # deers.optim.LRSchedule(lr, total_steps, kind="cosine"), step by step
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * (step + 1) / total_steps)))
    else:
        scheduler = None

    def inputs(images: np.ndarray) -> torch.Tensor:
        x = images.reshape(len(images), 784).astype(np.float32)  # (B, 784)
        return torch.from_numpy((x / 255.0 - MEAN) / STD)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        total, batches = 0.0, 0
        model.train()
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(inputs(images)), torch.from_numpy(labels))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item()
            batches += 1
        model.eval()
        with torch.no_grad():
            predicted = model(inputs(test.images)).argmax(dim=-1).numpy()
        accuracy = 100.0 * float((predicted == test.labels).mean())
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}/{args.epochs} | train_loss {total / batches:.4f} | test_acc {accuracy:.2f}% | "
              f"{seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main()
