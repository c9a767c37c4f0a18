"""The layers above the ops on the "mps" backend (MLX) against the CPU: losses, an nn model trained
with AdamW, and the GPT (logits, gradients, training steps, generation, f16/bf16). The shared checks
are in device_models.py; the op-level checks are in test_backend_mlx.py.
"""
import numpy as np
import pytest

pytest.importorskip("mlx.core")

import deers  # noqa: E402
from deers import checkpoint, loss, nn, optim  # noqa: E402
from device_models import (LOW_PRECISION, check_gpt_logits_and_gradients_like_cpu,  # noqa: E402
                           check_gpt_training_and_generation_like_cpu, check_low_precision_gpt_tracks_f32_cpu,
                           check_nn_model_trains_like_cpu)

MPS = deers.Device.MPS


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_cross_entropy_matches_cpu(reduction):
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


def test_nn_model_trains_the_same_on_mps_and_cpu():
    check_nn_model_trains_like_cpu("mps")


def test_gpt_logits_and_gradients_match_cpu():
    check_gpt_logits_and_gradients_like_cpu("mps")


def test_gpt_training_steps_and_generation_match_cpu():
    check_gpt_training_and_generation_like_cpu("mps", new_tokens=6)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.name)
def test_low_precision_gpt_on_mps_tracks_the_f32_cpu_model(dtype):
    check_low_precision_gpt_tracks_f32_cpu("mps", dtype)


def test_checkpoint_resume_on_mps_continues_exactly(tmp_path):
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
