"""Tiny random Hugging Face models built with transformers itself, for the pretrained-model tests.

Every weight is redrawn (transformers' default init leaves norms at 1, biases at 0 and the attention
nearly uniform, which hides mistakes in exactly those places): matrices ~ N(0, 0.3^2), vectors
(norm gains, biases) ~ 1 + N(0, 0.5^2) for norms and N(0, 0.5^2) for biases. Each config exercises
what its family adds: grouped-query heads and Llama 3's RoPE scaling, Qwen2's q/k/v biases and a
tied head, Qwen3's q/k norms with head_dim != hidden / heads, GPT-2's Conv1D layout.
"""
from __future__ import annotations

from pathlib import Path

VOCAB = 97
FAMILIES = ("llama", "qwen2", "qwen3", "gpt2")


def config_for(family: str):
    import transformers

    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if family == "qwen2":
        return transformers.Qwen2Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    if family == "qwen3":
        return transformers.Qwen3Config(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=True)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    raise ValueError(family)


def randomize(model, seed: int = 0) -> None:
    """Redraw every parameter of a torch model (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim > 1:
                p.copy_(noise * 0.3)
            elif "norm" in name or ".ln_" in name:
                p.copy_(1.0 + noise * 0.5)
            else:
                p.copy_(noise * 0.5)


def build(family: str, seed: int = 0):
    """A transformers model of `family` with every weight random, in eval mode."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_config(config_for(family))
    randomize(model, seed)
    return model.eval()


def save(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder
