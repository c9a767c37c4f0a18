"""Loss functions: cross_entropy (one fused op in the common case), nll_loss and mse_loss.

    logits = model(x)                                   # (N, C) or (B, T, C)
    loss = deers.loss.cross_entropy(logits, targets)    # targets (N,) or (B, T), i64
    grads = loss.backward()

The scores and targets come in PyTorch's forms: (N, C) with (N,); (N, C, d1, ..., dk) with
(N, d1, ..., dk), the classes at dim 1; unbatched (C,) with a 0-d target; and for cross_entropy
also float class probabilities shaped like the scores. Deers also takes classes last, (B, T, C)
with (B, T), the GPT's logits as they are; when both readings fit (B, T, C) with T == C, it
raises rather than guess. Each form becomes (M, C) rows with (M,) targets (or (M, C)
probabilities); `reduction="none"` gives the per-element losses in the targets' shape.
"""
from __future__ import annotations

import math

from .errors import DeviceError, DTypeError, ShapeError, describe
from .fused.cross_entropy import check_cross_entropy_operands
from .fused.cross_entropy import cross_entropy as _fused_cross_entropy
from .ops.compare import where
from .tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")
_FORMS = ("scores (N, C) with targets (N,), (N, C, d1, ...) with (N, d1, ...), (C,) with a 0-d target, "
          "or classes last: (B, T, C) with (B, T)")


def _rows(name: str, scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """(M, C) rows of scores and their (M,) class indices, or (M, C) probabilities when the
    targets are float, plus the shape the per-element losses take (reduction="none")."""
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"{name}: expected Tensors, got {type(scores).__name__} and {type(targets).__name__}")
    shape = scores.shape
    if targets.dtype.is_float:  # probabilities: the same shape as the scores
        if name != "cross_entropy" or targets.shape != shape or scores.ndim == 0:
            raise DTypeError(f"{name}: targets must be i64 class indices, or (cross_entropy only) float class "
                             f"probabilities shaped like the scores; got targets {describe(targets)} for scores "
                             f"{describe(scores)}")
        if scores.ndim == 1:  # unbatched (C,)
            return scores.reshape(1, shape[0]), targets.reshape(1, shape[0]), ()
        return _classes_last(scores), _classes_last(targets), shape[:1] + shape[2:]
    torch_form = shape[:1] + shape[2:] if scores.ndim >= 2 else ()  # (N, d1, ...) or () for (C,)
    last_form = shape[:-1] if scores.ndim >= 3 else None  # Deers' (B, T, C) with (B, T)
    if scores.ndim >= 1 and targets.shape == torch_form:
        if last_form is not None and targets.shape == last_form:
            raise ShapeError(f"{name}: scores {describe(scores)} with targets {describe(targets)} fit both the "
                             "classes at dim 1 (PyTorch's (N, C, d1, ...)) and classes last (Deers' (B, T, C)); "
                             "reshape to (N, C) scores and (N,) targets to say which")
        if scores.ndim == 1:
            return scores.reshape(1, shape[0]), targets.reshape(1), ()
        return _classes_last(scores), targets.reshape(targets.numel()), targets.shape
    if last_form is not None and targets.shape == last_form:
        return scores.reshape(targets.numel(), shape[-1]), targets.reshape(targets.numel()), targets.shape
    raise ShapeError(f"{name}: expected {_FORMS}; got scores {describe(scores)} and targets {describe(targets)}")


def _classes_last(x: Tensor) -> Tensor:
    """(N, C, d1, ..., dk) -> (N d1 ... dk, C): the class dim moved last, the rest flattened."""
    if x.ndim > 2:
        x = x.permute(0, *range(2, x.ndim), 1)  # (N, d1, ..., dk, C)
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _check_weight(name: str, weight: "Tensor | None", scores: Tensor) -> None:
    if weight is None:
        return
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: weight must be a Tensor of one weight per class, got {type(weight).__name__}")
    classes = scores.shape[0] if scores.ndim == 1 else scores.shape[1]
    if weight.shape != (classes,):
        raise ShapeError(f"{name}: weight must have one entry per class, shape ({classes},), got {describe(weight)} "
                         f"for scores {describe(scores)}")
    if weight.dtype is not scores.dtype:
        raise DTypeError(f"{name}: weight {describe(weight)} must have the scores' dtype ({describe(scores)}), "
                         "as in PyTorch")
    if weight.device != scores.device:
        raise DeviceError(f"{name}: weight {describe(weight)} is not on the device of the scores {describe(scores)}")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits: Tensor, targets: Tensor, weight: "Tensor | None" = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits against class indices (i64) or class probabilities (float), like
    torch.nn.functional.cross_entropy (the forms are in the module docstring).

    With indices: loss_i = w[t_i] ((1 - s) (-log q_i[t_i])) + s/C sum_c w_c (-log q_i[c]), q =
    softmax(logits), s = label_smoothing, w = weight (all ones by default); rows whose target is
    `ignore_index` count for nothing, and "mean" divides by the sum of w[t_i] over the counted
    rows. With probabilities p: loss_i = -sum_c w_c p'_ic log q_ic with p' = (1 - s) p + s / C,
    and "mean" divides by the number of rows. Index targets without weight and with "mean" or
    "sum" run the fused op (one kernel forward, the saved gradient backward); the other cases are
    composed from log_softmax, gather and sums, so their gradient comes from those ops.
    """
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    rows, flat_targets, out_shape = _rows("cross_entropy", logits, targets)
    _check_weight("cross_entropy", weight, logits)
    if flat_targets.dtype.is_float:
        if ignore_index != -100:
            raise ValueError(f"cross_entropy: ignore_index={ignore_index} is for class indices, not for the "
                             f"probability targets {describe(targets)}, as in PyTorch")
        return _soft_cross_entropy(rows, flat_targets, weight, reduction, label_smoothing, out_shape)
    if weight is None and reduction != "none":
        return _fused_cross_entropy(rows, flat_targets, ignore_index, label_smoothing, reduction)
    check_cross_entropy_operands(rows, flat_targets, label_smoothing)
    return _weighted_nll(rows.log_softmax(dim=-1), flat_targets, weight, ignore_index, reduction, label_smoothing,
                         out_shape)


def _soft_cross_entropy(rows: Tensor, probs: Tensor, weight: "Tensor | None", reduction: str, smoothing: float,
                        out_shape: tuple[int, ...]) -> Tensor:
    """-sum_c w_c p'_c log q_c per row, p' the smoothed probabilities; "mean" divides by the rows."""
    if rows.device != probs.device:
        raise DeviceError(f"cross_entropy: logits {describe(rows)} and targets {describe(probs)} are on different "
                          "devices")
    log_probs = rows.log_softmax(dim=-1)  # (M, C)
    if smoothing:
        probs = probs * (1.0 - smoothing) + smoothing / rows.shape[-1]
    products = log_probs * probs if weight is None else log_probs * probs * weight  # (M, C)
    per_row = -products.sum(dim=-1)  # (M,)
    if reduction == "none":
        return per_row.reshape(out_shape)
    total = per_row.sum()
    return total if reduction == "sum" else total * (1.0 / per_row.shape[0] if per_row.shape[0] else math.nan)


def _weighted_nll(log_probs: Tensor, targets: Tensor, weight: "Tensor | None", ignore_index: int, reduction: str,
                  smoothing: float, out_shape: tuple[int, ...]) -> Tensor:
    """The index-target loss of (M, C) log-probabilities with weights, smoothing and every reduction."""
    m = targets.shape[0]
    valid = targets.ne(ignore_index)  # (M,) bool
    safe = where(valid, targets, 0)  # (M,): ignored rows pick class 0, masked below
    picked = -log_probs.gather(1, safe.reshape(m, 1)).reshape(m)  # (M,) -log q[t]
    if weight is None:
        row_weight = valid.to_dtype(log_probs.dtype)  # (M,) 1 or 0
    else:
        row_weight = where(valid, weight.index_select(0, safe), 0.0)  # (M,) w[t_i], 0 where ignored
    per_row = picked * row_weight
    if smoothing:
        spread = log_probs if weight is None else log_probs * weight  # (M, C)
        smooth = where(valid, -spread.sum(dim=-1), 0.0)  # (M,)
        per_row = per_row * (1.0 - smoothing) + smooth * (smoothing / log_probs.shape[-1])
    if reduction == "none":
        return per_row.reshape(out_shape)
    total = per_row.sum()
    return total if reduction == "sum" else total / row_weight.sum()  # all ignored: 0 / 0 = nan, as PyTorch


def nll_loss(log_probs: Tensor, targets: Tensor, weight: "Tensor | None" = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities at class indices, like F.nll_loss:
    loss_i = -w[t_i] log_probs_i[t_i]; "mean" divides by the sum of w[t_i] over the rows not ignored.
    Takes the same index forms as cross_entropy (no probability targets, as in PyTorch)."""
    _check_reduction("nll_loss", reduction)
    rows, flat_targets, out_shape = _rows("nll_loss", log_probs, targets)
    _check_weight("nll_loss", weight, log_probs)
    check_cross_entropy_operands(rows, flat_targets, 0.0)
    return _weighted_nll(rows, flat_targets, weight, ignore_index, reduction, 0.0, out_shape)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error: mean((input - target)^2); both tensors must have the same shape."""
    _check_reduction("mse_loss", reduction)
    if input.shape != target.shape:
        raise ShapeError(f"mse_loss: input {describe(input)} and target {describe(target)} differ in shape")
    if not input.dtype.is_float:
        raise DTypeError(f"mse_loss: needs floating-point tensors, got {describe(input)}")
    diff = input - target
    squared = diff * diff
    if reduction == "none":
        return squared
    return squared.sum() if reduction == "sum" else squared.mean()
