"""Count what one GPT training step asks of a GPU, without a GPU: kernel launches, GEMMs, host syncs.

    python benchmarks/cuda_launches.py --config headline            # one line
    python benchmarks/cuda_launches.py --config gpt2-124m --detail  # and the launches per kernel

The real CUDA backend (deers/backend/cuda) runs one full step — forward with the fused lm_head +
cross-entropy, backward, gradient clipping, AdamW — on a *counting runtime*: memory is plain NumPy
(np.zeros, so untouched pages cost nothing), kernels and GEMMs are counted instead of run, and every
device-to-host read or stream wait counts as a sync. The numbers are exact for the code path (they
depend on shapes, not on values); the values computed are garbage. The printed line is

    launches L, gemms G, syncs S, host us/op U

with U the step's wall time (less the time NumPy takes to allocate) per launch or GEMM: the Python cost of Deers and the backend's planning
above CuPy's own launch cost (about 5-10 us more per launch on a GPU). The step's loss is not read,
so S counts the syncs the step makes on its own (the target is 0). tests/test_cuda_launches.py keeps
L, G and S under the bounds of issue 14 (headline L + G <= 350, gpt2-124m L + G <= 1200, S = 0).
"""
from __future__ import annotations

import argparse
import collections
import math
import time

import numpy as np

from common import CONFIGS

import deers
from deers.backend import _instances
from deers.backend.cuda import CUDABackend
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, clip_grad_norm

BOUNDS = {"headline": 350, "gpt2-124m": 1200}  # L + G per training step (issue 14)


class CountingRuntime:
    """The runtime interface of deers.backend.cuda.kernels.CupyRuntime that computes nothing.

    `launches` counts kernel launches by kernel name, `gemms` the cuBLAS calls by operand layout,
    `syncs` the device-to-host reads (download) and stream waits (synchronize) by kind.
    """

    def __init__(self):
        self.launches: collections.Counter = collections.Counter()
        self.gemms: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.alloc_seconds = 0.0  # host memory is slower to allocate than a GPU memory pool: left out

    def reset(self) -> None:
        self.alloc_seconds = 0.0
        self.launches.clear()
        self.gemms.clear()
        self.syncs.clear()

    def empty(self, numel: int, dtype) -> np.ndarray:
        start = time.perf_counter()
        buf = np.zeros(numel, dtype)  # zeros: an error flag reads "no error"; its memset is not counted
        self.alloc_seconds += time.perf_counter() - start
        return buf

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.array(np.ascontiguousarray(array).reshape(-1), copy=True)

    def download(self, buf: np.ndarray) -> np.ndarray:
        self.syncs[f"download {buf.size} {buf.dtype}"] += 1
        return np.array(buf, copy=True)

    def address(self, buf: np.ndarray) -> int:
        return buf.ctypes.data

    def view(self, buf: np.ndarray, shape, strides, offset: int) -> np.ndarray:
        item = buf.itemsize
        return np.ndarray(shape, buf.dtype, buf, offset * item, tuple(s * item for s in strides))

    def synchronize(self) -> None:
        self.syncs["synchronize"] += 1

    def gemm(self, call, a: np.ndarray, b: np.ndarray, out: np.ndarray, sfx: str, allow_tf32: bool,
             accumulate: bool = False) -> None:
        ops = "".join("NT"[o.op] for o in (call.first, call.second))
        self.gemms[f"{sfx} batch {call.batch} m {call.m} n {call.n} k {call.k} ops {ops}"] += 1

    def gemm_batched(self, call, a: np.ndarray, b: np.ndarray, out: np.ndarray, sfx: str, allow_tf32: bool,
                     accumulate: bool = False) -> None:
        """A pointer-array GEMM (cublas<S|D>gemmBatched): one cuBLAS call, counted as a GEMM. Its
        pointer arrays come from the runtime's meta cache, an upload only on a miss: not a launch."""
        ops = "".join("NT"[o.op] for o in (call.first, call.second))
        self.gemms[f"{sfx} batched (pointers) {call.batch} m {call.m} n {call.n} k {call.k} ops {ops}"] += 1

    def matmul(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:  # integer GEMMs
        self.gemms[f"{x.dtype} {x.shape} @ {y.shape}"] += 1

    def meta(self, values: tuple[int, ...]) -> np.ndarray:
        return np.array(values, np.int64)

    def launch(self, k, grid, block, args) -> None:
        self.launches[k.name] += 1


def gpt_config(name: str) -> tuple[GPTConfig, int]:
    vocab, seq, n_layer, n_head, n_embd, mlp, batch = CONFIGS[name]
    return GPTConfig(vocab_size=vocab, sequence_len=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     mlp_hidden_dim=mlp), batch


def count_step(config_name: str, dtype: str = "f32", steps: int = 3) -> tuple[CountingRuntime, float]:
    """Run `steps` training steps on the counting runtime; returns the runtime holding the counts
    of the last step (the first one also creates the optimizer state) and the shortest wall time
    of the steps after the first, in s (the machine's noise only ever adds time)."""
    config, batch = gpt_config(config_name)
    runtime = CountingRuntime()
    cuda = deers.Device.cuda(0)
    saved = _instances.get(cuda)
    _instances[cuda] = CUDABackend(0, runtime=runtime)
    try:
        deers.manual_seed(0)
        model = GPT(config, device=cuda, dtype=dtype)
        params = model.parameters()
        opt = AdamW(params, lr=5e-4, weight_decay=0.1)
        rng = np.random.default_rng(0)
        data = rng.integers(0, config.vocab_size, (batch, config.sequence_len + 1), dtype=np.int64)
        idx = deers.tensor(data[:, :-1], device=cuda)
        targets = deers.tensor(data[:, 1:], device=cuda)
        seconds = math.inf
        for step in range(steps):
            runtime.reset()
            start = time.perf_counter()
            loss = model.loss(idx, targets)  # not read: a step that needs no sync
            grads = loss.backward()
            clip_grad_norm(params, grads, 1.0)
            opt.step_with_grads(grads)
            if step > 0 or steps == 1:
                seconds = min(seconds, time.perf_counter() - start - runtime.alloc_seconds)
    finally:
        if saved is None:
            _instances.pop(cuda, None)
        else:
            _instances[cuda] = saved
    return runtime, seconds


def summary(runtime: CountingRuntime, seconds: float) -> str:
    launches, gemms, syncs = (sum(c.values()) for c in (runtime.launches, runtime.gemms, runtime.syncs))
    per_op = seconds / max(1, launches + gemms) * 1e6
    return f"launches {launches}, gemms {gemms}, syncs {syncs}, host us/op {per_op:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="headline")
    parser.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16", "f64"])
    parser.add_argument("--detail", action="store_true", help="also print the counts per kernel, GEMM and sync")
    args = parser.parse_args(argv)
    runtime, seconds = count_step(args.config, args.dtype)
    print(f"{args.config} {args.dtype}: {summary(runtime, seconds)}")
    if args.detail:
        for title, counter in (("launches", runtime.launches), ("gemms", runtime.gemms), ("syncs", runtime.syncs)):
            print(f"{title}:")
            for name, n in counter.most_common():
                print(f"  {n:6d}  {name}")


if __name__ == "__main__":
    main()
