"""Backends: where the numbers are computed. Every op in Deers is written over this contract.

A backend stores data in flat *buffers* (a 1-D array of one dtype) and reads them through a
`Layout` (shape, strides, offset, all in elements). Primitives take `(buffer, layout)` pairs and
return a fresh contiguous buffer unless they say otherwise. The CPU backend (NumPy) is the oracle
every other backend is tested against. A new backend implements these primitives, nothing else:

 1. empty(numel, dtype) / full(numel, value, dtype)       allocate (uninitialised / filled)
 2. from_numpy(array, dtype) / to_numpy(buf, layout)       host transfer (to_numpy returns a copy)
 3. seed(s), get_rng_state(), set_rng_state(state),
    randn(numel, dtype) / rand(numel, dtype) / randint(numel, low, high)
                                                           random numbers from the backend's generator
 4. unary(name, a, la, out=None)                           neg exp log sqrt rsqrt sin cos tanh sigmoid
                                                           relu abs sign square logical_not
 5. binary(name, a, la, b, lb, out=None)                   add sub mul div pow maximum minimum
                                                           eq ne lt le gt ge (same shapes; compare -> bool)
 6. scalar(name, a, la, value, reverse=False, out=None)    the binary ops with a Python number
                                                           (reverse: value OP a)
 7. where(c, lc, a, la, b, lb)                             c ? a : b
 8. cast(a, la, dtype)                                     convert element type
 9. reduce(name, a, la, axes)                              sum max min argmax over axes, dims kept as 1
10. matmul(a, la, b, lb)                                   batched GEMM, (..., m, k) @ (..., k, n);
                                                           batch dims already broadcast (stride 0 allowed)
11. index_select(a, la, dim, idx, lidx)                    a.index_select(dim, idx); IndexError out of range
    index_add(shape, dtype, dim, idx, lidx, src, lsrc)     zeros(shape) with src rows added at idx
12. gather(a, la, dim, idx, lidx)                          a.gather(dim, idx); IndexError out of range
    scatter_add(shape, dtype, dim, idx, lidx, src, lsrc)   zeros(shape).scatter_add_(dim, idx, src)
13. copy(src, lsrc, dst, ldst)                             write a (broadcastable) view into a view, in place
14. softmax(a, la, log) / softmax_backward(y, g, shape, log)
                                                           fused (log-)softmax over the last dim
15. cross_entropy(logits, targets, n, c, ignore_index, label_smoothing, overwrite_logits=False)
                                                           fused loss: returns (loss_sum, count, grad_logits
                                                           already divided by the count); with
                                                           overwrite_logits the gradient may reuse the
                                                           logits buffer (a memory hint)
16. rmsnorm(x, w, rows, d, eps) / rmsnorm_backward(...)   fused RMSNorm over the last dim
17. adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
                                                           fused in-place AdamW update of flat buffers

Rules every backend keeps (the ops rely on them):
- indices may be in [-size, size) and negatives wrap; anything else raises IndexError;
- gather accepts an index smaller than the input along the other dims (as torch.gather);
- reduce("sum") of integer or bool data returns int64;
- copy writes into the destination buffer in place (compact, cat and leaf gradients use
  empty + copy);
- results are fresh buffers the caller owns; `out=` (when given) is written and returned.

`backend_for(device)` returns the one backend instance of a device. Backends other than the CPU
one are imported only when asked for, so `import deers` works without CuPy or MLX.
"""
from __future__ import annotations

from ..device import Device, as_device
from ..errors import BackendUnavailable

_instances: dict = {}
_last_seed: dict = {"seed": None}  # set by seed_all, so a backend created later starts seeded too


def backend_for(device: "Device | str"):
    """The backend object that computes on `device` (created on first use, then reused)."""
    device = as_device(device)
    backend = _instances.get(device)
    if backend is None:
        backend = _create(device)
        if _last_seed["seed"] is not None:
            backend.seed(_last_seed["seed"])
        _instances[device] = backend
    return backend


def seed_all(seed: int) -> None:
    """Seed every backend created so far and, on creation, every backend created later.

    `manual_seed(0)` followed by the first `randn(..., device="mps")` must be reproducible even
    though the mps backend did not exist when the seed was set (PyTorch seeds CUDA lazily alike).
    """
    _last_seed["seed"] = seed
    for backend in _instances.values():
        backend.seed(seed)


def _create(device: Device):
    if device.kind == "cpu":
        from .cpu import CPUBackend

        return CPUBackend()
    if device.kind == "cuda":
        try:
            from .cuda import CUDABackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"device {device} needs CuPy: pip install 'deers[cuda12]' (or 'deers[cuda13]') ({exc})") from exc
        return CUDABackend(device.index)
    if device.kind == "mps":
        try:
            from .mlx import MLXBackend
        except ImportError as exc:
            raise BackendUnavailable(
                f"device mps needs MLX: pip install 'deers[mps]' (on Linux: pip install 'mlx[cpu]') ({exc})") from exc
        return MLXBackend()
    raise BackendUnavailable(f"no backend for device {device}")


def loaded_backends() -> list:
    """Backends created so far (manual_seed seeds each of them)."""
    return list(_instances.values())
