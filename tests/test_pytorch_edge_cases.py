"""The edge cases PyTorch's own per-op samples exercise (issue 29): each row gives PyTorch's answer
(value, dtype or error) on every device here, compared with torch where it is installed and with a
NumPy or hand-computed expectation otherwise. Differentiable new paths also go through check_op
(finite differences in f64, and torch)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import deers
from deers.errors import DeersError, ShapeError
from deers.ops.special import erf, erfc
from devices import DEVICES
from helpers import check_op

try:
    import torch
except ImportError:
    torch = None


def _np(x) -> np.ndarray:
    return x.numpy() if isinstance(x, deers.Tensor) else np.asarray(x)


# ---- erf, erfc and the exact GELU: accurate to the dtype's rounding, f64 included ----------------------
@pytest.mark.parametrize("device", DEVICES)
def test_erf_and_erfc_match_math_to_the_dtype_rounding(device):
    z = np.concatenate([np.linspace(-7, 7, 2801), [0.0, -1e-12, 0.4999999, 0.5, 30.0, np.inf, -np.inf]])
    want_erf = np.array([math.erf(v) for v in z])
    want_erfc = np.array([math.erfc(v) for v in z])
    if device != "mps":  # MLX computes in f32 at most
        x = deers.tensor(z, device=device).data  # f64
        np.testing.assert_allclose(erf(x).numpy(), want_erf, rtol=1e-15, atol=3e-16)
        np.testing.assert_allclose(erfc(x).numpy(), want_erfc, rtol=2e-14, atol=1e-300)  # rtol: exp(-z^2) of a rounded z^2
    x32 = deers.tensor(z.astype(np.float32), device=device).data
    z32 = z.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(erf(x32).numpy(), [math.erf(v) for v in z32], atol=3e-7)
    np.testing.assert_allclose(erfc(x32).numpy(), [math.erfc(v) for v in z32], rtol=1e-5, atol=1e-30)
    assert np.isnan(erf(deers.tensor([math.nan], device=device).data).numpy()).all()


def test_exact_gelu_in_f64_has_f64_accuracy_value_and_gradient():
    x = np.linspace(-9, 9, 361)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    xt = deers.tensor(x).attach()
    y = deers.nn.gelu(xt)
    np.testing.assert_allclose(y.numpy(), x * cdf, rtol=3e-14, atol=1e-300)  # exp(-x^2 / 2) of a rounded x^2
    np.testing.assert_allclose(y.sum().backward()[xt].numpy(), cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                               rtol=3e-14, atol=1e-16)
    check_op(lambda v: deers.nn.gelu(v) if isinstance(v, deers.Tensor) else torch.nn.functional.gelu(v),
             np.random.default_rng(0).standard_normal((3, 4)) * 3, atol=1e-15, rtol=1e-14)
