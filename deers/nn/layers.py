"""Layers with parameters: Linear, Embedding, RMSNorm, LayerNorm (and its function, layer_norm).

Each takes an optional path builder `vb` (see deers.nn.params). With one, its Vars are created in
that ParamStore under the path ("blocks.0.mlp.fc.weight"); without one (PyTorch style,
`Linear(784, 256)`) the layer makes a private store and its parameters are named by the
attributes of the modules that hold it.
"""
from __future__ import annotations

from ..autograd import no_grad
from ..device import Device
from ..dtype import DType
from ..errors import ShapeError, describe
from ..ops.indexing import embedding
from ..ops.linalg import linear
from ..fused.rms_norm import rms_norm
from ..tensor import Tensor
from .module import Module
from .params import Constant, Init, Normal, ParamPath, ParamStore, kaiming_uniform


def _path(vb: ParamPath | None, device: "Device | str | None", dtype: "DType | str | None") -> ParamPath:
    """The caller's path, or the root of a private store on (device, dtype)."""
    if vb is not None:
        if device is not None or dtype is not None:
            raise ValueError("give either vb= (which fixes device and dtype) or device=/dtype=, not both")
        return vb
    return ParamStore(device=device, dtype=dtype or "f32").root()


class Linear(Module):
    """y = x @ W^T + b with W of shape (out_features, in_features), as in PyTorch.

    Default init is PyTorch's: W and b ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) (Kaiming
    uniform with a = sqrt(5)). Pass `init=Normal(0.0, 0.02)` for GPT-style weights; with an
    explicit `init` the bias starts at zero unless `bias_init` says otherwise.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, vb: ParamPath | None = None,
                 init: Init | None = None, bias_init: Init | None = None,
                 device: "Device | str | None" = None, dtype: "DType | str | None" = None):
        super().__init__()
        vb = _path(vb, device, dtype)
        self.in_features, self.out_features = in_features, out_features
        default = kaiming_uniform(in_features)
        self.weight = vb.get((out_features, in_features), "weight", init=init or default)
        if bias:
            self.bias = vb.get((out_features,), "bias",
                               init=bias_init or (default if init is None else Constant(0.0)))
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}): input {describe(x)} "
                             f"must end in {self.in_features}")
        y = linear(x, self.weight)  # x @ W^T as one op: (..., in) -> (..., out)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim): ids of shape (...) -> vectors (..., dim).

    Default init N(0, 1) as in PyTorch; GPT uses `init=Normal(0.0, 0.02)`. With `padding_idx`, as
    in PyTorch, that row starts at zero and never receives a gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, vb: ParamPath | None = None,
                 init: Init | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str | None" = None, padding_idx: int | None = None):
        super().__init__()
        vb = _path(vb, device, dtype)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = vb.get((num_embeddings, embedding_dim), "weight", init=init or Normal(0.0, 1.0))
        self.padding_idx = padding_idx
        if padding_idx is not None:
            if not isinstance(padding_idx, int) or not -num_embeddings <= padding_idx < num_embeddings:
                raise IndexError(f"Embedding({num_embeddings}, {embedding_dim}): padding_idx must be an int in "
                                 f"[-{num_embeddings}, {num_embeddings}), got {padding_idx!r}")
            self.padding_idx = padding_idx % num_embeddings
            with no_grad():
                self.weight[self.padding_idx] = 0.0

    def forward(self, ids: Tensor) -> Tensor:
        return embedding(self.weight, ids, self.padding_idx)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class RMSNorm(Module):
    """RMSNorm(x) = x / sqrt(mean(x^2, last dim) + eps) * weight, weight initialised to 1 (one fused op)."""

    def __init__(self, dim: int, eps: float = 1e-6, vb: ParamPath | None = None,
                 device: "Device | str | None" = None, dtype: "DType | str | None" = None):
        super().__init__()
        vb = _path(vb, device, dtype)
        self.dim, self.eps = dim, eps
        self.weight = vb.get((dim,), "weight", init=Constant(1.0))

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim("RMSNorm", x, self.dim)
        return rms_norm(x, self.weight, self.eps)  # the fused kernel (deers/fused/rms_norm.py)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerNorm(Module):
    """LayerNorm(x) = (x - mean) / sqrt(var + eps) * weight + bias over the trailing dims
    `normalized_shape` (an int: the last dim; a tuple: that many trailing dims), biased var."""

    def __init__(self, normalized_shape: "int | tuple[int, ...]", eps: float = 1e-5, bias: bool = True,
                 vb: ParamPath | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str | None" = None):
        super().__init__()
        vb = _path(vb, device, dtype)
        self.dim, self.eps = normalized_shape, eps
        self.normalized_shape = _normalized_shape("LayerNorm", normalized_shape)
        self.weight = vb.get(self.normalized_shape, "weight", init=Constant(1.0))
        self.bias = vb.get(self.normalized_shape, "bias", init=Constant(0.0)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if len(self.normalized_shape) > x.ndim or x.shape[x.ndim - len(self.normalized_shape):] != self.normalized_shape:
            raise ShapeError(f"LayerNorm({self.dim}): input {describe(x)} must end in {self.normalized_shape}")
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def _normalized_shape(name: str, normalized_shape) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise TypeError(f"{name}: normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}")
    return shape


def layer_norm(x: Tensor, normalized_shape: "int | tuple[int, ...]", weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias, the statistics over the trailing dims
    `normalized_shape` (biased var), like torch.nn.functional.layer_norm."""
    shape = _normalized_shape("layer_norm", normalized_shape)
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
        raise ShapeError(f"layer_norm: input {describe(x)} must end in the normalized shape {shape}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.shape != shape:
            raise ShapeError(f"layer_norm: {name} {describe(param)} must have the normalized shape {shape}")
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    centered = x - x.mean(dim=dims, keepdim=True)  # (..., *shape)
    variance = (centered * centered).mean(dim=dims, keepdim=True)  # (..., 1, ..., 1)
    y = centered * (variance + eps).rsqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _check_last_dim(name: str, x: Tensor, dim: int) -> None:
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ShapeError(f"{name}({dim}): input {describe(x)} must end in {dim}")
