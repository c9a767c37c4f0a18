"""Data-parallel training of a tiny model; each rank saves its final weights (and rank 0 a checkpoint).

    mpirun -n 2 python tests/dist_scripts/train.py OUT_DIR --steps 6      # 2 ranks, 4 rows each
    python tests/dist_scripts/train.py OUT_DIR --steps 6                  # 1 process, all 8 rows

Every rank draws the same global batch for a step (a generator seeded with (seed, step)) and
keeps its shard, so the union of the ranks' batches is exactly the single process's batch, and
the two runs must end with the same weights (up to float rounding). `--save-at K` makes rank 0
write a checkpoint after step K; `--resume PATH` continues from one (in any number of processes).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import deers
import deers.distributed as dist
from deers import loss
from deers.nn import Linear, ReLU, Sequential
from deers.optim import AdamW, clip_grad_norm

FEATURES, HIDDEN, CLASSES = 6, 16, 5


def build_model() -> Sequential:
    return Sequential(Linear(FEATURES, HIDDEN), ReLU(), Linear(HIDDEN, CLASSES))


def global_batch(seed: int, step: int, rows: int) -> tuple[deers.Tensor, deers.Tensor]:
    """The whole job's batch for `step`: the same on every rank, whatever the world size."""
    rng = np.random.default_rng([seed, step])
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    y = (np.abs(x[:, 0] * 3).astype(np.int64)) % CLASSES  # a learnable rule
    return deers.tensor(x), deers.tensor(y)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--resume", default="")
    args = parser.parse_args()

    dist.init()
    deers.manual_seed(args.seed + 1000 * dist.rank())  # different init per rank: broadcast must fix it
    model = build_model()
    params = model.parameters()
    dist.broadcast_parameters(params)
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    start = 0
    if args.resume:
        start = load_checkpoint(args.resume, model, optimizer)

    losses = []
    for step in range(start, args.steps):
        x, y = global_batch(args.seed, step, args.global_batch)
        x, y = dist.shard_batch(x), dist.shard_batch(y)  # this rank's rows
        step_loss = loss.cross_entropy(model(x), y)
        grads = step_loss.backward()
        dist.all_reduce_grads(params, grads)  # mean over ranks = gradient of the global batch
        clip_grad_norm(params, grads, 1.0)
        optimizer.step(grads)
        losses.append(dist.all_reduce(step_loss.detach(), "mean").item())
        if step + 1 == args.save_at and dist.is_main():
            save_checkpoint(os.path.join(args.out, "ckpt.npz"), model, optimizer, step + 1)

    weights = {name: p.numpy() for name, p in model.named_parameters()}
    np.savez(os.path.join(args.out, f"rank{dist.rank()}.npz"), losses=np.array(losses), **weights)


def save_checkpoint(path: str, model, optimizer, step: int) -> None:
    import pickle

    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "step": step}, f)


def load_checkpoint(path: str, model, optimizer) -> int:
    import pickle

    with open(path, "rb") as f:
        state = pickle.load(f)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


if __name__ == "__main__":
    main()
