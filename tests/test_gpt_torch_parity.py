"""Whole-model parity: the Deers GPT against tests/torch_gpt.py built from the same weights.

Logits, loss and every gradient agree (f64 to rounding, f32 to rtol ~1e-4), a checkpoint opens in
PyTorch under the same names, and a few clipped AdamW steps give the same losses as torch.optim.AdamW.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import deers  # noqa: E402
from deers import checkpoint  # noqa: E402
from deers.models.gpt import GPT, GPTConfig  # noqa: E402
from deers.optim import AdamW, clip_grad_norm  # noqa: E402
from torch_gpt import TorchGPT, TorchGPTConfig, from_deers_state_dict  # noqa: E402

CONFIG = dict(vocab_size=53, sequence_len=16, n_layer=2, n_head=4, n_embd=32, mlp_hidden_dim=48,
              rms_norm_eps=1e-5, rope_base=10000.0)


def pair(dtype: str, seed: int = 0):
    """A Deers GPT and the PyTorch reference holding the same weights (strict load by name)."""
    deers.manual_seed(seed)
    model = GPT(GPTConfig(**CONFIG), dtype=dtype)
    torch_dtype = torch.float64 if dtype == "f64" else torch.float32
    reference = TorchGPT(TorchGPTConfig(**CONFIG)).to(torch_dtype)
    reference.load_state_dict(from_deers_state_dict(model.state_dict(), torch_dtype), strict=True)
    return model, reference


def batch(seed: int, B: int = 3, T: int = 16):
    rng = np.random.default_rng(seed)
    return rng.integers(0, CONFIG["vocab_size"], (B, T)), rng.integers(0, CONFIG["vocab_size"], (B, T))


@pytest.mark.parametrize("dtype, rtol, atol", [("f64", 1e-10, 1e-13), ("f32", 1e-4, 1e-6)])
def test_logits_loss_and_every_gradient_match_torch(dtype, rtol, atol):
    model, reference = pair(dtype)
    x, y = batch(0)
    logits, loss = model(deers.tensor(x), deers.tensor(y))
    grads = loss.backward()
    torch_logits, torch_loss = reference(torch.tensor(x), torch.tensor(y))
    torch_loss.backward()
    np.testing.assert_allclose(logits.numpy(), torch_logits.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(loss.item(), torch_loss.item(), rtol=rtol)
    torch_params = dict(reference.named_parameters())
    assert [name for name, _ in model.named_parameters()] == list(torch_params)
    for name, p in model.named_parameters():
        expected = torch_params[name].grad.numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(grads[p].numpy(), expected, rtol=rtol, atol=atol * 10 + rtol * scale * 0.1,
                                   err_msg=name)


@pytest.mark.parametrize("dtype, rtol, atol", [("f64", 1e-10, 1e-13), ("f32", 1e-4, 1e-6)])
def test_fused_training_loss_and_every_gradient_match_torch(dtype, rtol, atol):
    """GPT.loss (fused lm_head + cross-entropy, logits never materialized) against PyTorch."""
    model, reference = pair(dtype)
    x, y = batch(2)
    loss = model.loss(deers.tensor(x), deers.tensor(y))
    grads = loss.backward()
    _, torch_loss = reference(torch.tensor(x), torch.tensor(y))
    torch_loss.backward()
    np.testing.assert_allclose(loss.item(), torch_loss.item(), rtol=rtol)
    for name, p in model.named_parameters():
        expected = dict(reference.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(grads[p].numpy(), expected, rtol=rtol,
                                   atol=atol * 10 + rtol * np.abs(expected).max() * 0.1, err_msg=name)


def test_shorter_sequences_match_torch():
    model, reference = pair("f64", seed=1)
    x, _ = batch(1, B=2, T=5)
    np.testing.assert_allclose(model(deers.tensor(x)).numpy(), reference(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-13)


def test_checkpoint_opens_in_torch_with_the_same_names(tmp_path):
    from safetensors.torch import load_file

    model, _ = pair("f32", seed=2)
    path = tmp_path / "gpt.safetensors"
    checkpoint.save(path, model=model, step=0, extra={"config": CONFIG})
    reference = TorchGPT(TorchGPTConfig(**CONFIG))
    reference.load_state_dict(load_file(str(path)), strict=True)
    x, _ = batch(3)
    np.testing.assert_allclose(model(deers.tensor(x)).numpy(), reference(torch.tensor(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_adamw_training_steps_match_torch():
    """Five steps of clipped AdamW (decay on matrices only, as the trainer does) in f64."""
    model, reference = pair("f64", seed=3)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    gains = [p for p in model.parameters() if p.ndim < 2]
    optimizer = AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": gains, "weight_decay": 0.0}],
                      lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    torch_matrices = [p for p in reference.parameters() if p.ndim >= 2]
    torch_gains = [p for p in reference.parameters() if p.ndim < 2]
    torch_optimizer = torch.optim.AdamW([{"params": torch_matrices, "weight_decay": 0.1},
                                         {"params": torch_gains, "weight_decay": 0.0}],
                                        lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    losses, torch_losses, norms, torch_norms = [], [], [], []
    x, y = batch(10)  # one batch, fitted a little more at every step
    for _ in range(5):
        _, loss = model(deers.tensor(x), deers.tensor(y))
        grads = loss.backward()
        norms.append(clip_grad_norm(model.parameters(), grads, 0.5))
        optimizer.step_with_grads(grads)
        losses.append(loss.item())

        torch_optimizer.zero_grad()
        _, torch_loss = reference(torch.tensor(x), torch.tensor(y))
        torch_loss.backward()
        torch_norms.append(float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)))
        torch_optimizer.step()
        torch_losses.append(torch_loss.item())
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-9)
    np.testing.assert_allclose(norms, torch_norms, rtol=1e-9)
    assert norms[0] > 0.5  # the clipping was active
    assert losses[-1] < losses[0]
    torch_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.numpy(), torch_params[name].detach().numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=name)


def test_the_benchmarks_sdpa_reference_matches_the_explicit_one():
    """benchmarks/gpt_step.py compares against PyTorch's fused attention too: it must be the same model."""
    model, explicit = pair("f64")
    sdpa = TorchGPT(TorchGPTConfig(**CONFIG, attention="sdpa")).to(torch.float64)
    sdpa.load_state_dict(explicit.state_dict(), strict=True)
    x, y = (torch.from_numpy(a) for a in batch(1))
    (logits_e, loss_e), (logits_s, loss_s) = explicit(x, y), sdpa(x, y)
    torch.testing.assert_close(logits_s, logits_e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_s, loss_e, rtol=1e-10, atol=1e-12)
