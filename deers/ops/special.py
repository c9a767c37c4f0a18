"""erf and erfc written from core array ops, accurate to the rounding of the dtype (f64 included).

The backend vocabulary has no erf primitive, so these evaluate it from add, mul, exp and where:

- |z| < 1/2: the Taylor series erf(z) = 2/sqrt(pi) sum_n (-1)^n z^(2n+1) / (n! (2n+1)), summed
  with Horner's rule in z^2 (13 terms reach f64 rounding at |z| = 1/2);
- |z| >= 1/2: erfc(|z|) = t exp(-z^2 + c(u)) with t = 2 / (2 + |z|) and u = 2.5 t - 1 in (-1, 1],
  where c is a Chebyshev series for log(erfc(z) / t) + z^2, a smooth function of t that tends to
  log(1 / (2 sqrt(pi))) as z grows (the idea of Numerical Recipes' erfccheb). Its coefficients
  were computed at 50 digits with mpmath from Chebyshev nodes; the test checks the result
  against `math.erf`/`math.erfc` to a few f64 ulps.

Each series is cut where its terms fall below 1% of the dtype's rounding (f64: all 26 Chebyshev
terms; f32, f16, bf16, which the backends compute in f32: 13), so f32 pays for f32 accuracy only.
"""
from __future__ import annotations

import math

from ..array import NDArray
from ..dtype import f64

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_TAYLOR = tuple((-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(13))  # erf(z) = 2/sqrt(pi) z sum a_n z^2n
_CHEBYSHEV = (  # log(erfc(z) / t) + z^2 = c0 / 2 ... written as sum c_k T_k(u) with c0 already halved
    -0.78318707272406, 0.5058947933173407, 0.020165332295700413, -0.004150784270483714,
    -0.0006929393033131829, 8.061304448090166e-05, 2.5850999510766174e-05, -2.4532413619366538e-06,
    -1.0665628949056516e-06, 1.0956136201272647e-07, 4.618283721422925e-08, -6.305089137369667e-09,
    -1.9633309872353595e-09, 3.979371116364933e-10, 7.359712081538667e-11, -2.4619582503772172e-11,
    -1.769647748682444e-12, 1.3810080809606214e-12, -4.600206617963027e-14, -6.380484046552098e-14,
    9.937718418245514e-15, 1.856958347210499e-15, -7.707956385933372e-16, 3.1621351296209296e-17,
    3.448945247480971e-17, -8.625438866510632e-18,
)


def _cutoff(z: NDArray) -> float:
    """Terms smaller than this no longer change a result of z's dtype."""
    return 0.01 * (2.0 ** -52 if z.dtype is f64 else 2.0 ** -23)


def _erf_small(z: NDArray) -> NDArray:
    """erf(z) by its Taylor series: accurate for |z| <= 1/2 (relative error at the dtype's rounding)."""
    cut = _cutoff(z)
    terms = [a for n, a in enumerate(_TAYLOR) if abs(a) * 0.25 ** n > cut]
    w = z * z
    total = w * 0.0 + terms[-1]
    for a in reversed(terms[:-1]):  # Horner in w = z^2
        total = total * w + a
    return z * total * _TWO_OVER_SQRT_PI


def _erfc_large(m: NDArray) -> NDArray:
    """erfc(m) for m >= 1/2 by the Chebyshev series of log(erfc(m) / t) + m^2 (Clenshaw's recurrence)."""
    cut = _cutoff(m)
    coefficients = [c for c in _CHEBYSHEV if abs(c) > cut]
    t = 2.0 / (m + 2.0)
    u = t * 2.5 - 1.0
    b1 = b2 = u * 0.0
    for c in reversed(coefficients[1:]):  # b_k = 2u b_{k+1} - b_{k+2} + c_k
        b1, b2 = u * b1 * 2.0 - b2 + c, b1
    series = u * b1 - b2 + coefficients[0]
    return t * (series - m * m).exp()


def erf(z: NDArray) -> NDArray:
    """The error function, 2/sqrt(pi) int_0^z exp(-s^2) ds, element-wise (odd: erf(-z) = -erf(z))."""
    m = z.unary("abs")
    small = m < 0.5
    m_large = small.where(m * 0.0 + 0.5, m)  # the Chebyshev branch only sees m >= 1/2 (no 0 / 0 anywhere)
    return small.where(_erf_small(z), z.sign() * (1.0 - _erfc_large(m_large)))


def erfc(z: NDArray) -> NDArray:
    """1 - erf(z), element-wise, without the cancellation of 1 - erf for large z (erfc(-z) = 2 - erfc(z))."""
    m = z.unary("abs")
    small = m < 0.5
    tail = _erfc_large(small.where(m * 0.0 + 0.5, m))  # erfc(|z|) for |z| >= 1/2
    large = (z < 0.0).where(2.0 - tail, tail)
    return small.where(1.0 - _erf_small(z), large)
