"""Fused cross-entropy: one backend kernel computes the loss and its gradient in a single pass.

For logits x (N, C), targets t (N,) and label smoothing s, the loss of a row is

    loss_i = logsumexp(x_i) - (1 - s) x_i[t_i] - s mean_c(x_i[c])

(the cross-entropy against the target distribution (1 - s) one_hot(t_i) + s / C), and its gradient
is softmax(x_i) - (1 - s) one_hot(t_i) - s / C. Rows whose target is `ignore_index` count for
nothing. The backend primitive (contract item 15) returns the summed loss, the number of counted
rows and that gradient already divided by the count, so backward is at most one multiply instead
of the chain log_softmax -> gather -> mean. Nothing is read back to the host.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..ops.compare import where
from ..tensor import Tensor, apply


class CrossEntropy(Op):
    """Mean (or summed) cross-entropy of logits (N, C) against i64 targets (N,): a 0-d tensor."""

    name = "cross_entropy"
    fused = True  # runs backend primitive 15

    def __init__(self, ignore_index: int, label_smoothing: float, reduction: str):
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction

    def forward(self, logits: NDArray, targets: NDArray) -> NDArray:
        loss_sum, count, grad = logits.cross_entropy(targets, self.ignore_index, self.label_smoothing)
        if self.reduction == "sum":
            self.grad = grad * count.cast(grad.dtype) if self.needs(0) else None  # undo the kernel's / count
            return loss_sum.cast(logits.dtype)
        self.grad = grad if self.needs(0) else None  # (softmax - smoothed one_hot) / count
        # mean over the counted rows; 0/0 (every row ignored) is nan, as in PyTorch
        return (loss_sum / count.cast(loss_sum.dtype)).cast(logits.dtype)

    def backward(self, g: NDArray):  # dloss/dlogits was made in forward: scale it by dL/dloss
        return self.hand_out(self.grad, g), None


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    """The fused op on (N, C) logits and (N,) targets; see deers.loss.cross_entropy for the general entry."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cross_entropy op: reduction must be 'mean' or 'sum', got {reduction!r}")
    check_cross_entropy_operands(logits, targets, label_smoothing)
    return apply(CrossEntropy(int(ignore_index), float(label_smoothing), reduction), logits, targets)


def cross_entropy_reference(logits: Tensor, targets: Tensor, ignore_index: int = -100,
                            label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """The same loss from core ops: log_softmax as logits - logsumexp(logits), gather, where, sum
    (for tests, for reading, and for `GPT(config, fused=False)`)."""
    n, c = logits.shape
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)  # (N, C) log_softmax
    valid = targets.ne(ignore_index)  # (N,) bool
    safe = where(valid, targets, 0).reshape(n, 1)  # (N, 1): ignored rows pick class 0, masked below
    per_row = -log_probs.gather(1, safe).reshape(n)  # (N,) -log p[t]
    if label_smoothing:  # against (1 - s) one_hot + s / C
        per_row = per_row * (1.0 - label_smoothing) - log_probs.mean(dim=-1) * label_smoothing
    total = where(valid, per_row, 0.0).sum()
    if reduction == "sum":
        return total
    return total / valid.to_dtype(logits.dtype).sum()


def check_cross_entropy_operands(logits: Tensor, targets: Tensor, label_smoothing: float) -> None:
    """Raise a deers error naming both operands when they do not fit (N, C) logits and (N,) targets."""
    if not logits.dtype.is_float:
        raise DTypeError(f"cross_entropy: logits must be floating point, got {describe(logits)}")
    if targets.dtype.name != "i64":
        raise DTypeError(f"cross_entropy: targets must be i64 class indices, got {describe(targets)} "
                         f"(logits {describe(logits)})")
    if logits.device != targets.device:
        raise DeviceError(f"cross_entropy: logits {describe(logits)} and targets {describe(targets)} "
                          "are on different devices")
    if logits.ndim != 2 or targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ShapeError(f"cross_entropy: expected logits (N, C) and targets (N,), got logits {describe(logits)} "
                         f"and targets {describe(targets)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
