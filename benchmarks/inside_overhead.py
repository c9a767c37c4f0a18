"""What seeing inside costs: the profiler's check when it is off, the profiler when it is on, and
the memory ledger's bookkeeping per fresh buffer (always on).

    python benchmarks/inside_overhead.py --config tiny --steps 20

1. `apply` as it is (one read of the per-thread `profiling.session`) against a copy of `apply`
   without that read, on a small Add, so the difference is the hook's whole cost when not profiling.
2. A GPT training step (forward, backward, clip, AdamW) of a benchmarks/common.py config, outside
   and inside `deers.profiler.profile()`: the cost of profiling every op (two synchronisations,
   two clock reads and one Event per op); and once with the memory ledger switched off.
3. `deers.memory.track` of a fresh buffer (a weak reference and a few dict updates), the price
   every primitive's result pays.
Results go into docs/inside.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deers  # noqa: E402
from deers import memory, profiler  # noqa: E402
from deers.autograd import grad_mode  # noqa: E402
from deers.ops.binary import Add  # noqa: E402
from deers.tensor import Tensor, apply  # noqa: E402

from common import CONFIGS  # noqa: E402


def apply_without_hook(op, *inputs):
    """deers.tensor.apply as it was before the profiler: the same body without the session check."""
    needs = tuple([t.requires_grad for t in inputs])
    record = grad_mode.enabled and True in needs and op.differentiable
    op.needs_input_grad = needs if record else (False,) * len(inputs)
    out = op.forward(*[t.data for t in inputs])
    if record:
        return Tensor(out, requires_grad=True, _op=op, _inputs=inputs)
    return Tensor(out)


def per_call_us(function, calls: int, repeats: int) -> float:
    """Median over `repeats` of the microseconds per call of `function()`."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - began) / calls * 1e6)
    return statistics.median(times)


def hook_cost(calls: int, repeats: int) -> None:
    a, b = deers.randn(8), deers.randn(8)
    with_hook = lambda: apply(Add(), a, b)  # noqa: E731
    without = lambda: apply_without_hook(Add(), a, b)  # noqa: E731
    # interleave the two so that drifting CPU load hits both alike
    pairs = [(per_call_us(with_hook, calls, 1), per_call_us(without, calls, 1)) for _ in range(repeats)]
    hooked = statistics.median(p[0] for p in pairs)
    plain = statistics.median(p[1] for p in pairs)
    check = per_call_us(lambda: profiler.profiling.session is None, calls, repeats) - per_call_us(lambda: None,
                                                                                               calls, repeats)
    print(f"apply(Add) on (8,): {hooked:.2f} us with the hook, {plain:.2f} us without "
          f"({hooked - plain:+.2f} us, {100 * (hooked - plain) / plain:+.1f}%); the check alone: {check * 1e3:.0f} ns")


def step_cost(config: str, steps: int, device: str) -> None:
    from deers.models.gpt import GPT, GPTConfig
    from deers.optim import AdamW, clip_grad_norm

    vocab, seq, n_layer, n_head, n_embd, mlp, batch = CONFIGS[config]
    deers.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, sequence_len=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          mlp_hidden_dim=mlp), device=device)
    params = model.parameters()
    opt = AdamW(params, lr=5e-4, weight_decay=0.1)
    idx = deers.randint(0, vocab, (batch, seq), device=device)

    def step() -> None:
        loss = model.loss(idx, idx)
        grads = loss.backward()
        clip_grad_norm(params, grads, 1.0)
        opt.step_with_grads(grads)
        loss.item()

    step()  # warm up
    plain, profiled, covered, unledgered = [], [], [], []
    for _ in range(steps):  # alternate, for the same reason as above
        began = time.perf_counter()
        step()
        plain.append(time.perf_counter() - began)
        deers.array._track_memory = lambda buffer, nbytes, device: None  # the ledger switched off, for scale
        try:
            began = time.perf_counter()
            step()
            unledgered.append(time.perf_counter() - began)
        finally:
            deers.array._track_memory = memory.track
        began = time.perf_counter()
        with profiler.profile() as prof:
            step()
        profiled.append(time.perf_counter() - began)
        covered.append(prof.op_seconds() / prof.wall_seconds)
    off, on = statistics.median(plain) * 1e3, statistics.median(profiled) * 1e3
    bare = statistics.median(unledgered) * 1e3
    print(f"GPT step ({config}, {device}): {off:.1f} ms, {on:.1f} ms profiled ({100 * (on - off) / off:+.1f}%), "
          f"{len(prof.events())} op events, ops cover {100 * statistics.median(covered):.0f}% of the profiled wall; "
          f"{bare:.1f} ms without the memory ledger ({100 * (off - bare) / bare:+.1f}% for it)")


def ledger_cost(calls: int, repeats: int) -> None:
    buffers = [np.empty(1) for _ in range(calls)]
    times = []
    for _ in range(repeats):
        fresh = [np.empty(1) for _ in range(calls)]
        began = time.perf_counter()
        for buffer in fresh:
            memory.track(buffer, 8, deers.Device.CPU)
        times.append((time.perf_counter() - began) / calls * 1e6)
        del fresh
    del buffers
    print(f"deers.memory.track per fresh buffer: {statistics.median(times):.2f} us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    p.add_argument("--calls", type=int, default=20000, help="calls per microbenchmark repeat")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    hook_cost(args.calls, args.repeats)
    ledger_cost(args.calls, args.repeats)
    step_cost(args.config, args.steps, args.device)


if __name__ == "__main__":
    main()
