"""The layers above the ops on the CUDA backend against the CPU: an nn model trained with AdamW,
and the GPT (logits and every gradient, training steps with clipping, greedy generation, bf16/f16
models tracking the f32 one). Runs on the emulated kernels everywhere and on a GPU when present.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from cuda_emulator import cuda_backend_fixture
from deers import loss, nn, optim
from deers.models import gpt

CUDA = deers.Device.cuda(0)
LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d is not None]
ATOL = {"f16": 1e-2, "bf16": 6e-2}


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def _tiny_model(seed: int):
    """Embedding -> RMSNorm -> Linear -> ReLU -> Linear, initialised from a fixed seed on the CPU."""
    deers.manual_seed(seed)
    return nn.Sequential(nn.Embedding(11, 8), nn.RMSNorm(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 11, bias=False))


def test_nn_model_trains_the_same_on_cuda_and_cpu(cuda):
    models = {"cpu": _tiny_model(0), "cuda": _tiny_model(0).to_device("cuda")}
    optimizers = {d: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for d, m in models.items()}
    ids = np.array([[1, 4, 9, 2], [0, 10, 3, 3]])
    history = {"cpu": [], "cuda": []}
    for _ in range(3):
        for device, model in models.items():
            inputs = deers.tensor(ids, device=device)
            value = loss.cross_entropy(model(inputs), deers.tensor(np.roll(ids, 1, axis=1), device=device))
            optimizers[device].step_with_grads(value.backward())
            history[device].append(value.item())
    np.testing.assert_allclose(history["cuda"], history["cpu"], rtol=1e-5)
    assert history["cpu"][-1] < history["cpu"][0]
    for (name, p_cpu), (_, p_cuda) in zip(models["cpu"].named_parameters(), models["cuda"].named_parameters()):
        assert p_cuda.device == CUDA
        np.testing.assert_allclose(p_cuda.numpy(), p_cpu.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def _gpt_pair():
    """The same tiny GPT twice: on the CPU and (weights copied) on cuda."""
    config = gpt.GPTConfig(vocab_size=37, sequence_len=8, n_layer=2, n_head=2, n_embd=16, mlp_hidden_dim=32)
    deers.manual_seed(0)
    reference = gpt.GPT(config)
    model = gpt.GPT(config)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    return reference, model.to_device("cuda")


def test_gpt_logits_and_gradients_match_cpu(cuda):
    reference, model = _gpt_pair()
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    outs = []
    for net, device in ((reference, "cpu"), (model, "cuda")):
        logits = net(deers.tensor(ids, device=device))  # (B, T, V)
        assert logits.device == device
        grads = (logits * logits).mean().backward()
        outs.append((logits.numpy(), {name: grads[p].numpy() for name, p in net.named_parameters()}))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    for name, expected in outs[0][1].items():
        np.testing.assert_allclose(outs[1][1][name], expected, atol=1e-6, rtol=1e-4, err_msg=name)


def test_gpt_training_steps_and_generation_match_cpu(cuda):
    reference, model = _gpt_pair()
    ids = np.random.default_rng(1).integers(0, 37, (2, 9))
    losses = {"cpu": [], "cuda": []}
    for net, device in ((reference, "cpu"), (model, "cuda")):
        opt = optim.AdamWConfig(1e-2).weight_decay(0.1).betas(0.9, 0.95).build(net.parameters())
        inputs, targets = deers.tensor(ids[:, :-1], device=device), deers.tensor(ids[:, 1:], device=device)
        for _ in range(3):
            _, value = net(inputs, targets)
            grads = value.backward()
            optim.clip_grad_norm(net.parameters(), grads, 1.0)
            opt.step_with_grads(grads)
            losses[device].append(value.item())
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-5)
    assert losses["cpu"][-1] < losses["cpu"][0]
    for (name, p_cpu), (_, p_cuda) in zip(reference.named_parameters(), model.named_parameters()):
        np.testing.assert_allclose(p_cuda.numpy(), p_cpu.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)
    prompt = ids[:, :3]
    greedy = [net.generate(deers.tensor(prompt, device=device), 5, temperature=0.0).numpy()
              for net, device in ((reference, "cpu"), (model, "cuda"))]
    np.testing.assert_array_equal(greedy[1], greedy[0])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.name)
def test_low_precision_gpt_on_cuda_tracks_the_f32_cpu_model(cuda, dtype):
    reference, _ = _gpt_pair()
    model = gpt.GPT(reference.config, dtype=dtype)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    model.to_device("cuda")
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    expected, expected_loss = reference(deers.tensor(ids), deers.tensor(ids))
    logits, value = model(deers.tensor(ids, device=CUDA), deers.tensor(ids, device=CUDA))
    assert logits.dtype is dtype and logits.device == CUDA
    np.testing.assert_allclose(logits.numpy().astype(np.float32), expected.numpy(), atol=ATOL[dtype.name] / 2)
    np.testing.assert_allclose(value.item(), expected_loss.item(), rtol=1e-3)
    grads = value.backward()
    assert all(grads[p].dtype is dtype and np.isfinite(grads[p].numpy().astype(np.float32)).all()
               for p in model.parameters())
