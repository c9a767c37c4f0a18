"""Muon (Keller Jordan, 2024): momentum SGD whose update is orthogonalized by Newton-Schulz, as torch.optim.Muon.

Muon is for the 2-D weight matrices of hidden layers. Per matrix and step (torch.optim.Muon's update):

    buf = momentum * buf + (1 - momentum) * g                 (buf starts at 0)
    u   = (1 - momentum) * g + momentum * buf   (nesterov)    or   u = buf
    O   = NewtonSchulz(u)                       (close to U V^T of the SVD u = U S V^T)
    p   = p * (1 - lr * weight_decay)
    p   = p - adjusted_lr * O,   adjusted_lr = lr * sqrt(max(1, rows / cols))       ("original")
                                          or lr * 0.2 * sqrt(max(rows, cols))        ("match_rms_adamw")

The singular values of O lie within a small band around 1 whatever those of u were (five steps
turn a 1000x spread into under 4x, tests/test_muon.py), so each direction of the update moves by
about the same amount however large or small its gradient was. Embeddings, the output head and the norm gains are not hidden
matrices (a row of an embedding is updated only when its token appears): give them to AdamW,
as `muon_with_adamw` does.

Newton-Schulz runs on the parameter's device with ordinary deers array ops (matmul, addmm), so it
works on every backend: in bf16 on CUDA, whose tensor cores multiply bf16 several times faster than
f32 (torch.optim.Muon iterates in bf16 everywhere), and in f32 elsewhere, where bf16 has no fast
GEMM and would only lose precision. `ns_dtype=` chooses either explicitly. The orthogonalized
update needs little precision: its singular values only have to land near 1.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from ..array import NDArray
from ..dtype import DType, as_dtype, bf16, f32
from ..errors import ShapeError, describe
from ..tensor import Tensor, Var
from .adamw import AdamW
from .optimizer import Optimizer, write_into, zeros_like_param

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Keller Jordan's Muon, as torch.optim.Muon
NS_STEPS = 5
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def default_ns_dtype(device) -> DType:
    """bf16 on CUDA (tensor cores; when ml_dtypes is installed), f32 on every other device."""
    return bf16 if device.kind == "cuda" and bf16.available else f32


def ns_dtype_of(value: "DType | str | None", who: str) -> DType | None:
    """The DType Newton-Schulz is asked to run in (None: the device's default); ValueError unless f32 or bf16."""
    if value is None:
        return None
    dtype = as_dtype(value)
    if dtype not in (f32, bf16):
        raise ValueError(f"{who}: the Newton-Schulz dtype must be None, f32 or bf16, got {value!r}")
    return dtype


def newton_schulz(g: NDArray, coefficients: tuple[float, float, float] = NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = EPS, dtype: "DType | str | None" = None) -> NDArray:
    """An approximately orthogonal matrix U S' V^T (S' near 1) from a 2-D g = U S V^T, in `dtype`
    (None: `default_ns_dtype` of g's device).

    X = g / max(||g||_F, eps) has every singular value <= 1; each step maps X to
    a X + (b A + c A^2) X with A = X X^T, which pushes every singular value s towards 1 along the
    quintic a s + b s^3 + c s^5. A wide matrix is iterated as is and a tall one transposed, so
    A is the smaller Gram matrix.
    """
    if g.ndim != 2:
        raise ShapeError(f"newton_schulz: needs a 2-D matrix, got shape {g.shape} {g.dtype.name} on {g.device}")
    if not 0 <= steps < 100:
        raise ValueError(f"newton_schulz: steps must be in [0, 100), got {steps}")
    dtype = ns_dtype_of(dtype, "newton_schulz") or default_ns_dtype(g.device)
    a, b, c = coefficients
    x = g.cast(dtype)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.transpose(0, 1)  # (cols, rows): the Gram matrix below is the smaller one
    norm = (x * x).sum().sqrt().scalar("maximum", eps)  # 0-d, stays on the device
    x = (x / norm).dense()  # (m, n), m <= n
    for _ in range(steps):
        gram = x.matmul(x.transpose(0, 1))  # A = X X^T, (m, m)
        poly = (gram * b).addmm_(gram * c, gram)  # b A + c A^2, (m, m)
        x = (x * a).addmm_(poly, x)  # a X + (b A + c A^2) X, (m, n)
    return x.transpose(0, 1) if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """The step size of the orthogonalized update for a (rows, cols) matrix (see the module docstring)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(Optimizer):
    """Muon for 2-D parameters; state per parameter: "momentum_buffer" (shaped like the parameter).

    Arguments and defaults follow torch.optim.Muon: lr 1e-3, weight_decay 0.1, momentum 0.95,
    nesterov True, ns_coefficients (3.4445, -4.7750, 2.0315), eps 1e-7, ns_steps 5,
    adjust_lr_fn None ("original": lr * sqrt(max(1, rows / cols))) or "match_rms_adamw".
    One more than torch: ns_dtype, the precision of Newton-Schulz (None: bf16 on CUDA, f32 elsewhere).
    """

    def __init__(self, params: "Iterable[Var] | Iterable[dict]", lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS,
                 ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 ns_dtype: "DType | str | None" = None):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Muon: adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")
        if len(ns_coefficients) != 3:
            raise ValueError(f"Muon: ns_coefficients must be three numbers (a, b, c), got {ns_coefficients}")
        if not 0 <= ns_steps < 100:
            raise ValueError(f"Muon: ns_steps must be in [0, 100), got {ns_steps}")
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay), momentum=float(momentum),
                                      nesterov=bool(nesterov),
                                      ns_coefficients=tuple(float(v) for v in ns_coefficients),
                                      eps=float(eps), ns_steps=int(ns_steps), adjust_lr_fn=adjust_lr_fn,
                                      ns_dtype=ns_dtype if ns_dtype is None else ns_dtype_of(ns_dtype, "Muon").name))
        for p in self.params:
            _check_matrix(p)

    def add_param_group(self, group: dict[str, Any]) -> None:
        params = group.get("params", []) if isinstance(group, dict) else []
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            _check_matrix(p)
        super().add_param_group(dict(group, params=params))

    def _update(self, param: Var, grad: NDArray, group: dict[str, Any], state: dict[str, Any]) -> None:
        momentum = group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = zeros_like_param(param)
        buf = state["momentum_buffer"] * momentum + grad * (1.0 - momentum)  # torch's buf.lerp_(g, 1 - momentum)
        state["momentum_buffer"] = buf
        update = grad * (1.0 - momentum) + buf * momentum if group["nesterov"] else buf  # g.lerp(buf, momentum)
        ortho = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                              group.get("ns_dtype")).cast(param.dtype)
        step = adjusted_lr(group["lr"], group["adjust_lr_fn"], param.shape)
        write_into(param, param.data * (1.0 - group["lr"] * group["weight_decay"]) - ortho * step)


def _check_matrix(p: Var) -> None:
    if p.ndim != 2:
        raise ShapeError(f"Muon: only updates 2-D weight matrices, got a parameter {describe(p)}; give vectors "
                         f"(norm gains, biases), embeddings and the output head to AdamW (muon_with_adamw splits a "
                         f"model that way)")


def muon_with_adamw(model, lr: float = 0.02, adamw_lr: float = 3e-4, weight_decay: float = 0.0,
                    adamw_weight_decay: float = 0.0, momentum: float = 0.95,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    adjust_lr_fn: str | None = None, ns_dtype: "DType | str | None" = None) -> tuple[Muon, AdamW]:
    """Split a model the way nanochat does: (Muon for the hidden 2-D matrices, AdamW for the rest).

    Muon gets every 2-D parameter except the token embedding and the output head, found by name
    (an "wte"/"embed" or "lm_head" in the parameter's name); AdamW gets those and every parameter
    that is not 2-D (norm gains, biases). AdamW applies `adamw_weight_decay` to its 2-D
    parameters only, never to gains. Step both with the same gradients:

        muon, adamw = muon_with_adamw(model, lr=0.02, adamw_lr=3e-4)
        grads = loss.backward()
        muon.step(grads); adamw.step(grads)
    """
    hidden, embeddings, vectors = [], [], []
    for name, p in model.named_parameters():
        if p.ndim != 2:
            vectors.append(p)
        elif any(word in name for word in ("wte", "embed", "lm_head")):
            embeddings.append(p)
        else:
            hidden.append(p)
    if not hidden:
        raise ValueError(f"muon_with_adamw: {type(model).__name__} has no hidden 2-D matrices for Muon")
    muon = Muon(hidden, lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn=adjust_lr_fn,
                ns_dtype=ns_dtype)
    groups = [{"params": embeddings, "weight_decay": adamw_weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    adamw = AdamW([g for g in groups if g["params"]], lr=adamw_lr, betas=betas, eps=eps)
    return muon, adamw
