"""Fused lm_head + cross-entropy: loss = cross_entropy(x @ W^T, targets) without the full logits.

For a GPT with a 50257-token vocabulary the (N, V) logits and their gradient dominate both memory
and memory traffic. This op walks the rows in chunks: for each chunk it computes the logits, asks
the backend's fused cross-entropy kernel for the loss and dlogits = (softmax - one_hot) / count,
and immediately turns dlogits into the chunk's dx = dlogits @ W and its share of dW = dlogits^T x.
Only dx (N, D) and dW (V, D) are kept for backward, which hands them out (`Op.hand_out`). The
FLOPs are those of the unfused path (forward GEMM + two backward GEMMs); only the order changes.
Without grad (evaluation, no_grad) only the loss is computed. Nothing is read back to the host.

f16/bf16 inputs stay in their dtype for the GEMMs (on a GPU: tensor cores, f32 accumulation),
the cross-entropy kernel reads the 16-bit logits in f32, and the loss is f32 (as PyTorch's
autocast computes cross-entropy); with several chunks dW is summed in f32 and rounded once.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op, UnitGrad
from ..dtype import f32
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..tensor import Tensor, apply
from .cross_entropy import cross_entropy_reference

CHUNK_ELEMENTS = 1 << 26  # at most this many logits per chunk (256 MiB in f32): GEMMs stay large


class LinearCrossEntropy(Op):
    """Mean cross-entropy of x (N, D) @ W^T (D, V) against targets (N,): a 0-d tensor."""

    name = "linear_cross_entropy"
    fused = True  # runs backend primitive 15

    def __init__(self, ignore_index: int, chunk_rows: int | None):
        self.ignore_index = ignore_index
        self.chunk_rows = chunk_rows

    def forward(self, x: NDArray, w: NDArray, targets: NDArray) -> NDArray:
        n, d = x.shape
        v = w.shape[0]
        want_dx, want_dw = self.needs(0), self.needs(1)
        total = targets.scalar("ne", self.ignore_index).sum()  # 0-d i64: rows that count, on the device
        w_t = w.transpose(0, 1)  # (D, V), a view: the GEMM reads W transposed
        chunks = -(-n * v // CHUNK_ELEMENTS)  # ceil: equal chunks (one for the headline 1024 x 50257)
        rows = self.chunk_rows or max(1, -(-n // max(chunks, 1)))
        dx = NDArray.full((n, d), 0, x.dtype, x.device) if want_dx and rows < n else None
        dw = loss_sum = None
        for start in range(0, n, rows):
            c = min(rows, n - start)
            x_chunk = x.narrow(0, start, c)  # (c, D)
            logits = x_chunk.matmul(w_t)  # (c, V)
            chunk_loss, count, g = logits.cross_entropy(targets.narrow(0, start, c), self.ignore_index,
                                                        overwrite_logits=True)  # g = dlogits (c, V); logits gone
            loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
            if not (want_dx or want_dw):
                continue
            if c < n:  # the kernel divided by this chunk's count; the mean is over all rows
                wide = f32 if x.dtype.is_half else x.dtype  # f16/bf16: the ratio in f32, rounded once
                share = count.cast(wide) / total.scalar("maximum", 1).cast(wide)  # 0-d
                share = share if wide is x.dtype else share.cast(x.dtype)
                g_x = x_chunk * share  # (c, D): scaling x is cheaper than scaling (c, V) dlogits
            else:
                share, g_x = None, x_chunk
            if want_dx:
                dx_chunk = g.matmul(w)  # (c, D)
                if share is None:
                    dx = dx_chunk
                else:
                    dx.narrow(0, start, c).assign(dx_chunk * share)
            if want_dw:
                if dw is not None and not x.dtype.is_half:
                    dw.addmm_(g.transpose(0, 1), g_x)  # (V, D) += dlogits^T x: the GEMM adds in place
                else:
                    dw_chunk = g.transpose(0, 1).matmul(g_x)  # (V, D)
                    if x.dtype.is_half and rows < n:  # f16/bf16: sum the chunks' shares in f32
                        dw_chunk = dw_chunk.cast(f32)
                    dw = dw_chunk if dw is None else dw.add_(dw_chunk)
        if dw is not None and dw.dtype is not w.dtype:
            dw = dw.cast(w.dtype)
        self.dx, self.dw, self.input_dtype = dx, dw, x.dtype
        # mean over counted rows; nan when none counts (0/0), as in PyTorch; f16/bf16 inputs: f32
        loss = loss_sum / total.cast(loss_sum.dtype)
        return loss if x.dtype.is_half else loss.cast(x.dtype)

    def backward(self, g: NDArray):  # d loss/dx and d loss/dW were made in forward; scale by dL/dloss
        if not isinstance(g, UnitGrad) and g.dtype is not self.input_dtype:
            g = g.cast(self.input_dtype)  # an f32 loss's gradient for f16/bf16 inputs
        return self.hand_out(self.dx, g), self.hand_out(self.dw, g), None


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                         chunk_rows: int | None = None) -> Tensor:
    """Mean cross_entropy(x @ weight^T, targets) for x (..., D), weight (V, D), targets (...) i64.

    Same value and gradients as `linear_cross_entropy_reference`, with a fraction of the memory:
    the logits exist one chunk of rows at a time.
    """
    if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear_cross_entropy: x {describe(x)} must end in D and weight {describe(weight)} "
                         f"be (V, D)")
    if tuple(targets.shape) != tuple(x.shape[:-1]):
        raise ShapeError(f"linear_cross_entropy: targets {describe(targets)} must match x {describe(x)} "
                         f"without its last dim")
    if targets.dtype.name != "i64":
        raise DTypeError(f"linear_cross_entropy: targets must be i64 class indices, got {describe(targets)}")
    if not x.dtype.is_float or x.dtype is not weight.dtype:
        raise DTypeError(f"linear_cross_entropy: x {describe(x)} and weight {describe(weight)} must share one "
                         f"floating-point dtype")
    if not (x.device == weight.device == targets.device):
        raise DeviceError(f"linear_cross_entropy: operands on different devices: x {describe(x)}, "
                          f"weight {describe(weight)}, targets {describe(targets)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"linear_cross_entropy: chunk_rows must be >= 1, got {chunk_rows}")
    flat_x = x.reshape(-1, x.shape[-1])  # (N, D)
    flat_t = targets.reshape(-1)  # (N,)
    return apply(LinearCrossEntropy(int(ignore_index), chunk_rows), flat_x, weight, flat_t)


def linear_cross_entropy_reference(x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """The same loss from core ops: the full logits x @ W^T (N, V), then log_softmax and gather."""
    logits = x.reshape(-1, x.shape[-1]) @ weight.transpose(0, 1)  # (N, V)
    return cross_entropy_reference(logits, targets.reshape(-1), ignore_index)
