"""Data-parallel training of a tiny GPT; each rank saves its final weights (and rank 0 a checkpoint).

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
from deers import checkpoint
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, clip_grad_norm

CONFIG = GPTConfig(vocab_size=32, sequence_len=8, n_layer=2, n_head=2, n_embd=16, mlp_hidden_dim=32)


def global_batch(seed: int, step: int, rows: int) -> tuple[deers.Tensor, deers.Tensor]:
    """The whole job's batch for `step`: the same on every rank, whatever the world size.

    Token sequences count up by a random stride (mod V), so there is something to learn.
    """
    rng = np.random.default_rng([seed, step])
    T, V = CONFIG.sequence_len, CONFIG.vocab_size
    start = rng.integers(0, V, (rows, 1))
    stride = rng.integers(1, 4, (rows, 1))
    tokens = (start + stride * np.arange(T + 1)) % V  # (rows, T + 1)
    return deers.tensor(tokens[:, :-1]), deers.tensor(tokens[:, 1:])  # inputs, targets: (rows, T) i64


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--resume", default="")
    parser.add_argument("--dtype", default="f64", help="f64 keeps the rounding far below the test's tolerance")
    args = parser.parse_args()

    dist.init()
    deers.manual_seed(args.seed + 1000 * dist.rank())  # different init per rank: broadcast must fix it
    model = GPT(CONFIG, dtype=args.dtype)
    params = model.parameters()
    dist.broadcast_parameters(params)
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    start = 0
    if args.resume:
        start = checkpoint.load(args.resume, model=model, optimizer=optimizer)["step"]

    losses, first_grads = [], {}
    for step in range(start, args.steps):
        x, y = global_batch(args.seed, step, args.global_batch)
        x, y = dist.shard_batch(x), dist.shard_batch(y)  # this rank's rows
        _, step_loss = model(x, y)
        grads = step_loss.backward()
        dist.all_reduce_grads(params, grads)  # mean over ranks = gradient of the global batch
        if step == start:  # AdamW hardly sees a gradient's scale, so the test checks one directly
            first_grads = {"grad." + name: grads[p].numpy() for name, p in model.named_parameters()}
        clip_grad_norm(params, grads, 1.0)
        optimizer.step(grads)
        losses.append(dist.all_reduce(step_loss.detach(), "mean").item())
        if step + 1 == args.save_at and dist.is_main():
            checkpoint.save(os.path.join(args.out, "ckpt.safetensors"), model=model, optimizer=optimizer, step=step + 1)

    weights = {name: p.numpy() for name, p in model.named_parameters()}
    np.savez(os.path.join(args.out, f"rank{dist.rank()}.npz"), losses=np.array(losses), **weights, **first_grads)


if __name__ == "__main__":
    main()
