"""Training throughput of the MNIST CNN of examples/mnist_train.py (--model cnn) in Deers and in
PyTorch, and the example's convolutions against their GEMM-only floor.

    python benchmarks/cnn.py [--batches 20] [--batch-size 64] [--repeats 2]

Each framework trains the same network (conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2,
dropout 0.25, linear 9216->128, ReLU, dropout 0.5, linear 128->10; AdamW) on the same random
28x28 batches for --batches steps after two warm-up steps, in a process of its own, one process
at a time, alternating over the repeats; the table gives images per second (best repeat).
The conv rows time deers.nn.conv2d forward and backward at the example's shapes (batch
--batch-size, f32) against the GEMMs alone ((G, Og, Cg*kh*kw) @ (G, Cg*kh*kw, N*OH*OW) forward;
dW and dcolumns backward, dcolumns only where the input needs a gradient), with NumPy's matmul
on the same arrays: the difference is im2col, col2im, the NCHW copies and the bias.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from common import REPO, machine_description

CONVS = {"conv1": ((1, 28, 28), 32, False), "conv2": ((32, 26, 26), 64, True)}  # input (C, H, W), O, needs dx


def train_deers(batches: int, batch_size: int) -> float:
    """Images per second of the example's training step in Deers."""
    sys.path.insert(0, str(REPO / "examples"))
    import deers
    from deers import loss
    from deers.optim import AdamW
    from mnist_train import Net

    deers.manual_seed(0)
    model = Net()
    optimizer = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)

    def step() -> None:
        logits = model(deers.tensor(images))
        optimizer.step(loss.cross_entropy(logits, deers.tensor(labels)).backward())

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch_size / (time.perf_counter() - start)


def train_torch(batches: int, batch_size: int) -> float:
    """Images per second of the same training step in PyTorch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)

    class Net(torch.nn.Module):  # PyTorch's examples/mnist network
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 32, 3, 1), torch.nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = torch.nn.Dropout(0.25), torch.nn.Dropout(0.5)
            self.fc1, self.fc2 = torch.nn.Linear(9216, 128), torch.nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            x = self.dropout1(F.max_pool2d(x, 2))
            return self.fc2(self.dropout2(F.relu(self.fc1(torch.flatten(x, 1)))))

    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    images = torch.tensor(rng.standard_normal((batch_size, 1, 28, 28)).astype(np.float32))
    labels = torch.tensor(rng.integers(0, 10, batch_size))

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch_size / (time.perf_counter() - start)


def best_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def conv_rows(batch_size: int) -> list[dict]:
    """Forward and backward of each conv of the example vs its GEMMs alone (Deers, f32)."""
    import deers
    from deers.nn import conv2d

    rows = []
    rng = np.random.default_rng(0)
    for name, ((c, h, w), o, needs_dx) in CONVS.items():
        x = deers.tensor(rng.standard_normal((batch_size, c, h, w)).astype(np.float32))
        weight = deers.Var(deers.tensor(rng.standard_normal((o, c, 3, 3)).astype(np.float32)))
        bias = deers.Var(deers.tensor(rng.standard_normal(o).astype(np.float32)))
        if needs_dx:
            x = x.attach()
        forward = best_ms(lambda: conv2d(x, weight, bias))
        y = conv2d(x, weight, bias)
        seed = deers.tensor(rng.standard_normal(y.shape).astype(np.float32))

        def backward():
            conv2d(x, weight, bias).backward(seed)

        backward_ms = best_ms(backward) - forward  # backward() reruns the forward
        k, cols = c * 9, batch_size * (h - 2) * (w - 2)
        wm = rng.standard_normal((o, k)).astype(np.float32)
        columns = rng.standard_normal((k, cols)).astype(np.float32)
        dy = rng.standard_normal((o, cols)).astype(np.float32)
        gemm_forward = best_ms(lambda: wm @ columns)
        gemm_backward = best_ms(lambda: dy @ columns.T) + (best_ms(lambda: wm.T @ dy) if needs_dx else 0.0)
        rows.append({"name": name, "shape": f"({batch_size}, {c}, {h}, {w}) * ({o}, {c}, 3, 3)",
                     "forward_ms": forward, "gemm_forward_ms": gemm_forward,
                     "backward_ms": backward_ms, "gemm_backward_ms": gemm_backward})
    return rows


def worker(framework: str, batches: int, batch_size: int) -> None:
    if framework == "deers":
        result = {"images_per_s": train_deers(batches, batch_size), "convs": conv_rows(batch_size)}
    else:
        result = {"images_per_s": train_torch(batches, batch_size)}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=("deers", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.batches, args.batch_size)
    results: dict[str, list[dict]] = {"deers": [], "torch": []}
    for repeat in range(args.repeats):
        order = ("deers", "torch") if repeat % 2 == 0 else ("torch", "deers")
        for framework in order:
            out = subprocess.run([sys.executable, __file__, "--worker", framework, "--batches", str(args.batches),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            results[framework].append(json.loads(out.stdout.strip().splitlines()[-1]))
    deers_best = max(r["images_per_s"] for r in results["deers"])
    torch_best = max(r["images_per_s"] for r in results["torch"])
    print(machine_description())
    print(f"\nMNIST CNN training, batch {args.batch_size}, {args.batches} steps, best of {args.repeats}:")
    print("| | images/s | vs PyTorch |\n| --- | --- | --- |")
    print(f"| Deers | {deers_best:.0f} | {deers_best / torch_best:.2f}x |")
    print(f"| PyTorch | {torch_best:.0f} | 1.00x |")
    print("\nConvolutions of the example (Deers, f32), best of 5, against their GEMMs alone:")
    print("| conv | shape | forward | GEMM floor | backward | GEMM floor |\n| --- | --- | --- | --- | --- | --- |")
    for row in min(results["deers"], key=lambda r: sum(c["forward_ms"] + c["backward_ms"] for c in r["convs"]))["convs"]:
        print(f"| {row['name']} | {row['shape']} | {row['forward_ms']:.1f} ms | {row['gemm_forward_ms']:.1f} ms | "
              f"{row['backward_ms']:.1f} ms | {row['gemm_backward_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
