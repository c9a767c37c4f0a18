"""The layers above the ops on a non-CPU device against the CPU: one set of checks that the MLX
suite (tests/test_backend_mlx_models.py) and the CUDA suite (tests/test_cuda_models.py) both run.

Each check builds the same model twice from one seed (weights copied to the device), runs both,
and compares losses, parameters, logits, gradients or generated tokens.
"""
from __future__ import annotations

import numpy as np

import deers
from deers import loss, nn, optim
from deers.models import gpt

LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d.available]
ATOL = {"f16": 1e-2, "bf16": 6e-2}  # logits of the low-precision GPT vs the f32 CPU model, halved below


def tiny_model(seed: int) -> nn.Sequential:
    """Embedding -> RMSNorm -> Linear -> ReLU -> Linear, initialised from a fixed seed on the CPU."""
    deers.manual_seed(seed)
    return nn.Sequential(nn.Embedding(11, 8), nn.RMSNorm(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 11, bias=False))


def check_nn_model_trains_like_cpu(device: str) -> None:
    """Three AdamW steps of a small nn model give the CPU's losses and parameters."""
    models = {"cpu": tiny_model(0), device: tiny_model(0).to_device(device)}
    optimizers = {d: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for d, m in models.items()}
    ids = np.array([[1, 4, 9, 2], [0, 10, 3, 3]])
    history = {d: [] for d in models}
    for _ in range(3):
        for d, model in models.items():
            targets = deers.tensor(np.roll(ids, 1, axis=1), device=d)
            value = loss.cross_entropy(model(deers.tensor(ids, device=d)), targets)
            optimizers[d].step_with_grads(value.backward())
            history[d].append(value.item())
    np.testing.assert_allclose(history[device], history["cpu"], rtol=1e-5)
    assert history["cpu"][-1] < history["cpu"][0]
    for (name, p_cpu), (_, p_dev) in zip(models["cpu"].named_parameters(), models[device].named_parameters()):
        assert p_dev.device == device
        np.testing.assert_allclose(p_dev.numpy(), p_cpu.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def gpt_pair(device: str) -> tuple[gpt.GPT, gpt.GPT]:
    """The same tiny GPT twice: on the CPU and (weights copied) on `device`."""
    config = gpt.GPTConfig(vocab_size=37, sequence_len=8, n_layer=2, n_head=2, n_embd=16, mlp_hidden_dim=32)
    deers.manual_seed(0)
    reference = gpt.GPT(config)
    model = gpt.GPT(config)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    return reference, model.to_device(device)


def check_gpt_logits_and_gradients_like_cpu(device: str) -> None:
    reference, model = gpt_pair(device)
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    outs = []
    for net, d in ((reference, "cpu"), (model, device)):
        logits = net(deers.tensor(ids, device=d))  # (B, T, V)
        assert logits.device == d
        grads = (logits * logits).mean().backward()
        outs.append((logits.numpy(), {name: grads[p].numpy() for name, p in net.named_parameters()}))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    for name, expected in outs[0][1].items():
        np.testing.assert_allclose(outs[1][1][name], expected, atol=1e-6, rtol=1e-4, err_msg=name)


def check_gpt_training_and_generation_like_cpu(device: str, new_tokens: int = 5) -> None:
    """Three clipped AdamW steps through GPT.loss (the trainer's fused path), then greedy generation."""
    reference, model = gpt_pair(device)
    ids = np.random.default_rng(1).integers(0, 37, (2, 9))
    losses = {"cpu": [], device: []}
    for net, d in ((reference, "cpu"), (model, device)):
        opt = optim.AdamWConfig(1e-2).weight_decay(0.1).betas(0.9, 0.95).build(net.parameters())
        inputs, targets = deers.tensor(ids[:, :-1], device=d), deers.tensor(ids[:, 1:], device=d)
        for _ in range(3):
            value = net.loss(inputs, targets)
            grads = value.backward()
            optim.clip_grad_norm(net.parameters(), grads, 1.0)
            opt.step_with_grads(grads)
            losses[d].append(value.item())
    np.testing.assert_allclose(losses[device], losses["cpu"], rtol=1e-5)
    assert losses["cpu"][-1] < losses["cpu"][0]
    for (name, p_cpu), (_, p_dev) in zip(reference.named_parameters(), model.named_parameters()):
        np.testing.assert_allclose(p_dev.numpy(), p_cpu.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)
    prompt = ids[:, :3]
    greedy = [net.generate(deers.tensor(prompt, device=d), new_tokens, temperature=0.0).numpy()
              for net, d in ((reference, "cpu"), (model, device))]
    np.testing.assert_array_equal(greedy[1], greedy[0])


def check_low_precision_gpt_tracks_f32_cpu(device: str, dtype: deers.DType) -> None:
    reference, _ = gpt_pair(device)
    model = gpt.GPT(reference.config, dtype=dtype)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    model.to_device(device)
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    expected, expected_loss = reference(deers.tensor(ids), deers.tensor(ids))
    logits, value = model(deers.tensor(ids, device=device), deers.tensor(ids, device=device))
    assert logits.dtype is dtype and logits.device == device
    np.testing.assert_allclose(logits.numpy().astype(np.float32), expected.numpy(), atol=ATOL[dtype.name] / 2)
    np.testing.assert_allclose(value.item(), expected_loss.item(), rtol=1e-3)
    grads = value.backward()
    assert all(grads[p].dtype is dtype and np.isfinite(grads[p].numpy().astype(np.float32)).all()
               for p in model.parameters())
