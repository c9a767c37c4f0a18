"""The reference backend (deers/backend/reference.py) runs a whole model, `use_backend` installs it
(or any object that implements the contract), and the fast CPU backend is its subclass."""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers.backend import backend_for, use_backend
from deers.backend.cpu import CPUBackend
from deers.backend.reference import ReferenceBackend
from deers.errors import BackendContractError
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, clip_grad_norm

TINY = GPTConfig(vocab_size=11, sequence_len=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=12)


def gpt_step(backend) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(loss, gradients, parameters after one AdamW step) of the tiny GPT in f64 on `backend`."""
    previous = use_backend("cpu", backend)
    try:
        deers.manual_seed(0)
        model = GPT(TINY, dtype="f64")
        rng = np.random.default_rng(0)
        inputs, targets = (deers.tensor(rng.integers(0, 11, (2, 8))) for _ in range(2))
        assert all(p.data.backend is backend for p in model.parameters())
        _, loss = model(inputs, targets)
        grads = loss.backward()
        clip_grad_norm(model.parameters(), grads, 1.0)
        named = model.named_parameters()
        gradients = {name: grads[p].numpy() for name, p in named}
        AdamW(model.parameters(), lr=1e-2, weight_decay=0.1).step_with_grads(grads)
        return loss.item(), gradients, {name: p.numpy() for name, p in named}
    finally:
        use_backend("cpu", previous)


def test_a_gpt_step_on_the_reference_backend_is_the_fast_backends():
    reference, fast = gpt_step(ReferenceBackend()), gpt_step(CPUBackend())
    assert reference[0] == pytest.approx(fast[0], rel=1e-12)
    for name in fast[1]:
        np.testing.assert_allclose(reference[1][name], fast[1][name], rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(reference[2][name], fast[2][name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_use_backend_returns_the_previous_one_and_restores_it():
    default = backend_for("cpu")
    mine = ReferenceBackend()
    assert use_backend("cpu", mine) is default
    assert backend_for("cpu") is mine and deers.ones(2).data.backend is mine
    assert use_backend("cpu", default) is mine
    assert backend_for("cpu") is default and deers.ones(2).data.backend is default


def test_use_backend_refuses_an_object_that_is_not_a_backend():
    class Half(ReferenceBackend):
        def softmax(self, a, la, log):  # a parameter short of the contract's
            return super().softmax(a, la, log)

    class Missing:
        name = "cpu"
        unary_names = frozenset()

    before = backend_for("cpu")
    with pytest.raises(BackendContractError, match=r"Half.softmax.*\(a, la, log, causal=False, scale=1.0\)"):
        use_backend("cpu", Half())
    with pytest.raises(BackendContractError, match="Missing is not a backend: it lacks contract item empty"):
        use_backend("cpu", Missing())
    with pytest.raises(BackendContractError, match="name"):
        use_backend("cpu", object())
    assert backend_for("cpu") is before  # nothing was installed


def test_only_the_fast_backend_changes_process_state(monkeypatch):
    """Constructing a ReferenceBackend touches nothing outside it; CPUBackend makes its
    process-wide settings (malloc, OpenBLAS threads) in cpu.process_settings, which can be declined."""
    from deers.backend import cpu, cpu_kernels, cpu_threads

    def forbidden(*args):
        raise AssertionError("process-wide setting made")

    monkeypatch.setattr(cpu_kernels, "keep_freed_memory", forbidden)
    monkeypatch.setattr(cpu_threads, "openblas_setter", forbidden)
    ReferenceBackend()
    with pytest.raises(AssertionError, match="process-wide"):
        CPUBackend()
    monkeypatch.undo()
    monkeypatch.setenv(cpu_kernels.KEEP_FREED_ENV, "0")
    monkeypatch.setenv(cpu_threads.OWN_BLAS_ENV, "0")
    assert cpu.process_settings() == (False, None)
    assert issubclass(CPUBackend, ReferenceBackend)
