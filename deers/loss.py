"""Loss functions: cross_entropy (one fused op), nll_loss and mse_loss.

    logits = model(x)                                   # (N, C) or (B, T, C)
    loss = deers.loss.cross_entropy(logits, targets)    # targets (N,) or (B, T), i64
    grads = loss.backward()

Classes are the last dim of the logits (the GPT's (B, T, V) logits go in as they are).
"""
from __future__ import annotations

from .errors import DTypeError, ShapeError, describe
from .fused.cross_entropy import check_cross_entropy_operands
from .fused.cross_entropy import cross_entropy as _fused_cross_entropy
from .ops.compare import where
from .tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _flatten_classes(name: str, scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """(..., C) scores and (...) targets -> (N, C) and (N,), plus the leading shape (...)."""
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"{name}: expected Tensors, got {type(scores).__name__} and {type(targets).__name__}")
    if scores.ndim < 2 or targets.shape != scores.shape[:-1]:
        raise ShapeError(f"{name}: expected scores (N, C) with targets (N,), or (B, T, C) with (B, T); "
                         f"got scores {describe(scores)} and targets {describe(targets)}")
    lead = targets.shape
    n = 1
    for size in lead:
        n *= size
    return scores.reshape(n, scores.shape[-1]), targets.reshape(n), lead  # (N, C), (N,)


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (N, C) against class indices (N,) i64, like torch's F.cross_entropy.

    loss_i = logsumexp(x_i) - (1 - s) x_i[t_i] - s mean(x_i) with s = label_smoothing; rows whose
    target is `ignore_index` are skipped; "mean" divides by the number of counted rows. (B, T, C)
    logits with (B, T) targets are flattened. "mean" and "sum" run the fused op (one kernel
    forward, the saved gradient backward); "none" returns per-row losses, composed from
    log_softmax and gather.
    """
    _check_reduction("cross_entropy", reduction)
    flat_logits, flat_targets, lead = _flatten_classes("cross_entropy", logits, targets)
    if reduction != "none":
        return _fused_cross_entropy(flat_logits, flat_targets, ignore_index, label_smoothing, reduction)
    check_cross_entropy_operands(flat_logits, flat_targets, label_smoothing)
    log_probs = flat_logits.log_softmax(dim=-1)  # (N, C)
    per_row = _picked_nll(log_probs, flat_targets, ignore_index) * (1.0 - label_smoothing)  # (N,)
    if label_smoothing:
        per_row = per_row - log_probs.mean(dim=-1) * label_smoothing
    valid = flat_targets.ne(ignore_index)
    return where(valid, per_row, 0.0).reshape(lead)


def _picked_nll(log_probs: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """-log_probs[i, t_i] for every row (ignored rows pick class 0; the caller masks them)."""
    valid = targets.ne(ignore_index)
    safe = where(valid, targets, 0).reshape(targets.shape[0], 1)  # (N, 1)
    return -log_probs.gather(1, safe).reshape(targets.shape[0])  # (N,)


def nll_loss(log_probs: Tensor, targets: Tensor, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities (N, C) at class indices (N,), like F.nll_loss."""
    _check_reduction("nll_loss", reduction)
    flat, flat_targets, lead = _flatten_classes("nll_loss", log_probs, targets)
    check_cross_entropy_operands(flat, flat_targets, 0.0)
    valid = flat_targets.ne(ignore_index)
    per_row = where(valid, _picked_nll(flat, flat_targets, ignore_index), 0.0)  # (N,)
    if reduction == "none":
        return per_row.reshape(lead)
    total = per_row.sum()
    if reduction == "sum":
        return total
    count = int(valid.numpy().sum())
    return total * (1.0 / count) if count else total * float("nan")


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
