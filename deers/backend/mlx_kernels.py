"""Hand-written Metal kernels for the "mps" backend, each beside its MLX-ops reference.

Only the AdamW update has a custom kernel: softmax and RMSNorm already run as fused Metal kernels
inside MLX (`mx.softmax`, `mx.fast.rms_norm`). The AdamW step, written with MLX ops, is about a
dozen element-wise nodes per parameter; the kernel does the whole update in one pass, reading
param/grad/m/v once and writing param/m/v once.

The Metal kernel runs only where MLX computes on the Apple GPU (`mx.metal.is_available()` and a
GPU default device); everywhere else, including the Linux `mlx[cpu]` build this project is tested
on, `adamw_reference` is used. `adamw_reference` is also the specification the kernel is checked
against (tests/test_backend_mlx.py, run on a Mac).
"""
from __future__ import annotations

import mlx.core as mx

# Body of `[[kernel]] void adamw(...)`; MLX generates the signature from the names below.
# hyper = [lr, beta1, beta2, eps, weight_decay, bias1, bias2]; arithmetic in f32 for every T.
ADAMW_SOURCE = """
    uint i = thread_position_in_grid.x;
    float lr = hyper[0];
    float beta1 = hyper[1];
    float beta2 = hyper[2];
    float eps = hyper[3];
    float weight_decay = hyper[4];
    float bias1 = hyper[5];
    float bias2 = hyper[6];
    float g = float(grad[i]);
    float p = float(param[i]) * (1.0f - lr * weight_decay);
    float m_i = beta1 * float(m[i]) + (1.0f - beta1) * g;
    float v_i = beta2 * float(v[i]) + (1.0f - beta2) * g * g;
    float denom = metal::sqrt(v_i / bias2) + eps;
    param_out[i] = T(p - (lr / bias1) * m_i / denom);
    m_out[i] = T(m_i);
    v_out[i] = T(v_i);
"""

_kernels: dict = {}


def _adamw_kernel():
    """The compiled kernel, built on first use (compiling needs Metal)."""
    if "adamw" not in _kernels:
        _kernels["adamw"] = mx.fast.metal_kernel(
            name="deers_adamw", input_names=["param", "grad", "m", "v", "hyper"],
            output_names=["param_out", "m_out", "v_out"], source=ADAMW_SOURCE)
    return _kernels["adamw"]


def adamw_reference(param: mx.array, grad: mx.array, m: mx.array, v: mx.array, lr: float, beta1: float,
                    beta2: float, eps: float, weight_decay: float, step: int) -> tuple[mx.array, mx.array, mx.array]:
    """New (param, m, v) of one AdamW step with MLX ops, in the buffers' dtype like the CPU backend.

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p = p (1 - lr wd) - lr/(1-b1^t) m / (sqrt(v/(1-b2^t)) + eps)
    """
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    new_param = param * (1.0 - lr * weight_decay) if weight_decay else param
    new_m = m * beta1 + (1.0 - beta1) * grad
    new_v = v * beta2 + (1.0 - beta2) * mx.square(grad)
    denom = mx.sqrt(new_v / bias2) + eps
    new_param = new_param - (lr / bias1) * new_m / denom
    return new_param, new_m, new_v


def adamw_metal(param: mx.array, grad: mx.array, m: mx.array, v: mx.array, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, step: int) -> tuple[mx.array, mx.array, mx.array]:
    """The same update as `adamw_reference` in one Metal kernel (falls back when dtypes differ)."""
    if not (param.dtype == grad.dtype == m.dtype == v.dtype):
        return adamw_reference(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
    hyper = mx.array([lr, beta1, beta2, eps, weight_decay, 1.0 - beta1 ** step, 1.0 - beta2 ** step],
                     dtype=mx.float32)
    outputs = _adamw_kernel()(
        inputs=[param, grad, m, v, hyper], template=[("T", param.dtype)],
        grid=(param.size, 1, 1), threadgroup=(256, 1, 1),
        output_shapes=[param.shape, m.shape, v.shape], output_dtypes=[param.dtype, m.dtype, v.dtype])
    return outputs[0], outputs[1], outputs[2]
