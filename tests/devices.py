"""Which devices the tests can run on here: "cpu" always, "mps" when MLX imports, "cuda" when CuPy
imports and sees a GPU. Device-parametrized tests use `DEVICES` (or `ACCELERATORS`, the non-CPU
ones, for tests that compare a device against the CPU oracle):

    @pytest.mark.parametrize("device", DEVICES)
    def test_something(device): ...
"""
from __future__ import annotations


def _mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_available() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy installed without a driver or GPU: CUDARuntimeError and friends
        return False


def available_devices() -> list[str]:
    """The device strings usable on this machine, CPU first."""
    devices = ["cpu"]
    if _mlx_available():
        devices.append("mps")
    if _cuda_available():
        devices.append("cuda")
    return devices


DEVICES = available_devices()
ACCELERATORS = [d for d in DEVICES if d != "cpu"]
