"""GPT-2 (OpenAI, 2019) under Hugging Face's names: learned positions, LayerNorm, a GELU MLP, biases.

    transformer.wte (V, D) + transformer.wpe (n_positions, D)
        -> per block h.i: x + attn(ln_1(x)), x + mlp(ln_2(x)) -> transformer.ln_f -> lm_head = wte (tied)

Where it differs from Deers' GPT and from Llama:
- positions are a learned table added to the token embeddings (no RoPE), so the context is n_positions;
- LayerNorm with weight and bias; every projection has a bias;
- the MLP is c_proj(gelu_tanh(c_fc(x))) with a 4x hidden size ("gelu_new" is the tanh approximation);
- the projections are Conv1D layers: the weight is stored (in, out), the transpose of nn.Linear's,
  and c_attn holds q | k | v side by side along its output dim.

Shapes: B = batch, T = new positions, D = n_embd, nh = n_head, hd = D / nh, H = n_inner (4 D), V = vocab.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

import numpy as np

from ..creation import tensor
from ..device import Device
from ..dtype import DType, as_dtype, f32
from ..nn import Constant, Embedding, LayerNorm, Linear, Module, Normal, ParamPath, ParamStore, gelu, silu
from ..ops.linalg import linear
from ..tensor import Tensor
from .shared import CausalLM, KVCache, LayerCache, UnsupportedConfig, attend, attention_weights

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu")


@dataclass
class GPT2Config:
    """The fields of a GPT-2 config.json that the computation reads (defaults: the 124M `gpt2`)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True  # scores / sqrt(hd)
    scale_attn_by_inverse_layer_idx: bool = False  # scores / (layer index + 1) as well
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    source: dict = field(default_factory=dict, repr=False)  # the config.json read, written back by save_pretrained

    def __post_init__(self):
        self.n_inner = self.n_inner or 4 * self.n_embd
        if self.n_embd % self.n_head:
            raise UnsupportedConfig(f"GPT2Config: n_head {self.n_head} must divide n_embd {self.n_embd}")
        if self.activation_function not in ACTIVATIONS:
            raise UnsupportedConfig(f"GPT2Config: activation_function {self.activation_function!r} is not one of "
                                    f"{ACTIVATIONS}")

    @classmethod
    def from_hf(cls, config: dict) -> "GPT2Config":
        if config.get("add_cross_attention"):
            raise UnsupportedConfig("gpt2: add_cross_attention is set; only the decoder-only model is supported")
        known = {f.name for f in fields(cls)} - {"source"}
        return cls(**{name: config[name] for name in known if config.get(name) is not None}, source=dict(config))

    def to_hf(self) -> dict:
        """The config.json dict that transformers builds this model from."""
        out = dict(self.source)
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"})
        out.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        return out


class Conv1D(Module):
    """GPT-2's linear layer: y = x @ W + b with W stored (in_features, out_features)."""

    def __init__(self, in_features: int, out_features: int, vb: ParamPath, std: float):
        super().__init__()
        self.weight = vb.get((in_features, out_features), "weight", init=Normal(0.0, std))  # (in, out)
        self.bias = vb.get((out_features,), "bias", init=Constant(0.0))  # (out,)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight.transpose(0, 1)) + self.bias  # x @ W: (..., in) -> (..., out)


class GPT2Attention(Module):
    """c_attn (q | k | v), causal multi-head attention, c_proj."""

    def __init__(self, config: GPT2Config, layer_idx: int, vb: ParamPath):
        super().__init__()
        D = config.n_embd
        self.n_head, self.head_dim = config.n_head, D // config.n_head
        self.c_attn = Conv1D(D, 3 * D, vb.pp("c_attn"), config.initializer_range)  # W (D, 3D): columns q, k, v
        self.c_proj = Conv1D(D, D, vb.pp("c_proj"), config.initializer_range)  # W (D, D)
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of x (B, T, D), split into heads (GPT-2 has no RoPE: positions were added to x)."""
        B, T, D = x.shape
        nh, hd = self.n_head, self.head_dim
        qkv = self.c_attn(x)  # (B, T, 3D)
        q = qkv.narrow(2, 0, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = qkv.narrow(2, D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = qkv.narrow(2, 2 * D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        return q, k, v

    def forward(self, x: Tensor, cache: LayerCache | None = None, fused: bool = True) -> Tensor:
        q, k, v = self.heads(x)  # (B, nh, T, hd) each
        y = attend(q, k, v, cache, self.scale, fused)  # (B, T, D): fused, or from core ops
        return self.c_proj(y)  # (B, T, D)

    def attention_weights(self, x: Tensor, cache: LayerCache | None = None, fused: bool = True) -> Tensor:
        """The probabilities (B, nh, T, S) that forward applies to v (for deers.diagnostics.attention_maps)."""
        q, k, _ = self.heads(x)  # (B, nh, T, hd) each
        return attention_weights(q, k, cache, self.scale)  # (B, nh, T, S)


class GPT2MLP(Module):
    """c_proj(act(c_fc(x))): D -> H -> D, act = GELU's tanh approximation for "gelu_new"."""

    def __init__(self, config: GPT2Config, vb: ParamPath):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.n_inner, vb.pp("c_fc"), config.initializer_range)  # W (D, H)
        self.c_proj = Conv1D(config.n_inner, config.n_embd, vb.pp("c_proj"), config.initializer_range)  # W (H, D)
        self.activation = config.activation_function

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)  # (B, T, H)
        if self.activation in ("gelu_new", "gelu_pytorch_tanh"):
            h = gelu(h, approximate="tanh")  # 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
        elif self.activation == "gelu":
            h = gelu(h)
        elif self.activation == "relu":
            h = h.relu()
        else:  # silu
            h = silu(h)
        return self.c_proj(h)  # (B, T, D)


class GPT2Block(Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int, vb: ParamPath):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.n_embd, eps=eps, vb=vb.pp("ln_1"))
        self.attn = GPT2Attention(config, layer_idx, vb.pp("attn"))
        self.ln_2 = LayerNorm(config.n_embd, eps=eps, vb=vb.pp("ln_2"))
        self.mlp = GPT2MLP(config, vb.pp("mlp"))

    def forward(self, x: Tensor, cache: LayerCache | None = None, fused: bool = True) -> Tensor:
        # LayerNorm (layer_norm in deers/nn/layers.py) is written from core ops on both paths
        x = x + self.attn(self.ln_1(x), cache, fused)  # (B, T, D)
        return x + self.mlp(self.ln_2(x))  # (B, T, D)


class GPT2Model(Module):
    """wte + wpe, the blocks h, the final ln_f: ids (B, T) -> normalized hidden states (B, T, D)."""

    def __init__(self, config: GPT2Config, vb: ParamPath):
        super().__init__()
        std = config.initializer_range
        self.wte = Embedding(config.vocab_size, config.n_embd, vb=vb.pp("wte"), init=Normal(0.0, std))
        self.wpe = Embedding(config.n_positions, config.n_embd, vb=vb.pp("wpe"), init=Normal(0.0, std))
        self.h = [GPT2Block(config, i, vb.pp("h").pp(i)) for i in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, vb=vb.pp("ln_f"))

    def forward(self, idx: Tensor, cache: KVCache | None = None, fused: bool = True) -> Tensor:
        start = cache.length if cache is not None else 0
        T = idx.shape[1]
        positions = tensor(np.arange(start, start + T), device=idx.device)  # (T,) i64
        x = self.wte(idx) + self.wpe(positions)  # (B, T, D) + (T, D)
        for i, block in enumerate(self.h):
            x = block(x, cache.layers[i] if cache is not None else None, fused)  # (B, T, D)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)  # (B, T, D)


class GPT2(CausalLM):
    """GPT-2 with its language-model head; state_dict names are transformers' (`transformer.h.0.attn.c_attn.weight`).

        model = deers.models.from_pretrained("gpt2")        # or GPT2(GPT2Config(n_layer=2, ...))
        logits = model(idx)                                  # (B, T, V)
        out = model.generate(idx, 50, top_k=40, seed=0)
    """

    context_field = "n_positions"
    config_class = GPT2Config
    # the hub's original `gpt2` files store the causal mask of each block as a buffer: not a parameter
    IGNORED_TENSORS = re.compile(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$")
    # ... and their names lack the `transformer.` prefix that transformers 5 writes
    OPTIONAL_PREFIX = "transformer."

    def __init__(self, config: GPT2Config, vb: ParamPath | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str" = f32, fused: bool = True):
        super().__init__()
        if vb is None:
            vb = ParamStore(device=device, dtype=as_dtype(dtype)).root()
        self.config = config
        self.fused = fused  # False: attention and the loss from core ops (see deers/models/shared.py)
        self.n_layer = config.n_layer
        self.context_len = config.n_positions
        self.transformer = GPT2Model(config, vb.pp("transformer"))
        head = vb.pp("transformer").pp("wte") if config.tie_word_embeddings else vb.pp("lm_head")
        # tied: the same Var as transformer.wte.weight (V, D), listed once in the state_dict
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False, vb=head,
                              init=Normal(0.0, config.initializer_range))

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normalized hidden states (B, T, D) that lm_head turns into logits."""
        self.check_ids(idx, cache.length if cache is not None else 0)
        return self.transformer(idx, cache, self.fused)  # (B, T, D)

    def final_norm(self, x: Tensor) -> Tensor:
        """transformer.ln_f (LayerNorm: core ops on both paths)."""
        return self.transformer.ln_f(x)  # (B, T, D)
