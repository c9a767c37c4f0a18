"""LowPrecisionCopy and LossScaler: the f16/bf16 training pieces the TinyStories trainer uses."""
import numpy as np
import pytest

import deers
from deers.models.gpt import GPT, GPTConfig
from deers.optim import LossScaler, LowPrecisionCopy

CONFIG = GPTConfig(vocab_size=11, sequence_len=8, n_layer=1, n_head=2, n_embd=8, mlp_hidden_dim=12)


def test_the_copy_takes_the_master_weights_and_gives_back_unscaled_f32_gradients():
    deers.manual_seed(0)
    master = GPT(CONFIG)
    low = LowPrecisionCopy(master, GPT(CONFIG, dtype=deers.f16))
    low.sync()
    for m, c in low.pairs:
        assert c.dtype is deers.f16
        np.testing.assert_array_equal(c.numpy(), m.numpy().astype(np.float16))
    ids = deers.tensor(np.random.default_rng(0).integers(0, 11, (2, 8)))
    grads = (low.model.loss(ids, ids) * 8.0).backward()
    master_grads = low.master_grads(grads, 8.0)
    reference = master.loss(ids, ids).backward()
    for m in master.parameters():
        assert master_grads[m].dtype is deers.f32
        np.testing.assert_allclose(master_grads[m].numpy(), reference[m].numpy(), atol=2e-2, rtol=5e-2)


def test_a_copy_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="same order"):
        LowPrecisionCopy(GPT(CONFIG), GPT(GPTConfig(**{**CONFIG.__dict__, "n_layer": 2})))


def test_loss_scale_halves_on_overflow_and_doubles_after_500_good_steps():
    scaler = LossScaler(1024.0)
    scaler.update(False)
    assert scaler.scale == 512.0
    for _ in range(500):
        scaler.update(True)
    assert scaler.scale == 1024.0
    tiny = LossScaler(1.0)
    tiny.update(False)
    assert tiny.scale == 1.0  # never below 1
