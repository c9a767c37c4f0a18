"""deers.memory: live and peak bytes per device, counting the fresh buffers Deers holds, views once."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import deers
from deers import memory
from deers.models.gpt import GPT, GPTConfig
from devices import DEVICES


def live(device: str) -> int:
    gc.collect()  # a graph can hold buffers in reference cycles until the collector runs
    return memory.live_bytes(device)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fresh_array_counts_its_bytes_and_views_count_nothing(device):
    start = live(device)
    x = deers.zeros(64, 32, device=device)  # f32: 8 KiB
    assert live(device) - start == 64 * 32 * 4
    views = [x.T, x.narrow(0, 3, 10), x.reshape(32, 64), x[::2]]
    assert live(device) - start == 64 * 32 * 4
    del x
    assert live(device) - start == 64 * 32 * 4  # the views keep the buffer alive: still counted, once
    del views
    assert live(device) == start


@pytest.mark.parametrize("device", DEVICES)
def test_results_of_ops_count_and_dtypes_use_their_item_size(device):
    x = deers.ones(10, 10, device=device)
    start = live(device)
    y = (x + 1.0).to_dtype(deers.f16)  # the f32 sum is freed at once, the f16 copy stays
    assert live(device) - start == 10 * 10 * 2
    del y
    assert live(device) == start


def test_peak_rises_with_the_largest_moment_and_reset_starts_again():
    memory.reset_peak("cpu")
    base = live("cpu")
    big = deers.zeros(1000, 250)  # 1 MB
    del big
    assert memory.peak_bytes("cpu") >= base + 1_000_000
    assert live("cpu") == base
    memory.reset_peak("cpu")
    assert memory.peak_bytes("cpu") == live("cpu")


def test_devices_are_counted_apart_and_named_like_devices():
    before = {name: memory.live_bytes(name) for name in ("cpu", "mps", "cuda", "cuda:0")}
    x = deers.zeros(100)
    assert memory.live_bytes("cpu") == before["cpu"] + 400
    assert memory.live_bytes(deers.Device.CPU) == memory.live_bytes("cpu")
    assert memory.live_bytes("cuda") == memory.live_bytes("cuda:0") == before["cuda"]
    assert memory.live_bytes("mps") == before["mps"]
    assert "cpu" in memory.devices()
    del x


@pytest.mark.parametrize("device", DEVICES)
def test_memory_rises_through_forward_falls_through_backward_and_returns_after_the_step(device):
    deers.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, sequence_len=16, n_layer=2, n_head=2, n_embd=32, mlp_hidden_dim=64),
                device=device)
    idx = deers.randint(0, 64, (2, 16), device=device)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    start = live(device)
    loss = model.loss(idx, idx)
    after_forward = live(device)
    assert after_forward > start + param_bytes // 4  # the saved activations
    grads = loss.backward()
    after_backward = live(device)
    grad_bytes = sum(g.numel() * 4 for _, g in grads)
    assert grad_bytes == param_bytes
    assert after_backward < after_forward
    assert after_backward - start <= grad_bytes + 64  # the gradients and the 0-d loss, nothing saved
    del loss, grads
    assert live(device) == start


def test_backward_frees_each_activation_as_soon_as_its_gradient_has_gone_through():
    deers.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, sequence_len=64, n_layer=4, n_head=2, n_embd=16, mlp_hidden_dim=32))
    idx = deers.randint(0, 32, (8, 64))
    loss = model.loss(idx, idx)
    with deers.profiler.profile() as prof:
        grads = loss.backward()
    live = [e.live_bytes for e in prof.events() if e.phase == "backward"]
    assert len(live) > 20
    # the activations go while backward walks down the blocks, not all at once at its end
    assert min(live[len(live) // 2:]) < 0.8 * max(live[:4])
    del loss, grads


# ---- the CPU backend's allocator settings ----------------------------------------------------------
def _glibc() -> bool:
    import ctypes
    import platform

    try:
        ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_keep_freed_memory_can_be_declined(monkeypatch):
    from deers.backend import cpu_kernels

    monkeypatch.setenv(cpu_kernels.KEEP_FREED_ENV, "0")
    assert cpu_kernels.keep_freed_memory() is False


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_a_freed_array_is_reused_without_faulting_its_pages_in_again():
    """The CPU backend keeps freed blocks (cpu_kernels.keep_freed_memory): a "step" of eight
    4 MiB arrays, written and dropped, faults its pages in once, not every time. With glibc's
    defaults each repeat gives the 32 MiB back and faults ~8,000 pages in again."""
    import resource

    from deers.backend import backend_for

    def step():
        arrays = [np.empty(1 << 20, np.float32) for _ in range(8)]  # live together, as in a training step
        for a in arrays:
            a.fill(1.0)

    assert backend_for("cpu").keeps_freed_memory
    step()  # the first one may fault in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 4000
