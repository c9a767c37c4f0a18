"""A PyTorch reference GPT written from docs/design.md, for parity tests and benchmarks (not part of deers).

Same parameter names, shapes and math as deers.models.gpt.GPT, so `load_state_dict(strict=True)`
takes a Deers state_dict (converted to torch tensors) and the logits, loss and every gradient can
be compared one for one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TorchGPTConfig:
    vocab_size: int = 50257
    sequence_len: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    mlp_hidden_dim: int = 768
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    attention: str = "explicit"  # "explicit": softmax(q k^T) v as docs/design.md writes it; "sdpa": PyTorch's fused kernel


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TorchGPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.sdpa = cfg.attention == "sdpa"
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        cos, sin = cos[:T], sin[:T]  # (T, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.sdpa:  # the same maths in PyTorch's fused causal attention (its fastest eager form)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = att @ v  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: TorchGPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden_dim, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden_dim, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: TorchGPTConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class TorchGPT(nn.Module):
    def __init__(self, cfg: TorchGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        hd = cfg.n_embd // cfg.n_head
        inv_freq = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (hd/2,)
        angle = torch.arange(cfg.sequence_len, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, hd/2)
        angle = torch.cat([angle, angle], dim=-1)  # (T, hd)
        # kept in f64 and cast at use, so an f32 and an f64 model see the same rounded tables as Deers
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)
        for name, p in self.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm_f.weight":
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets=None):
        x = self.wte(idx)  # (B, T, D)
        cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def from_deers_state_dict(state: dict, dtype=torch.float32) -> dict:
    """Deers state_dict (name -> deers Tensor or NumPy array) as torch tensors."""
    out = {}
    for name, value in state.items():
        array = value.numpy() if hasattr(value, "numpy") else value
        if array.dtype.name == "bfloat16":  # ml_dtypes' bf16: torch cannot read it; f32 holds it exactly
            array = array.astype("float32")
        out[name] = torch.tensor(array, dtype=dtype)
    return out
