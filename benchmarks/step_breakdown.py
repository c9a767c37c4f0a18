"""Where one Deers GPT training step's time goes on the CPU: per phase, per GEMM shape, per backend op.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/step_breakdown.py --config headline

Every method of the CPU backend object is wrapped (in this script only; the library is not
changed) with a timer, so each call the step makes is counted where it is computed: matmuls by
shape and operand layout, everything else by primitive (and sub-function: "binary:add"). For
each GEMM shape the script then measures, in isolation, (1) the same call replayed on fresh
operands of the same layout and (2) the best rate NumPy's BLAS reaches for that (batch, M, K, N)
with operands laid out as it likes (contiguous, either transposition, the stack or a loop of 2-D
products), and prints both next to the rate inside the step. What is not in any backend call is
Python: autograd, NDArray bookkeeping, the optimizer's loop. `deers.profiler` gives the same step
by autograd op instead (docs/inside.md); this table is one level lower, where the backend works.
Output is markdown.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from math import prod

import numpy as np

from deers.backend import cpu_attention, cpu_threads

from common import CONFIGS, machine_description, matmul_peak_gflops
from gpt_step import PHASES, DeersRunner, batches, gpt_config


class BackendTimer:
    """Wraps a backend instance's public methods; adds up seconds and calls per key."""

    def __init__(self, backend):
        self.backend = backend
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.gemm_layouts: dict[str, tuple] = {}  # key -> (la, lb, dtype) of its first call, for the replay
        self.attention_calls: dict[str, tuple] = {}  # causal_attention(_backward) -> its first call's layouts
        self.depth = 0
        self.recording = False
        self.originals = {}
        for name in dir(type(backend)):
            method = getattr(backend, name)
            if name.startswith("_") or not callable(method) or name in ("seed", "get_rng_state", "set_rng_state"):
                continue
            self.originals[name] = method
            setattr(backend, name, self._wrap(name, method))  # an instance attribute shadows the class's

    def restore(self) -> None:
        for name in self.originals:
            delattr(self.backend, name)

    def _wrap(self, name: str, method):
        def timed(*args, **kwargs):
            if not self.recording or self.depth:
                return method(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.depth -= 1
                key = self._key(name, args)
                self.seconds[key] += elapsed
                self.calls[key] += 1

        return timed

    def _key(self, name: str, args: tuple) -> str:
        if name == "matmul":
            a, la, b, lb = args[:4]
            key = gemm_key(la, lb)
            self.gemm_layouts.setdefault(key, (la, lb, a.dtype))
            return key
        if name in ("causal_attention", "causal_attention_backward"):
            self.attention_calls.setdefault(name, (args[0].dtype, args[1::2], args[-1]))  # layouts, scale
        if name in ("unary", "binary", "scalar", "reduce"):
            return f"{name}:{getattr(args[0], 'value', args[0])}"  # BinaryFn.ADD and "add" alike
        return name


def operand_form(layout) -> str:
    """N: rows contiguous; T: columns contiguous (a transposed view); S: neither (strided)."""
    strides = layout.strides
    if strides[-1] == 1 or layout.shape[-1] == 1:
        return "N"
    if strides[-2] == 1 or layout.shape[-2] == 1:
        return "T"
    return "S"


def gemm_key(la, lb) -> str:
    batch = np.broadcast_shapes(la.shape[:-2], lb.shape[:-2])
    m, k, n = la.shape[-2], la.shape[-1], lb.shape[-1]
    stack = "x".join(map(str, batch)) + " x " if batch else ""
    return f"{stack}{m}x{k}x{n} {operand_form(la)}{operand_form(lb)}"


def gemm_flops(la, lb) -> float:
    batch = prod(np.broadcast_shapes(la.shape[:-2], lb.shape[:-2]))
    return 2.0 * batch * la.shape[-2] * la.shape[-1] * lb.shape[-1]


@contextmanager
def native_blas_threads():
    """NumPy's OpenBLAS at one thread per core, as it starts, for the isolated peaks: the CPU
    backend set it to one thread and splits GEMMs over its own pool (deers.backend.cpu_threads)."""
    api = cpu_threads.openblas_thread_api()
    if api is None:
        yield
        return
    before = api[0]()
    api[1](cpu_threads.usable_cores())
    try:
        yield
    finally:
        api[1](before)


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def replay_seconds(matmul, la, lb, dtype) -> float:
    """The same backend call on fresh random buffers of the same layouts, alone."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(la.offset + la.span()).astype(dtype)
    b = rng.standard_normal(lb.offset + lb.span()).astype(dtype)
    return best_seconds(lambda: matmul(a, la, b, lb))


class TimedNumpy:
    """Stands in for the numpy module inside cpu_attention during a replay: every np.matmul timed."""

    def __init__(self):
        self.seconds = 0.0

    def __getattr__(self, name: str):
        return getattr(np, name)

    def matmul(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return np.matmul(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def attention_gemm_fraction(backend, method, dtype, layouts, scale) -> float:
    """The share of a causal_attention(_backward) call's time spent in its GEMMs: the call replayed
    on fresh random operands of the same layouts, on one thread, with np.matmul timed inside."""
    rng = np.random.default_rng(2)
    buffers = [rng.standard_normal(layout.offset + layout.span()).astype(dtype) * 0.3 for layout in layouts]
    args = [x for pair in zip(buffers, layouts) for x in pair] + [scale]
    pool, backend.pool = backend.pool, cpu_threads.RowPool(1)
    timed = TimedNumpy()
    try:
        method(*args)  # warm
        cpu_attention.np = timed
        start = time.perf_counter()
        method(*args)
        wall = time.perf_counter() - start
    finally:
        cpu_attention.np, backend.pool = np, pool
    return timed.seconds / wall


def numpy_peak(batch: int, m: int, k: int, n: int, dtype) -> tuple[float, str]:
    """Best seconds NumPy takes for `batch` products (m, k) @ (k, n), over the layouts BLAS likes."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    a_t = np.ascontiguousarray(a.transpose(0, 2, 1))  # (batch, k, m): A^T stored row-major
    b_t = np.ascontiguousarray(b.transpose(0, 2, 1))
    out = np.empty((batch, m, n), dtype)
    out_t = np.empty((batch, n, m), dtype)
    forms = {"NN": (a, b), "NT": (a, b_t.transpose(0, 2, 1)), "TN": (a_t.transpose(0, 2, 1), b),
             "TT": (a_t.transpose(0, 2, 1), b_t.transpose(0, 2, 1))}
    candidates = {}
    for form, (x, y) in forms.items():
        candidates[f"loop {form}"] = lambda x=x, y=y: [np.matmul(x[i], y[i], out=out[i]) for i in range(batch)]
        if batch > 1:
            candidates[f"stack {form}"] = lambda x=x, y=y: np.matmul(x, y, out=out)
    # C^T = B^T A^T, written into a (n, m) buffer
    candidates["loop C^T=B^T A^T"] = lambda: [np.matmul(b_t[i], a_t[i], out=out_t[i]) for i in range(batch)]
    timed = {name: best_seconds(fn, 3) for name, fn in candidates.items()}
    name = min(timed, key=timed.get)
    return timed[name], name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="headline")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=30, help="rows of the non-GEMM table")
    args = parser.parse_args(argv)

    config = gpt_config(args.config)
    batch = CONFIGS[args.config][-1]
    machine_peak = matmul_peak_gflops()  # before the backend exists: the BLAS at its own threads
    runner = DeersRunner(config, "cpu", "f32")
    timer = BackendTimer(runner.params[0].data.backend)
    step_times = []
    for i, (idx, targets) in enumerate(batches(config, batch, args.warmup + args.steps, args.seed)):
        inputs = runner.batch(idx, targets)
        if i == args.warmup:
            runner.timer.totals.clear()
            timer.recording = True
        start = time.perf_counter()
        runner.step(*inputs)
        if i >= args.warmup:
            step_times.append(time.perf_counter() - start)
    timer.recording = False
    steps = len(step_times)
    step_ms = 1e3 * sum(step_times) / steps
    per_step = {key: 1e3 * s / steps for key, s in timer.seconds.items()}
    calls = {key: c // steps for key, c in timer.calls.items()}

    print(f"machine: {machine_description()}")
    print(f"config {args.config}: {config}, batch {batch}; {steps} timed steps after {args.warmup} warm-up; "
          f"times are per step (mean)\n")
    print(f"float32 GEMM peak of NumPy's BLAS here (2048^3 and lm_head shapes): {machine_peak:.0f} GFLOP/s\n")

    print("| phase | ms |\n| --- | ---: |")
    for phase in PHASES:
        print(f"| {phase} | {1e3 * runner.timer.totals.get(phase, 0.0) / steps:.1f} |")
    print(f"| **step** (median {1e3 * statistics.median(step_times):.1f}) | **{step_ms:.1f}** |\n")

    matmul = timer.originals["matmul"]
    gemm_rows, gemm_ms, gemm_flop = [], 0.0, 0.0
    # every replay first, then every peak: OpenBLAS's own threads, once used for a peak, spin for
    # ~0.1 s and would slow a replay split over the backend's threads right after
    replays = {key: replay_seconds(matmul, la, lb, dtype) for key, (la, lb, dtype) in timer.gemm_layouts.items()}
    for key, (la, lb, dtype) in timer.gemm_layouts.items():
        flop = gemm_flops(la, lb) * calls[key]
        ms = per_step[key]
        gemm_ms += ms
        gemm_flop += flop
        batch_count = prod(np.broadcast_shapes(la.shape[:-2], lb.shape[:-2]))
        with native_blas_threads():
            peak_s, best_form = numpy_peak(batch_count, la.shape[-2], la.shape[-1], lb.shape[-1], dtype)
        one = gemm_flops(la, lb)
        gemm_rows.append((ms, key, calls[key], flop / ms / 1e6, one / replays[key] / 1e9, one / peak_s / 1e9, best_form))
    print("GEMMs (backend matmul; form: N rows contiguous, T a transposed view, S strided; "
          "'alone' replays the same call on fresh buffers; 'peak' is NumPy's best layout for the shape, on the BLAS's own threads)\n")
    print("| GEMM (batch x M x K x N, forms) | calls | ms | GFLOP/s in step | GFLOP/s alone | peak GFLOP/s "
          "| peak layout | % of peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for ms, key, n, rate, alone, peak, form in sorted(gemm_rows, reverse=True):
        print(f"| {key} | {n} | {ms:.1f} | {rate:.0f} | {alone:.0f} | {peak:.0f} | {form} | {100 * rate / peak:.0f}% |")
    print(f"| **all GEMMs** | {sum(r[2] for r in gemm_rows)} | **{gemm_ms:.1f}** | "
          f"**{gemm_flop / gemm_ms / 1e6:.0f}** | | | | |\n")

    others = sorted(((ms, key) for key, ms in per_step.items() if key not in timer.gemm_layouts), reverse=True)
    other_ms = sum(ms for ms, _ in others)
    print("Non-GEMM backend calls\n")
    print("| backend op | calls | ms | us/call | % of step |\n| --- | ---: | ---: | ---: | ---: |")
    for ms, key in others[:args.limit]:
        print(f"| {key} | {calls[key]} | {ms:.1f} | {1e3 * ms / max(calls[key], 1):.0f} | {100 * ms / step_ms:.1f}% |")
    rest = others[args.limit:]
    if rest:
        print(f"| ({len(rest)} more) | {sum(calls[k] for _, k in rest)} | {sum(m for m, _ in rest):.1f} | | |")
    print(f"| **all non-GEMM backend calls** | {sum(calls[k] for _, k in others)} | **{other_ms:.1f}** | | "
          f"{100 * other_ms / step_ms:.1f}% |\n")

    outside = step_ms - gemm_ms - other_ms
    inner_ms = 0.0  # the GEMMs inside the fused attention primitive (CPU: blocked, one call per layer)
    for name, (dtype, layouts, scale) in timer.attention_calls.items():
        share = attention_gemm_fraction(timer.backend, timer.originals[name], dtype, layouts, scale)
        inner_ms += share * per_step[name]
        print(f"{name}: {100 * share:.0f}% of its time in GEMMs (replayed alone on one thread)")
    print("\n| summary | ms | % of step |\n| --- | ---: | ---: |")
    print(f"| GEMMs | {gemm_ms:.1f} | {100 * gemm_ms / step_ms:.0f}% |")
    if inner_ms:
        print(f"| GEMMs inside causal_attention (its share of the calls above, estimated) | {inner_ms:.1f} | "
              f"{100 * inner_ms / step_ms:.0f}% |")
    print(f"| non-GEMM backend calls | {other_ms:.1f} | {100 * other_ms / step_ms:.0f}% |")
    print(f"| outside the backend (Python: autograd, NDArray, optimizer loop; timer overhead) | {outside:.1f} | "
          f"{100 * outside / step_ms:.0f}% |")
    print(f"| **step minus GEMM time** | **{step_ms - gemm_ms:.1f}** | {100 * (step_ms - gemm_ms) / step_ms:.0f}% |")
    if inner_ms:
        rest = step_ms - gemm_ms - inner_ms
        print(f"| **step minus all GEMM time** (attention's GEMMs too) | **{rest:.1f}** | {100 * rest / step_ms:.0f}% |")
    print(f"| step | {step_ms:.1f} | 100% |")
    timer.restore()


if __name__ == "__main__":
    main()
