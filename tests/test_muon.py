"""deers.optim.Muon against a NumPy transliteration of torch.optim.Muon's update and against torch itself
(5 steps), its state dict, its refusal of non-matrices, and muon_with_adamw's split of a GPT."""
import numpy as np
import pytest

import deers
from deers.autograd import Grads
from deers.errors import ShapeError
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, Muon, muon_with_adamw
from deers.optim.muon import NS_COEFFICIENTS, newton_schulz
from devices import ACCELERATORS

RNG = np.random.default_rng(0)
WEIGHTS = [RNG.standard_normal((6, 4)).astype(np.float32),  # tall: iterated transposed
           RNG.standard_normal((3, 7)).astype(np.float32)]  # wide
GRADS = [[RNG.standard_normal(w.shape).astype(np.float32) for w in WEIGHTS] for _ in range(5)]  # 5 steps


def numpy_newton_schulz(g: np.ndarray, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """torch.optim._muon._zeropower_via_newtonschulz line by line, in float64."""
    a, b, c = NS_COEFFICIENTS
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def numpy_muon(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust="original"):
    """torch.optim.Muon's _single_tensor_muon in float64 over WEIGHTS and GRADS."""
    params = [w.astype(np.float64) for w in WEIGHTS]
    bufs = [np.zeros_like(p) for p in params]
    for grads in GRADS:
        for i, (p, g) in enumerate(zip(params, grads)):
            bufs[i] = bufs[i] + (g - bufs[i]) * (1 - momentum)  # buf.lerp_(g, 1 - momentum)
            update = g + (bufs[i] - g) * momentum if nesterov else bufs[i]
            rows, cols = p.shape
            scale = np.sqrt(max(1, rows / cols)) if adjust == "original" else 0.2 * np.sqrt(max(rows, cols))
            params[i] = p * (1 - lr * weight_decay) - lr * scale * numpy_newton_schulz(update)
    return params


def grads_of(params, arrays) -> Grads:
    grads = Grads()
    for p, g in zip(params, arrays):
        grads.set_array(p, deers.tensor(g).data)
    return grads


def run_deers(steps=GRADS, **options):
    params = [deers.Var(deers.tensor(w)) for w in WEIGHTS]
    opt = Muon(params, **options)
    for arrays in steps:
        opt.step(grads_of(params, arrays))
    return [p.numpy() for p in params], opt


@pytest.mark.parametrize("options", [dict(lr=0.02), dict(lr=0.05, weight_decay=0.0, nesterov=False),
                                     dict(lr=0.01, momentum=0.9, adjust_lr_fn="match_rms_adamw")])
def test_five_steps_match_numpy_reference(options):
    got, _ = run_deers(**options)
    adjust = options.get("adjust_lr_fn") or "original"
    want = numpy_muon(lr=options["lr"], weight_decay=options.get("weight_decay", 0.1),
                      momentum=options.get("momentum", 0.95), nesterov=options.get("nesterov", True), adjust=adjust)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6)


def test_five_steps_match_torch_optim_muon(monkeypatch):
    torch = pytest.importorskip("torch")
    muon_module = pytest.importorskip("torch.optim._muon")

    def newton_schulz_f32(grad, ns_coefficients, ns_steps, eps):
        """torch's own function with .float() where it has .bfloat16() (Deers iterates in f32)."""
        a, b, c = ns_coefficients
        x = grad.float()
        if grad.size(0) > grad.size(1):
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if grad.size(0) > grad.size(1) else x

    def torch_run():
        params = [torch.tensor(w, requires_grad=True) for w in WEIGHTS]
        opt = torch.optim.Muon(params, lr=0.02)  # every other argument at torch's default, as Muon's below
        for arrays in GRADS:
            for p, g in zip(params, arrays):
                p.grad = torch.tensor(g)
            opt.step()
        return [p.detach().numpy() for p in params]

    bf16 = torch_run()  # torch's Newton-Schulz in bf16
    monkeypatch.setattr(muon_module, "_zeropower_via_newtonschulz", newton_schulz_f32)
    f32 = torch_run()
    got, _ = run_deers(lr=0.02)
    for g, t32, t16, w in zip(got, f32, bf16, WEIGHTS):
        np.testing.assert_allclose(g, t32, rtol=0, atol=1e-6)  # the same update in the same precision
        assert np.abs(g - t16).max() < 0.05 * np.abs(t16 - w).max()  # bf16's rounding: a few % of the change


def test_newton_schulz_flattens_the_singular_values():
    g = RNG.standard_normal((16, 48)).astype(np.float32) * np.logspace(-2, 1, 16, dtype=np.float32)[:, None]
    out = newton_schulz(deers.tensor(g).data)
    s_in, s_out = np.linalg.svd(g, compute_uv=False), np.linalg.svd(out.numpy(), compute_uv=False)
    assert s_in.max() / s_in.min() > 1000 and s_out.max() / s_out.min() < 4  # 3 decades of spread -> under 4x
    np.testing.assert_allclose(out.numpy(), numpy_newton_schulz(g.astype(np.float64)), atol=2e-5)
    assert out.dtype is deers.f32


def test_newton_schulz_in_bf16_is_f32_at_bf16_precision():
    if not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes (pip install 'deers[bf16]')")
    g = RNG.standard_normal((16, 48)).astype(np.float32)
    f32 = newton_schulz(deers.tensor(g).data, dtype="f32")
    bf16 = newton_schulz(deers.tensor(g).data, dtype=deers.bf16)
    assert bf16.dtype is deers.bf16 and f32.dtype is deers.f32
    assert np.abs(bf16.cast(deers.f32).numpy() - f32.numpy()).max() < 0.05  # a few bf16 ulps of entries ~0.2
    s = np.linalg.svd(bf16.cast(deers.f32).numpy(), compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.3


def test_default_newton_schulz_precision_is_bf16_on_cuda_only():
    from deers.device import Device
    from deers.optim.muon import default_ns_dtype
    assert default_ns_dtype(Device.CPU) is deers.f32 and default_ns_dtype(Device.MPS) is deers.f32
    assert default_ns_dtype(Device.cuda(0)) is (deers.bf16 if deers.bf16.available else deers.f32)
    with pytest.raises(ValueError, match="Muon: the Newton-Schulz dtype"):
        Muon([deers.Var(deers.tensor(WEIGHTS[0]))], ns_dtype="f16")
    with pytest.raises(ValueError, match="newton_schulz: the Newton-Schulz dtype"):
        newton_schulz(deers.tensor(WEIGHTS[0]).data, dtype="f64")


@pytest.mark.parametrize("device", ACCELERATORS)
def test_five_steps_on_an_accelerator_match_the_cpu(device):
    """Newton-Schulz is plain deers array ops, so Muon runs on every backend (in f32 here, as on the CPU)."""
    want, _ = run_deers(lr=0.02)
    params = [deers.Var(deers.tensor(w, device=device)) for w in WEIGHTS]
    opt = Muon(params, lr=0.02, ns_dtype="f32")
    for arrays in GRADS:
        grads = Grads()
        for p, g in zip(params, arrays):
            grads.set_array(p, deers.tensor(g, device=device).data)
        opt.step(grads)
    for p, w in zip(params, want):
        assert p.device.kind == device
        np.testing.assert_allclose(p.numpy(), w, rtol=0, atol=1e-5)


def test_state_dict_round_trip_continues_identically():
    straight, _ = run_deers(lr=0.02)
    first, opt = run_deers(steps=GRADS[:2], lr=0.02)
    state = opt.state_dict()
    assert state["type"] == "Muon" and state["param_groups"][0]["momentum"] == 0.95
    assert set(state["state"][0]) == {"momentum_buffer"} and state["state"][0]["momentum_buffer"].shape == (6, 4)
    params = [deers.Var(deers.tensor(w)) for w in first]
    fresh = Muon(params, lr=0.5, momentum=0.5)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == 0.02 and fresh.param_groups[0]["momentum"] == 0.95
    for arrays in GRADS[2:]:
        fresh.step(grads_of(params, arrays))
    for p, want in zip(params, straight):
        np.testing.assert_array_equal(p.numpy(), want)


def test_a_vector_parameter_is_refused_with_a_clear_error():
    gain = deers.Var(deers.ones(8))
    with pytest.raises(ShapeError, match=r"Muon: only updates 2-D weight matrices.*\(8,\).*AdamW"):
        Muon([deers.Var(deers.zeros((2, 2))), gain])
    opt = Muon([deers.Var(deers.zeros((2, 2)))])
    with pytest.raises(ShapeError, match="2-D"):
        opt.add_param_group({"params": [gain]})
    assert len(opt.param_groups) == 1 and len(opt.params) == 1  # nothing half-added
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        Muon([deers.Var(deers.zeros((2, 2)))], adjust_lr_fn="rms")


def test_muon_with_adamw_splits_a_gpt_like_nanochat():
    model = GPT(GPTConfig(vocab_size=32, sequence_len=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=16))
    muon, adamw = muon_with_adamw(model, lr=0.02, adamw_lr=1e-3, weight_decay=0.1, adamw_weight_decay=0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon.params) == sorted(
        f"blocks.{i}.{w}.weight" for i in range(2) for w in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert isinstance(adamw, AdamW)
    embeddings, gains = adamw.param_groups
    assert sorted(names[id(p)] for p in embeddings["params"]) == ["lm_head.weight", "wte.weight"]
    assert embeddings["weight_decay"] == 0.1 and gains["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in gains["params"]) and len(gains["params"]) == 5  # 2 norms per block + norm_f
    assert len(muon.params) + len(adamw.params) == len(list(model.parameters()))

    idx = deers.tensor(np.arange(16).reshape(2, 8) % 32)
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    grads = model.loss(idx, idx).backward()
    muon.step(grads)
    adamw.step(grads)
    assert all(not np.array_equal(before[name], p.numpy()) for name, p in model.named_parameters())


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture
    yield from cuda_backend_fixture(request)


def test_muon_on_cuda_iterates_in_bf16_and_stays_near_the_f32_update(cuda, monkeypatch):
    """CUDA's default: Newton-Schulz's GEMMs in bf16 (tensor cores); the update differs from the f32
    one by bf16's rounding, under a tenth of the change, as torch.optim.Muon's does."""
    if not deers.bf16.available:
        pytest.skip("bf16 needs ml_dtypes (pip install 'deers[bf16]')")
    want, _ = run_deers(lr=0.02)
    suffixes = []
    if hasattr(cuda.rt, "gemms"):  # the emulator: record the precision of every cuBLAS call
        gemm = cuda.rt.gemm

        def recording_gemm(call, a, b, out, sfx, *rest, **kwargs):
            suffixes.append(sfx)
            return gemm(call, a, b, out, sfx, *rest, **kwargs)

        monkeypatch.setattr(cuda.rt, "gemm", recording_gemm)
    params = [deers.Var(deers.tensor(w, device="cuda")) for w in WEIGHTS]
    opt = Muon(params, lr=0.02)
    for arrays in GRADS:
        grads = Grads()
        for p, g in zip(params, arrays):
            grads.set_array(p, deers.tensor(g, device="cuda").data)
        opt.step(grads)
    if hasattr(cuda.rt, "gemms"):
        assert suffixes and set(suffixes) == {"bf16"}
    for p, w, start in zip(params, want, WEIGHTS):
        assert p.dtype is deers.f32
        assert np.abs(p.numpy() - w).max() < 0.1 * np.abs(w - start).max()
