"""The pretrained-model families on the other devices give the CPU's logits and greedy tokens: "mps"
(MLX, its CPU build on Linux) and "cuda" (the emulated kernels everywhere, a GPU when present).

The folders are written by Deers itself (save_pretrained of models whose every weight is random), so
these tests need neither torch nor transformers; test_pretrained.py ties the CPU to transformers.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from cuda_emulator import cuda_backend_fixture
from deers.models import GPT2, GPT2Config, Llama, LlamaConfig, from_pretrained, save_pretrained

IDS = np.random.default_rng(0).integers(0, 61, (2, 9))
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
MODELS = {
    "llama": lambda: Llama(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rope_theta=500.0, rope_scaling=LLAMA3_ROPE)),
    "qwen2": lambda: Llama(LlamaConfig(model_type="qwen2", vocab_size=61, hidden_size=32, intermediate_size=40,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                       max_position_embeddings=64, tie_word_embeddings=True)),
    "qwen3": lambda: Llama(LlamaConfig(model_type="qwen3", vocab_size=61, hidden_size=32, intermediate_size=40,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       max_position_embeddings=64, tie_word_embeddings=True)),
    "gpt2": lambda: GPT2(GPT2Config(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> a folder written by save_pretrained, every weight random (norm gains around 1)."""
    rng = np.random.default_rng(0)
    out = {}
    for family, make in MODELS.items():
        model = make()
        model.load_state_dict({name: (1.0 if name.endswith(("norm.weight", "layernorm.weight", "ln_1.weight",
                                                            "ln_2.weight", "ln_f.weight")) else 0.0)
                               + rng.standard_normal(value.shape).astype(np.float32) * 0.4
                               for name, value in model.state_dict().items()})
        out[family] = tmp_path_factory.mktemp(family)
        save_pretrained(model, out[family])
    return out


@pytest.fixture(scope="module", params=["mps", "cuda-emulated", "cuda-gpu"])
def device(request):
    if request.param == "mps":
        pytest.importorskip("mlx.core", reason="the mps device needs MLX (pip install 'deers[mps]')")
        yield "mps"
        return

    class Param:  # cuda_backend_fixture reads request.param: "emulated" or "gpu"
        param = request.param.split("-")[1]

    for _ in cuda_backend_fixture(Param):
        yield "cuda"


@pytest.mark.parametrize("family", list(MODELS))
def test_logits_and_greedy_tokens_equal_the_cpu(folders, device, family):
    cpu = from_pretrained(folders[family])
    there = from_pretrained(folders[family], device=device)
    logits = there(deers.tensor(IDS, device=device))
    assert str(logits.device).startswith(device) and all(v.device == logits.device for v in there.parameters())
    np.testing.assert_allclose(logits.numpy(), cpu(deers.tensor(IDS)).numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(there.generate(deers.tensor(IDS, device=device), 5, temperature=0).numpy(),
                                  cpu.generate(deers.tensor(IDS), 5, temperature=0).numpy())
