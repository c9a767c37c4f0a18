"""Time the hot primitives of the headline GPT step in Deers and (optionally) PyTorch, side by side.

    python benchmarks/ops.py [--compare torch] [--repeats 3]

Each row is the median of several runs after a warm-up: the model's matmul shapes (forward and
both backward GEMMs), the causal attention softmax, cross-entropy over 50257 classes (forward and
backward), RMSNorm (forward and backward) and one AdamW update over all headline parameters.
Each framework times all its rows in a process of its own, one process at a time, the order
alternating over the repeats (two frameworks' threads in one process disturb each other); a
row's figure is the median over the repeats. On this kind of CPU, unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for the run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from common import machine_description

N, D, H, V = 1024, 192, 768, 50257  # tokens per step, width, MLP width, vocab


def median_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def deers_cases(rng: np.random.Generator) -> dict:
    import deers  # here, not at the top: the PyTorch worker's process never loads Deers
    from deers import Var
    from deers.fused.attention import causal_softmax
    from deers.fused.rms_norm import rms_norm
    from deers.loss import cross_entropy
    from deers.optim import AdamW

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    cases = {}
    for name, (m, k, n) in {"qkv": (N, D, 3 * D), "mlp.fc": (N, D, H), "mlp.proj": (N, H, D),
                            "lm_head": (N, D, V)}.items():
        x, w = deers.tensor(arr(m, k)), deers.tensor(arr(n, k))
        g = deers.tensor(arr(m, n))
        cases[f"matmul {name} x@W.T ({m}x{k}x{n})"] = lambda x=x, w=w: x @ w.T
        cases[f"matmul {name} dY@W"] = lambda g=g, w=w: g @ w
        cases[f"matmul {name} dY.T@x"] = lambda g=g, x=x: g.T @ x
    scores = deers.tensor(arr(4, 6, 256, 256))
    cases["causal softmax (4,6,256,256)"] = lambda: causal_softmax(scores, 0.17)
    logits = Var(deers.tensor(arr(N, V)))
    targets = deers.tensor(rng.integers(0, V, N))
    cases[f"cross_entropy fwd+bwd ({N}x{V})"] = lambda: cross_entropy(logits, targets).backward()
    x, w = Var(deers.tensor(arr(4, 256, D))), Var(deers.ones(D))
    cases[f"rms_norm fwd+bwd (4,256,{D})"] = lambda: rms_norm(x, w).sum().backward()
    params = [Var(deers.tensor(arr(*s) * 0.02)) for s in _param_shapes()]
    grads = deers.Grads()
    for p in params:
        grads.set(p, deers.tensor(arr(*p.shape)))
    opt = AdamW(params, lr=1e-3, weight_decay=0.1)
    cases[f"AdamW step ({sum(p.numel() for p in params) / 1e6:.1f}M params)"] = lambda: opt.step_with_grads(grads)
    return cases


def torch_cases(rng: np.random.Generator) -> dict:
    import torch

    def arr(*shape):
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))

    cases = {}
    for name, (m, k, n) in {"qkv": (N, D, 3 * D), "mlp.fc": (N, D, H), "mlp.proj": (N, H, D),
                            "lm_head": (N, D, V)}.items():
        x, w, g = arr(m, k), arr(n, k), arr(m, n)
        cases[f"matmul {name} x@W.T ({m}x{k}x{n})"] = lambda x=x, w=w: x @ w.T
        cases[f"matmul {name} dY@W"] = lambda g=g, w=w: g @ w
        cases[f"matmul {name} dY.T@x"] = lambda g=g, x=x: g.T @ x
    scores = arr(4, 6, 256, 256)
    mask = torch.triu(torch.ones(256, 256, dtype=torch.bool), diagonal=1)
    cases["causal softmax (4,6,256,256)"] = lambda: (scores * 0.17).masked_fill(mask, float("-inf")).softmax(-1)
    logits = arr(N, V).requires_grad_()
    targets = torch.from_numpy(rng.integers(0, V, N))
    cases[f"cross_entropy fwd+bwd ({N}x{V})"] = lambda: torch.nn.functional.cross_entropy(logits, targets).backward()
    x, w = arr(4, 256, D).requires_grad_(), torch.ones(D, requires_grad=True)
    cases[f"rms_norm fwd+bwd (4,256,{D})"] = lambda: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
                                                      * w).sum().backward()
    params = [torch.nn.Parameter(arr(*s) * 0.02) for s in _param_shapes()]
    for p in params:
        p.grad = arr(*p.shape)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    cases[f"AdamW step ({sum(p.numel() for p in params) / 1e6:.1f}M params)"] = opt.step
    return cases


def _param_shapes() -> list[tuple[int, ...]]:
    """The headline GPT's parameter shapes."""
    block = [(D,), (3 * D, D), (D, D), (D,), (H, D), (D, H)]
    return [(V, D)] + block * 6 + [(D,), (V, D)]


def worker(framework: str) -> None:
    """Time every row of one framework in this process; print {row: ms} as JSON."""
    if framework == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        cases = torch_cases(np.random.default_rng(0))
    else:
        cases = deers_cases(np.random.default_rng(0))
    print(json.dumps({name: median_ms(fn) for name, fn in cases.items()}))


def run_worker(framework: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", framework], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=["torch"], default=None)
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of one process per framework")
    parser.add_argument("--worker", choices=["deers", "torch"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.worker:
        return worker(args.worker)
    print(f"machine: {machine_description()}")
    frameworks = ["deers", "torch"] if args.compare else ["deers"]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in frameworks}
    for r in range(args.repeats):
        for name in (frameworks if r % 2 == 0 else frameworks[::-1]):
            runs[name].append(run_worker(name))
    theirs = "torch" in runs
    print(f"{'primitive':48s}{'deers ms':>10s}" + (f"{'torch ms':>10s}{'ratio':>8s}" if theirs else ""))
    for name in runs["deers"][0]:
        mine = statistics.median(run[name] for run in runs["deers"])
        line = f"{name:48s}{mine:>10.2f}"
        if theirs and name in runs["torch"][0]:
            other = statistics.median(run[name] for run in runs["torch"])
            line += f"{other:>10.2f}{other / mine:>7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
