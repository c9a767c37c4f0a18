"""GPU checks that the CPU test suite cannot make, for benchmarks/cuda_all.sh (needs CuPy and a GPU).

    python3 benchmarks/cuda_checks.py compile   # NVRTC-compile every kernel, registers per thread
    python3 benchmarks/cuda_checks.py sweep     # numerics only a real GPU shows

`compile` builds every .cu file with the backend's own options (the CuPy kernel cache it fills
is the one the later steps use) and prints, per kernel the backend launches, its registers, local
(spilled) bytes, static shared bytes and the most threads per block it can be launched with; a
kernel that the backend launches with 1024 threads but that cannot run 1024 is a failure.

`sweep` prints one line per check, "ok" or "FAIL": GEMMs in f32, TF32, bf16 and f16, 2-D and 4-D
(transposed and broadcast operands too) against float64 products on the host; a sum, a copy and a
cast over more than 2^31 elements; index_add with every row landing on one index (atomics under
contention); and run-to-run bit equality of softmax, cross-entropy, RMSNorm and a long sum.
Exit status: the number of failed checks (0 = all passed).
"""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np

import deers
from deers.array import NDArray
from deers.backend.cuda import plan, set_allow_tf32

CUDA = "cuda"
LAUNCHED_WITH_1024 = ("softmax", "softmax_backward", "cross_entropy", "cross_entropy_targets")  # cap=1024
FAILED: list[str] = []


def report(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


# ---- compile ----------------------------------------------------------------------------------------
def compile_all() -> None:
    import cupy

    from deers.backend.cuda.kernels import compile_options, read_kernel_source

    options = compile_options()
    print(f"NVRTC {cupy.cuda.nvrtc.getVersion()}, options {' '.join(options)}")
    print(f"{'kernel':36s}{'regs':>6s}{'local B':>9s}{'shared B':>10s}{'max threads':>13s}")
    for file in plan.KERNEL_FILES:
        start = time.perf_counter()
        try:
            module = cupy.RawModule(code=read_kernel_source(file), options=options)
            module.get_function(sorted(n for n in plan.all_kernel_names() if _file_of(n) == file)[0])  # compiles
        except Exception as exc:  # CompileException carries the NVRTC log
            report(f"compile {file}", False, str(exc)[-2000:])
            continue
        report(f"compile {file}", True, f"{time.perf_counter() - start:.1f}s")
        for name in sorted(n for n in plan.all_kernel_names() if _file_of(n) == file):
            try:
                fn = module.get_function(name)
                regs, local, shared, most = (_attribute(fn, a) for a in ("num_regs", "local_size_bytes",
                                                                         "shared_size_bytes", "max_threads_per_block"))
            except Exception as exc:  # a missing entry point, or an attribute this CuPy does not give
                report(f"kernel {name}", False, f"{type(exc).__name__}: {exc}")
                continue
            print(f"  {name:34s}{regs:>6d}{local:>9d}{shared:>10d}{most:>13d}")
            family = name.rsplit("_", 1)[0]
            if family in LAUNCHED_WITH_1024 and most < 1024:
                report(f"threads {name}", False, f"launched with 1024 threads but runs at most {most}")


def _attribute(kernel, name: str) -> int:
    """A kernel attribute (CU_FUNC_ATTRIBUTE_*) from a CuPy RawKernel, whichever way this CuPy
    spells it: `kernel.function.<name>` (a value or a method) in newer versions, where the old
    `kernel.<name>` properties warn that they are deprecated."""
    function = getattr(kernel, "function", None)
    value = getattr(function, name, None) if function is not None else None
    if value is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            value = getattr(kernel, name, None)
            if value is None:
                value = kernel.attributes[name]
    return int(value() if callable(value) else value)


def _file_of(name: str) -> str:
    family = max((f for f in plan.KERNELS if name.startswith(f + "_")), key=len)
    return plan.KERNELS[family][0]


# ---- sweep ------------------------------------------------------------------------------------------
def gemm_checks() -> None:
    rng = np.random.default_rng(0)
    shapes = {"2-D": ((256, 384), (384, 320)), "4-D": ((2, 3, 64, 96), (2, 3, 96, 80))}
    # (dtype, tf32) -> the relative error bound of |got - exact| / (|a| |b|), k up to 384
    cases = {("f32", False): 1e-5, ("f32", True): 3e-3, ("bf16", False): 2e-2, ("f16", False): 3e-3}
    for (dtype, tf32), bound in cases.items():
        set_allow_tf32(tf32)
        try:
            for kind, (sa, sb) in shapes.items():
                for layout in ("plain", "transposed", "broadcast") + (("heads",) if kind == "4-D" else ()):
                    a = rng.standard_normal(sa)
                    b = rng.standard_normal(sb)
                    ta = deers.tensor(a, dtype=dtype, device=CUDA)
                    tb = deers.tensor(b, dtype=dtype, device=CUDA)
                    if layout == "heads":  # B as the GPT's v: heads of a (B0, T, 3 nh hd) buffer, batch
                        b0, nh, t, hd = sb  # dims that do not collapse (f32: the pointer-array GEMM)
                        qkv = deers.tensor(rng.standard_normal((b0, t, 3 * nh * hd)), dtype=dtype, device=CUDA)
                        tb = qkv.narrow(2, 2 * nh * hd, nh * hd).reshape(b0, t, nh, hd).transpose(1, 2)
                    if layout == "transposed":  # B given as a transposed view of (..., n, k)
                        tb = deers.tensor(np.swapaxes(b, -1, -2).copy(), dtype=dtype, device=CUDA).transpose(-1, -2)
                    if layout == "broadcast":  # B shared by every batch entry (stride 0)
                        b = b[(0,) * (b.ndim - 2)]
                        tb = deers.tensor(b, dtype=dtype, device=CUDA)
                    a64 = ta.to_dtype(deers.f64).numpy()  # the rounded inputs, exactly
                    b64 = tb.to_dtype(deers.f64).numpy()
                    exact = np.matmul(a64, b64)
                    scale = np.matmul(np.abs(a64), np.abs(b64))
                    got = (ta @ tb).to_dtype(deers.f64).numpy()
                    err = float(np.max(np.abs(got - exact) / scale))
                    name = f"gemm {dtype}{' tf32' if tf32 else ''} {kind} {layout}"
                    report(name, err <= bound, f"max relative error {err:.2e} (bound {bound:.0e})")
        finally:
            set_allow_tf32(False)


def large_checks() -> None:
    """Element counts past 2^31: the kernels index with 64-bit integers."""
    n = (1 << 31) + 5
    ones = NDArray.full((n,), 1, deers.i64, CUDA)  # 17 GB
    total = ones.sum().item()
    report("sum of 2^31+5 i64 ones", total == n, f"got {total}")
    tail = ones.narrow(0, 2, n - 2).compact()  # a strided copy of 2^31+3 elements
    got = tail.narrow(0, n - 3, 1).item()
    report("copy of 2^31+3 i64 elements", got == 1 and tail.shape == (n - 2,), f"last element {got}")
    del ones, tail
    halves = NDArray.full((n,), 0, deers.f16, CUDA)
    halves.narrow(0, n - 2, 1).assign(NDArray.full((1,), 3.0, deers.f16, CUDA))
    wide = halves.cast(deers.f32)
    last, before = wide.narrow(0, n - 2, 1).item(), wide.narrow(0, n - 3, 1).item()
    report("f16 -> f32 cast of 2^31+5 elements", (last, before) == (3.0, 0.0), f"got {last}, {before}")


def atomic_checks() -> None:
    """index_add with every source row on index 0: 2^20 atomicAdds on each of 4 addresses."""
    rows = 1 << 20
    ids = NDArray.full((rows,), 0, deers.i64, CUDA)
    for dtype in (deers.f32, deers.f64, deers.i64):
        src = NDArray.full((rows, 4), 1, dtype, CUDA)
        got = src.index_add_into((8, 4), 0, ids).numpy()
        ok = bool((got[0] == rows).all() and (got[1:] == 0).all())
        report(f"index_add contention {dtype.name}", ok, f"row 0 = {got[0].tolist()} (want {rows})")


def determinism_checks() -> None:
    """The same inputs twice give the same bits (no atomics in these kernels' results)."""
    from deers.fused.attention import causal_softmax
    from deers.nn import RMSNorm

    rng = np.random.default_rng(1)
    logits = deers.tensor(rng.standard_normal((512, 50257)), dtype=deers.f32, device=CUDA)
    targets = deers.tensor(rng.integers(0, 50257, 512), device=CUDA)
    scores = deers.tensor(rng.standard_normal((4, 6, 256, 256)), dtype=deers.f32, device=CUDA)
    x = deers.Var(deers.tensor(rng.standard_normal((1024, 768)), dtype=deers.f32, device=CUDA))
    norm = RMSNorm(768, device=CUDA)
    long = deers.tensor(rng.standard_normal(1 << 26), dtype=deers.f32, device=CUDA)

    def rms_norm_and_gradients():
        grads = (norm(x) * x).sum().backward()
        return np.concatenate([grads[x].numpy().ravel(), grads[norm.weight].numpy().ravel()])

    runs = {
        "softmax": lambda: logits.softmax(dim=-1).numpy(),
        "causal softmax": lambda: causal_softmax(scores, 0.125).numpy(),
        "cross_entropy": lambda: deers.loss.cross_entropy(logits, targets).numpy(),
        "long sum": lambda: long.sum().numpy(),
        "rms_norm and its gradients": rms_norm_and_gradients,
        "sum of squares of many arrays": lambda: NDArray.sum_of_squares(
            [logits.data, scores.data, x.data, long.data]).numpy(),
    }
    for name, fn in runs.items():
        first, second = fn(), fn()
        same = first.tobytes() == second.tobytes()
        report(f"run-to-run bits {name}", same, "identical" if same else "differ")


def multi_tensor_checks() -> None:
    """One AdamW launch over many parameters (crossing the kernel's 4,096-element chunks) against
    the CPU backend, and the clipping scale."""
    rng = np.random.default_rng(2)
    sizes = [(3, 5), (0,), (4097,), (300, 70)]
    columns = [[rng.standard_normal(s).astype(np.float32) for s in sizes] for _ in range(4)]  # p, g, m, v
    columns[3] = [np.abs(v) for v in columns[3]]
    results = []
    for device in ("cpu", CUDA):
        arrays = [[NDArray.from_numpy(a, deers.f32, device) for a in column] for column in columns]
        for step in (1, 2, 3):
            NDArray.adamw_steps_(*arrays, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        NDArray.scale_(arrays[0], NDArray.full((), 0.5, deers.f32, device))
        results.append(np.concatenate([a.numpy().ravel() for column in arrays for a in column]))
    err = float(np.max(np.abs(results[0] - results[1]))) if results[0].size else 0.0
    report("multi-tensor adamw + scale vs cpu", err <= 1e-5, f"max abs difference {err:.2e}")


def sweep() -> None:
    for group in (gemm_checks, multi_tensor_checks, atomic_checks, determinism_checks, large_checks):
        start = time.perf_counter()
        try:
            group()
        except Exception as exc:  # one broken group must not hide the others
            report(group.__name__, False, f"{type(exc).__name__}: {exc}")
        print(f"# {group.__name__}: {time.perf_counter() - start:.1f}s", flush=True)


def main(argv: list[str]) -> int:
    if argv[1:] == ["compile"]:
        compile_all()
    elif argv[1:] == ["sweep"]:
        sweep()
    else:
        print(__doc__)
        return 2
    print(f"# {len(FAILED)} failed" + (f": {', '.join(FAILED)}" if FAILED else ""))
    return min(len(FAILED), 100)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
