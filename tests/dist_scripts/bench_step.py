"""Time data-parallel GPT training steps: forward+backward, gradient all-reduce, optimizer; not a test.

    python tests/dist_scripts/bench_step.py --batch-size 8                 # 1 process (BLAS on every core)
    mpirun -n 2 python tests/dist_scripts/bench_step.py --batch-size 4     # 2 ranks, same global batch

Rank 0 prints the median of each phase over the timed steps ("wait": for the slowest rank to
finish its backward) and the job's tokens per second (local tokens x world size / step time).
The data are random tokens: the speed does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import deers
import deers.distributed as dist
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, clip_grad_norm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=4, help="rows per rank")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--mlp-hidden", type=int, default=768)
    p.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--bucket-mib", type=float, default=25.0)
    args = p.parse_args()

    dist.init()
    deers.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab, sequence_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, mlp_hidden_dim=args.mlp_hidden)
    model = GPT(config)
    params = model.parameters()
    dist.broadcast_parameters(params)
    optimizer = AdamW(params, lr=1e-4)
    rng = np.random.default_rng(dist.seed_for_rank(0))
    times: dict[str, list[float]] = {"forward+backward": [], "wait": [], "all_reduce_grads": [], "clip+optimizer": [],
                                     "step": []}
    for step in range(2 + args.steps):
        tokens = rng.integers(0, args.vocab, (args.batch_size, args.seq_len + 1))
        inputs, targets = deers.tensor(tokens[:, :-1]), deers.tensor(tokens[:, 1:])  # (B, T) each
        dist.barrier()  # time the ranks together
        t0 = time.perf_counter()
        _, loss = model(inputs, targets)
        grads = loss.backward()
        t1 = time.perf_counter()
        dist.barrier()  # the wait for the slowest rank, kept out of the all-reduce time
        t2 = time.perf_counter()
        dist.all_reduce_grads(params, grads, bucket_bytes=int(args.bucket_mib * 2**20))
        t3 = time.perf_counter()
        clip_grad_norm(params, grads, 1.0)
        optimizer.step(grads)
        t4 = time.perf_counter()
        if step >= 2:
            for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[name].append(seconds)
    if dist.is_main():
        medians = {name: statistics.median(values) for name, values in times.items()}
        local_tokens = args.batch_size * args.seq_len
        grad_mib = sum(p.numel() for p in params) * 4 / 2**20
        print(f"world {dist.world_size()} | {model.num_parameters():,} params ({grad_mib:.1f} MiB of f32 grads) | "
              f"{args.batch_size} x {args.seq_len} tokens per rank", flush=True)
        print(" | ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in medians.items())
              + f" | job {dist.job_tokens_per_second(local_tokens, medians['step']):.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
