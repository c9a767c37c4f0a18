"""The layers above the ops on the "mps" backend (MLX) against the CPU: losses, an nn model trained
with AdamW, and the GPT (logits, gradients, training steps, generation, f16/bf16). Each test skips
while the module it needs is not in the checkout. The op-level checks are in test_backend_mlx.py.
"""
import numpy as np
import pytest

pytest.importorskip("mlx.core")

import deers  # noqa: E402

MPS = deers.Device.MPS
LOW_PRECISION = [d for d in (deers.f16, deers.bf16) if d is not None]
ATOL = {"f16": 1e-2, "bf16": 6e-2}  # logits of the low-precision GPT vs the f32 CPU model, halved below


def _require(module: str):
    """Import a Deers module that may not exist yet in this checkout, or skip."""
    return pytest.importorskip(module, reason=f"{module} is not in this checkout")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_cross_entropy_matches_cpu(reduction):
    loss = _require("deers.loss")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 7)).astype(np.float32)
    targets = np.array([[1, 6, -100], [0, 3, 3]])
    results = []
    for device in ("cpu", "mps"):
        x = deers.tensor(logits.transpose(1, 0, 2).copy(), device=device).attach()  # (T, B, C) storage
        value = loss.cross_entropy(x.transpose(0, 1), deers.tensor(targets, device=device),
                                   label_smoothing=0.1, reduction=reduction)
        assert value.device == device
        seed = deers.ones(*value.shape, device=device) if value.ndim else None
        results.append((value.numpy(), value.backward(seed)[x].numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-6, rtol=1e-5)
    with pytest.raises(IndexError):
        loss.cross_entropy(deers.tensor(logits[0], device=MPS), deers.tensor([7, 0, 1], device=MPS))


def _tiny_model(nn, seed: int):
    """Embedding -> RMSNorm -> Linear -> ReLU -> Linear, initialised from a fixed seed on the CPU."""
    deers.manual_seed(seed)
    return nn.Sequential(nn.Embedding(11, 8), nn.RMSNorm(8), nn.Linear(8, 16), nn.ReLU(),
                         nn.Linear(16, 11, bias=False))


def test_nn_model_trains_the_same_on_mps_and_cpu():
    nn = _require("deers.nn")
    optim = _require("deers.optim")
    loss = _require("deers.loss")
    models = {"cpu": _tiny_model(nn, 0), "mps": _tiny_model(nn, 0).to_device("mps")}
    optimizers = {d: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for d, m in models.items()}
    ids = np.array([[1, 4, 9, 2], [0, 10, 3, 3]])
    history = {"cpu": [], "mps": []}
    for _ in range(3):
        for device, model in models.items():
            inputs = deers.tensor(ids, device=device)
            value = loss.cross_entropy(model(inputs), deers.tensor(np.roll(ids, 1, axis=1), device=device))
            optimizers[device].step_with_grads(value.backward())
            history[device].append(value.item())
    np.testing.assert_allclose(history["mps"], history["cpu"], rtol=1e-5)
    assert history["cpu"][-1] < history["cpu"][0]
    for (name, p_cpu), (_, p_mps) in zip(models["cpu"].named_parameters(), models["mps"].named_parameters()):
        assert p_mps.device == MPS
        np.testing.assert_allclose(p_mps.numpy(), p_cpu.numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def _gpt_pair(gpt):
    """The same tiny GPT twice: on the CPU and (weights copied) on mps."""
    config = gpt.GPTConfig(vocab_size=37, sequence_len=8, n_layer=2, n_head=2, n_embd=16, mlp_hidden_dim=32,
                           rms_norm_eps=1e-5, rope_base=10000.0)
    deers.manual_seed(0)
    reference = gpt.GPT(config)
    model = gpt.GPT(config)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    return reference, model.to_device("mps")


def test_gpt_logits_and_gradients_match_cpu():
    gpt = _require("deers.models.gpt")
    reference, model = _gpt_pair(gpt)
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    outs = []
    for net, device in ((reference, "cpu"), (model, "mps")):
        logits = net(deers.tensor(ids, device=device))  # (B, T, V)
        assert logits.device == device
        grads = (logits * logits).mean().backward()
        outs.append((logits.numpy(), {name: grads[p].numpy() for name, p in net.named_parameters()}))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    for name, expected in outs[0][1].items():
        np.testing.assert_allclose(outs[1][1][name], expected, atol=1e-6, rtol=1e-4, err_msg=name)


def test_gpt_training_steps_and_generation_match_cpu():
    gpt = _require("deers.models.gpt")
    optim = _require("deers.optim")
    reference, model = _gpt_pair(gpt)
    ids = np.random.default_rng(1).integers(0, 37, (2, 9))
    losses = {"cpu": [], "mps": []}
    for net, device in ((reference, "cpu"), (model, "mps")):
        opt = optim.AdamWConfig(1e-2).weight_decay(0.1).betas(0.9, 0.95).build(net.parameters())
        inputs, targets = deers.tensor(ids[:, :-1], device=device), deers.tensor(ids[:, 1:], device=device)
        for _ in range(3):
            _, value = net(inputs, targets)
            grads = value.backward()
            optim.clip_grad_norm(net.parameters(), grads, 1.0)
            opt.step_with_grads(grads)
            losses[device].append(value.item())
    np.testing.assert_allclose(losses["mps"], losses["cpu"], rtol=1e-5)
    assert losses["cpu"][-1] < losses["cpu"][0]
    for (name, p_cpu), (_, p_mps) in zip(reference.named_parameters(), model.named_parameters()):
        np.testing.assert_allclose(p_mps.numpy(), p_cpu.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)
    prompt = ids[:, :3]
    greedy = [net.generate(deers.tensor(prompt, device=device), 6, temperature=0.0).numpy()
              for net, device in ((reference, "cpu"), (model, "mps"))]
    np.testing.assert_array_equal(greedy[1], greedy[0])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.name)
def test_low_precision_gpt_on_mps_tracks_the_f32_cpu_model(dtype):
    gpt = _require("deers.models.gpt")
    reference, _ = _gpt_pair(gpt)
    model = gpt.GPT(reference.config, dtype=dtype)
    model.load_state_dict({name: t.numpy() for name, t in reference.state_dict().items()})
    model.to_device("mps")
    ids = np.random.default_rng(0).integers(0, 37, (2, 8))
    expected, expected_loss = reference(deers.tensor(ids), deers.tensor(ids))
    logits, value = model(deers.tensor(ids, device=MPS), deers.tensor(ids, device=MPS))
    assert logits.dtype is dtype and logits.device == MPS
    np.testing.assert_allclose(logits.numpy().astype(np.float32), expected.numpy(), atol=ATOL[dtype.name] / 2)
    np.testing.assert_allclose(value.item(), expected_loss.item(), rtol=1e-3)
    grads = value.backward()
    assert all(grads[p].dtype is dtype and np.isfinite(grads[p].numpy().astype(np.float32)).all()
               for p in model.parameters())


def test_checkpoint_resume_on_mps_continues_exactly(tmp_path):
    nn, optim, checkpoint = _require("deers.nn"), _require("deers.optim"), _require("deers.checkpoint")

    def train_step(model, opt):
        x = deers.randn(4, 6, device=MPS)  # drawn from the mps generator, which the checkpoint restores
        value = (model(x) * model(x)).mean()
        opt.step_with_grads(value.backward())
        return value.item()

    def fresh():
        deers.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to_device("mps")
        return model, optim.AdamW(model.parameters(), lr=1e-2)

    model, opt = fresh()
    train_step(model, opt)
    checkpoint.save(tmp_path / "ckpt.safetensors", model=model, optimizer=opt, step=1)
    expected = [train_step(model, opt) for _ in range(2)]
    resumed, resumed_opt = fresh()
    info = checkpoint.load(tmp_path / "ckpt.safetensors", model=resumed, optimizer=resumed_opt)
    assert info["step"] == 1 and all(p.device == MPS for p in resumed.parameters())
    assert [train_step(resumed, resumed_opt) for _ in range(2)] == expected
