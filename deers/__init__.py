"""Deers: a minimal deep-learning framework — PyTorch from scratch, small enough to read.

    import deers
    x = deers.randn(4, 3)
    w = deers.Var(deers.randn(3, 2))
    grads = (x @ w).relu().sum().backward()
    grads[w]            # a Tensor shaped like w
"""
from .anomaly import AnomalyError, detect_anomaly
from .autograd import Grads, Op, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .creation import (arange, from_numpy, full, get_rng_state, host_rng, manual_seed, ones, ones_like, rand,
                       randint, randn, set_rng_state, tensor, zeros, zeros_like)
from .creation import empty, empty_like, eye, full_like, linspace, rand_like, randn_like
from .device import Device
from .dtype import DType, bf16, bool_, f16, f32, f64, i64, u8
from .errors import BackendUnavailable, DeersError, DeviceError, DTypeError, InPlaceError, ShapeError
from .ops.binary import maximum, minimum
from .ops.compare import where
from .ops.indexing import embedding, gather, index_select
from .ops.linalg import matmul
from .ops.shape import cat, stack
from .ops.einsum import einsum
from .ops.flip import flip
from .ops.reduce import amax, amin, argmax, argmin, max, min, ValuesIndices  # noqa: A004 (torch.max, torch.min)
from .ops.scan import cumsum
from .ops.sort import argsort, sort, topk
from .ops.split import chunk, split, unbind
from .ops.stats import norm, std, var
from .ops.triangle import tril, triu
from .tensor import Tensor, Var, apply

from . import checkpoint, loss, nn, optim  # noqa: E402  (subpackages users reach as deers.nn, ...)
from . import memory, profiler, viz  # noqa: E402  (seeing inside: docs/inside.md)

__version__ = "0.1.0"
