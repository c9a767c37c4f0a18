"""A small GPT (decoder-only transformer) with RMSNorm, rotary position embeddings and a ReLU MLP.

The architecture and the parameter names are fixed by docs/design.md so that checkpoints, the
PyTorch reference model (tests/torch_gpt.py) and outside checks line up:

    wte.weight (V, D) -> per block: x + attn(norm1(x)), x + mlp(norm2(x)) -> norm_f -> lm_head (V, D)

No biases anywhere; Linear weights are (out_features, in_features) like PyTorch. Shapes in the
comments use B = batch, T = sequence length, D = n_embd, nh = n_head, hd = D / nh, V = vocab size.

Two paths behind one flag, as nanoGPT keeps its explicit attention beside the flash one.
`GPT(config, fused=False)` (or `model.fused = False` on a built model) runs the attention as
softmax(q k^T * scale + mask) v, RoPE, RMSNorm and the loss written out from core ops: the graph
you would write by hand, every intermediate a node. The default `fused=True` runs each of those
as one op of deers/fused/ (one backend kernel forward, one backward, few saved activations).
Both give the same logits, loss, gradients and samples (tests/test_gpt_core_path.py).

The attention, RoPE tables, KV cache, sampler and the logits / loss / generate methods are the
ones GPT-2, Llama and Qwen use too (deers/models/shared.py); this file holds what makes this GPT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..creation import tensor
from ..device import Device
from ..dtype import DType, as_dtype, f32
from ..nn import Embedding, Linear, Module, Normal, ParamPath, ParamStore, RMSNorm
from ..tensor import Tensor
from .shared import CausalLM, KVCache, LayerCache, attend, attention_weights, norm, rope, rope_tables


@dataclass
class GPTConfig:
    """Model size. The defaults are the headline TinyStories config: about 22.0M parameters with GPT-2's
    vocabulary, 19.3M of them in wte and lm_head (not tied)."""

    vocab_size: int = 50257
    sequence_len: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    mlp_hidden_dim: int = 768
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads "
                             f"of an even size (RoPE rotates pairs)")


class CausalSelfAttention(Module):
    """Multi-head self-attention where position t sees positions s <= t only."""

    def __init__(self, config: GPTConfig, vb: ParamPath):
        super().__init__()
        D = config.n_embd
        self.n_head = config.n_head
        self.head_dim = D // config.n_head
        self.qkv = Linear(D, 3 * D, bias=False, vb=vb.pp("qkv"), init=Normal(0.0, 0.02))  # rows q, k, v
        self.proj = Linear(D, D, bias=False, vb=vb.pp("proj"), init=Normal(0.0, 0.02))
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def heads(self, x: Tensor, cos: Tensor, sin: Tensor, fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of x (B, T, D), split into heads, q and k rotated by their positions (RoPE)."""
        B, T, D = x.shape
        nh, hd = self.n_head, self.head_dim
        qkv = self.qkv(x)  # (B, T, 3D)
        q = qkv.narrow(2, 0, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = qkv.narrow(2, D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = qkv.narrow(2, 2 * D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        return rope(q, cos, sin, fused), rope(k, cos, sin, fused), v  # x * cos + rotate_half(x) * sin

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                fused: bool = True) -> Tensor:
        q, k, v = self.heads(x, cos, sin, fused)  # (B, nh, T, hd) each
        # softmax(q k^T * scale + mask) v, keys and values appended to the cache first: one fused op,
        # or written out from core ops (deers/models/shared.py, causal_probabilities)
        y = attend(q, k, v, cache, self.scale, fused)  # (B, T, D)
        return self.proj(y)

    def attention_weights(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                          fused: bool = True) -> Tensor:
        """The probabilities softmax(q k^T / sqrt(hd)) that forward applies to v, (B, nh, T, S): what
        deers.diagnostics.attention_maps shows (forward itself does not keep them)."""
        q, k, _ = self.heads(x, cos, sin, fused)  # (B, nh, T, hd) each
        return attention_weights(q, k, cache, self.scale)  # (B, nh, T, S)


class MLP(Module):
    """proj(relu(fc(x))): D -> mlp_hidden_dim -> D."""

    def __init__(self, config: GPTConfig, vb: ParamPath):
        super().__init__()
        self.fc = Linear(config.n_embd, config.mlp_hidden_dim, bias=False, vb=vb.pp("fc"), init=Normal(0.0, 0.02))
        self.proj = Linear(config.mlp_hidden_dim, config.n_embd, bias=False, vb=vb.pp("proj"),
                           init=Normal(0.0, 0.02))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.fc(x).relu())  # (B, T, H) -> (B, T, D)


class GPTBlock(Module):
    """Pre-norm residual block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: GPTConfig, vb: ParamPath):
        super().__init__()
        self.norm1 = RMSNorm(config.n_embd, eps=config.rms_norm_eps, vb=vb.pp("norm1"))
        self.attn = CausalSelfAttention(config, vb.pp("attn"))
        self.norm2 = RMSNorm(config.n_embd, eps=config.rms_norm_eps, vb=vb.pp("norm2"))
        self.mlp = MLP(config, vb.pp("mlp"))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                fused: bool = True) -> Tensor:
        x = x + self.attn(norm(self.norm1, x, fused), cos, sin, cache, fused)  # (B, T, D)
        return x + self.mlp(norm(self.norm2, x, fused))  # (B, T, D)


class GPT(CausalLM):
    """The language model: token ids (B, T) -> next-token logits (B, T, V).

        model = GPT(GPTConfig(vocab_size=50257))
        logits = model(idx)                       # (B, T, V)
        logits, loss = model(idx, targets)        # loss: mean cross-entropy, a 0-d tensor
        loss = model.loss(idx, targets)           # the same, through the fused lm_head + loss op
        out = model.generate(idx, 50, top_k=40, top_p=0.9, seed=0)
        model.fused = False                       # every block from core ops from now on

    `fused` (True by default) picks the path of every block, the final norm and the loss on
    each call; it is a plain attribute, so it can be switched on a built model. `forward`, `loss`
    and `generate` are CausalLM's (deers/models/shared.py), shared with GPT-2, Llama and Qwen.
    """

    context_field = "sequence_len"

    def __init__(self, config: GPTConfig, vb: ParamPath | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str" = f32, fused: bool = True):
        super().__init__()
        if vb is None:
            vb = ParamStore(device=device, dtype=as_dtype(dtype)).root()
        self.config = config
        self.fused = fused
        self.n_layer = config.n_layer
        self.context_len = config.sequence_len
        self.wte = Embedding(config.vocab_size, config.n_embd, vb=vb.pp("wte"), init=Normal(0.0, 0.02))
        self.blocks = [GPTBlock(config, vb.pp("blocks").pp(i)) for i in range(config.n_layer)]
        self.norm_f = RMSNorm(config.n_embd, eps=config.rms_norm_eps, vb=vb.pp("norm_f"))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False, vb=vb.pp("lm_head"),
                              init=Normal(0.0, 0.02))
        # Constants, not parameters (plain Tensors: no gradient, not in the state_dict; to_device moves them).
        S, hd = config.sequence_len, config.n_embd // config.n_head
        cos, sin = rope_tables(hd, S, config.rope_base)
        self.rope_cos = tensor(cos, dtype=vb.dtype, device=vb.device)  # (S, hd)
        self.rope_sin = tensor(sin, dtype=vb.dtype, device=vb.device)  # (S, hd)

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normalized hidden states (B, T, D) that lm_head turns into logits."""
        start = cache.length if cache is not None else 0
        self.check_ids(idx, start)
        B, T = idx.shape
        cos = self.rope_cos[start:start + T]  # (T, hd)
        sin = self.rope_sin[start:start + T]  # (T, hd)
        x = self.wte(idx)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None, fused=self.fused)  # (B, T, D)
        if cache is not None:
            cache.length += T
        return self.final_norm(x)  # (B, T, D)

    def final_norm(self, x: Tensor) -> Tensor:
        """norm_f, fused or from core ops."""
        return norm(self.norm_f, x, self.fused)  # (B, T, D)
