"""Fused lm_head + cross-entropy: loss = cross_entropy(x @ W^T, targets) without the full logits.

For a GPT with a 50257-token vocabulary the (N, V) logits and their gradient dominate both memory
and memory traffic. This op walks the rows in chunks: for each chunk it computes the logits, asks
the backend's fused `cross_entropy` kernel for the loss and dlogits = (softmax - one_hot) / count,
and immediately turns dlogits into the chunk's dx = dlogits @ W and its share of dW = dlogits^T x.
Only dx (N, D) and dW (V, D) are kept for backward, which then just scales them by the incoming
gradient. The FLOPs are those of the unfused path (forward GEMM + two backward GEMMs); only the
order changes. Without grad (evaluation, no_grad) only the loss is computed.
"""
from __future__ import annotations

from ..array import NDArray
from ..autograd import Op
from ..errors import DeviceError, DTypeError, ShapeError, describe
from ..tensor import Tensor, apply

CHUNK_ELEMENTS = 1 << 26  # at most this many logits per chunk (256 MiB in f32): GEMMs stay large


class LinearCrossEntropy(Op):
    """Mean cross-entropy of x (N, D) @ W^T (D, V) against targets (N,): a 0-d tensor."""

    name = "linear_cross_entropy"

    def __init__(self, ignore_index: int, chunk_rows: int | None):
        self.ignore_index = ignore_index
        self.chunk_rows = chunk_rows

    def forward(self, x: NDArray, w: NDArray, targets: NDArray) -> NDArray:
        n, d = x.shape
        v = w.shape[0]
        backend = x.backend
        want_dx = self.needs_input_grad is not None and self.needs_input_grad[0]
        want_dw = self.needs_input_grad is not None and self.needs_input_grad[1]
        total = int(targets.scalar("ne", self.ignore_index).cast(x.dtype).sum().numpy())
        w_t = w.transpose(0, 1)  # (D, V), a view: the GEMM reads W transposed
        chunks = -(-n * v // CHUNK_ELEMENTS)  # ceil: equal chunks (one for the headline 1024 x 50257)
        rows = self.chunk_rows or max(1, -(-n // max(chunks, 1)))
        dx = dw = None  # made by the first chunk that counts; zeros if none does
        loss_sum = 0.0
        for start in range(0, n, rows):
            c = min(rows, n - start)
            x_chunk = x.narrow(0, start, c)  # (c, D)
            t_chunk = targets.narrow(0, start, c).contiguous_buffer()  # (c,)
            logits = x_chunk.matmul(w_t)  # (c, V)
            chunk_loss, count, grad = backend.cross_entropy(logits.buffer, t_chunk, c, v, self.ignore_index, 0.0,
                                                            overwrite_logits=True)  # logits are not kept
            loss_sum += chunk_loss
            if not (want_dx or want_dw) or count == 0:
                continue
            share = count / total  # the kernel divided by this chunk's count; the mean is over all rows
            g = logits._new(grad, (c, v))  # dlogits (c, V)
            if want_dx:
                dx_chunk = g.matmul(w)  # (c, D)
                if share != 1.0:
                    dx_chunk = dx_chunk * share
                if c == n:
                    dx = dx_chunk
                else:
                    dx = NDArray.full((n, d), 0, x.dtype, x.device) if dx is None else dx  # ignored rows keep 0
                    backend.copy(dx_chunk.buffer, dx_chunk.layout, dx.buffer, dx.layout.narrow(0, start, c))
            if want_dw:
                dw_chunk = g.transpose(0, 1).matmul(x_chunk if share == 1.0 else x_chunk * share)  # (V, D)
                if dw is None:
                    dw = dw_chunk
                else:
                    backend.binary("add", dw.buffer, dw.layout, dw_chunk.buffer, dw_chunk.layout, out=dw.buffer)
        if want_dx and dx is None:
            dx = NDArray.full((n, d), 0, x.dtype, x.device)
        if want_dw and dw is None:
            dw = NDArray.full((v, d), 0, w.dtype, w.device)
        self.dx, self.dw, self.handed_out = dx, dw, False
        value = loss_sum / total if total else float("nan")  # mean over counted rows, nan when none
        return NDArray.full((), value, x.dtype, x.device)

    def backward(self, g: NDArray):  # d loss/dx and d loss/dW were made in forward; scale by dL/dloss
        if self.handed_out:
            raise RuntimeError("linear_cross_entropy: a second backward through the same forward; its gradients "
                               "went to the first one (optimizers may scale them in place): run the forward again")
        self.handed_out = True
        dx, dw, self.dx, self.dw = self.dx, self.dw, None, None
        if float(g.numpy()) == 1.0:  # the usual loss.backward(): no extra pass over dW (V x D)
            return dx, dw, None
        return (None if dx is None else dx * g, None if dw is None else dw * g, None)


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                         chunk_rows: int | None = None) -> Tensor:
    """Mean cross_entropy(x @ weight^T, targets) for x (..., D), weight (V, D), targets (...) i64.

    Same value and gradients as `cross_entropy(x @ weight.T, targets)`, with a fraction of the
    memory: the logits exist one chunk of rows at a time.
    """
    from .shape import reshape

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
    flat_x = reshape(x, (-1, x.shape[-1]))  # (N, D)
    flat_t = reshape(targets, (-1,))  # (N,)
    return apply(LinearCrossEntropy(int(ignore_index), chunk_rows), flat_x, weight, flat_t)
