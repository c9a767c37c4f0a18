"""Llama, Qwen2 and Qwen3: one decoder with three small differences, under Hugging Face's names.

    model.embed_tokens (V, D) -> per layer: x + self_attn(input_layernorm(x)),
                                            x + mlp(post_attention_layernorm(x)) -> model.norm -> lm_head

- RMSNorm everywhere (no mean subtraction, no bias); RoPE on q and k (rotate-half convention,
  `rope_theta`, optionally Llama 3's frequency scaling), no learned positions.
- The MLP is SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)).
- Grouped-query attention: num_key_value_heads (nkv) key/value heads, each shared by
  nh / nkv query heads (deers.models.shared.grouped_attention).
- Qwen2 adds biases to q_proj, k_proj and v_proj. Qwen3 normalizes each head of q and k with its own
  RMSNorm (q_norm, k_norm over hd) before RoPE, and sets head_dim explicitly (nh * hd may differ from D).
- With tie_word_embeddings the head reuses model.embed_tokens.weight (the file then has no lm_head.weight).

Shapes: B = batch, T = new positions, D = hidden_size, nh = num_attention_heads, nkv =
num_key_value_heads, hd = head_dim, H = intermediate_size, V = vocab_size.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from ..dtype import DType, as_dtype, f32
from ..device import Device
from ..nn import Embedding, Linear, Module, Normal, ParamPath, ParamStore, RMSNorm, silu
from ..tensor import Tensor
from .shared import CausalLM, KVCache, LayerCache, Rotary, UnsupportedConfig, attend, attention_weights, norm, rope

MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass
class LlamaConfig:
    """The fields of a Llama / Qwen2 / Qwen3 config.json that the computation reads."""

    model_type: str = "llama"  # "llama", "qwen2" or "qwen3"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: num_attention_heads (plain multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": ..., ...}, or None
    attention_bias: bool = False  # Llama / Qwen3: biases on q, k, v and o (Qwen2 has q, k, v biases always)
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    source: dict = field(default_factory=dict, repr=False)  # the config.json read, written back by save_pretrained

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise UnsupportedConfig(f"LlamaConfig: model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedConfig(f"LlamaConfig: num_key_value_heads {self.num_key_value_heads} must divide "
                                    f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act != "silu":
            raise UnsupportedConfig(f"LlamaConfig: hidden_act {self.hidden_act!r} is not supported (only 'silu')")

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.model_type != "qwen2" and self.attention_bias

    @classmethod
    def from_hf(cls, config: dict) -> "LlamaConfig":
        """From a config.json dict, in either dialect: transformers 5 writes `rope_parameters`
        ({rope_type, rope_theta, ...}); 4.x files have top-level `rope_theta` and `rope_scaling`."""
        if config.get("use_sliding_window") or "sliding_attention" in (config.get("layer_types") or []):
            raise UnsupportedConfig(f"{config['model_type']}: use_sliding_window is set; sliding-window "
                                    f"attention is not implemented")
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedConfig(f"{config['model_type']}: partial_rotary_factor {rope['partial_rotary_factor']} "
                                    f"is not supported")
        scaling = None
        if kind != "default":
            scaling = {"rope_type": kind, **rope}
            if kind == "llama3":
                scaling.setdefault("original_max_position_embeddings", config.get("max_position_embeddings"))
        known = {f.name for f in fields(cls)} - {"rope_theta", "rope_scaling", "source"}
        values = {name: config[name] for name in known if config.get(name) is not None}
        return cls(**values, rope_theta=float(theta), rope_scaling=scaling, source=dict(config))

    def to_hf(self) -> dict:
        """The config.json dict (transformers 5's dialect) that transformers builds this model from."""
        out = {k: v for k, v in self.source.items() if k not in ("rope_scaling", "rope_theta", "rope_parameters")}
        out.update({f.name: getattr(self, f.name) for f in fields(self)
                    if f.name not in ("rope_theta", "rope_scaling", "source")})
        out["architectures"] = [ARCHITECTURES[self.model_type]]
        out["rope_parameters"] = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        return out


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class LlamaAttention(Module):
    """q_proj, k_proj, v_proj, (Qwen3: q_norm, k_norm), RoPE, grouped-query causal attention, o_proj."""

    def __init__(self, config: LlamaConfig, vb: ParamPath):
        super().__init__()
        D, nh, nkv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = nh, nkv, hd
        init = Normal(0.0, config.initializer_range)
        self.q_proj = Linear(D, nh * hd, bias=config.qkv_bias, vb=vb.pp("q_proj"), init=init)  # W (nh*hd, D)
        self.k_proj = Linear(D, nkv * hd, bias=config.qkv_bias, vb=vb.pp("k_proj"), init=init)  # W (nkv*hd, D)
        self.v_proj = Linear(D, nkv * hd, bias=config.qkv_bias, vb=vb.pp("v_proj"), init=init)  # W (nkv*hd, D)
        self.o_proj = Linear(nh * hd, D, bias=config.o_bias, vb=vb.pp("o_proj"), init=init)  # W (D, nh*hd)
        if config.model_type == "qwen3":  # one gain (hd,) shared by all heads of q, one by all of k
            self.q_norm = RMSNorm(hd, eps=config.rms_norm_eps, vb=vb.pp("q_norm"))
            self.k_norm = RMSNorm(hd, eps=config.rms_norm_eps, vb=vb.pp("k_norm"))
        else:
            self.q_norm = self.k_norm = None
        self.scale = 1.0 / math.sqrt(hd)

    def heads(self, x: Tensor, cos: Tensor, sin: Tensor, fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, nh, T, hd), k and v (B, nkv, T, hd) of x (B, T, D); q and k normalized (Qwen3) and rotated (RoPE)."""
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).reshape(B, T, nh, hd)  # (B, T, nh*hd) -> (B, T, nh, hd)
        k = self.k_proj(x).reshape(B, T, nkv, hd)  # (B, T, nkv*hd) -> (B, T, nkv, hd)
        v = self.v_proj(x).reshape(B, T, nkv, hd).transpose(1, 2)  # (B, T, nkv*hd) -> (B, nkv, T, hd)
        if self.q_norm is not None:  # Qwen3: RMSNorm over each head's hd, before RoPE
            q = norm(self.q_norm, q, fused)
            k = norm(self.k_norm, k, fused)
        q = rope(q.transpose(1, 2), cos, sin, fused)  # (B, nh, T, hd): x * cos + rotate_half(x) * sin
        k = rope(k.transpose(1, 2), cos, sin, fused)  # (B, nkv, T, hd)
        return q, k, v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                fused: bool = True) -> Tensor:
        q, k, v = self.heads(x, cos, sin, fused)  # (B, nh, T, hd), (B, nkv, T, hd) twice
        y = attend(q, k, v, cache, self.scale, fused)  # (B, T, nh*hd): grouped-query, fused or from core ops
        return self.o_proj(y)  # (B, T, D)

    def attention_weights(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                          fused: bool = True) -> Tensor:
        """The probabilities (B, nh, T, S) that forward applies to v (for deers.diagnostics.attention_maps)."""
        q, k, _ = self.heads(x, cos, sin, fused)  # (B, nh, T, hd), (B, nkv, T, hd)
        return attention_weights(q, k, cache, self.scale)  # (B, nh, T, S)


class LlamaMLP(Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), D -> H -> D."""

    def __init__(self, config: LlamaConfig, vb: ParamPath):
        super().__init__()
        D, H, init = config.hidden_size, config.intermediate_size, Normal(0.0, config.initializer_range)
        self.gate_proj = Linear(D, H, bias=config.mlp_bias, vb=vb.pp("gate_proj"), init=init)  # W (H, D)
        self.up_proj = Linear(D, H, bias=config.mlp_bias, vb=vb.pp("up_proj"), init=init)  # W (H, D)
        self.down_proj = Linear(H, D, bias=config.mlp_bias, vb=vb.pp("down_proj"), init=init)  # W (D, H)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, H) -> (B, T, D)


class LlamaDecoderLayer(Module):
    """Pre-norm residual block: x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x))."""

    def __init__(self, config: LlamaConfig, vb: ParamPath):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = LlamaAttention(config, vb.pp("self_attn"))
        self.mlp = LlamaMLP(config, vb.pp("mlp"))
        self.input_layernorm = RMSNorm(config.hidden_size, eps=eps, vb=vb.pp("input_layernorm"))
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=eps, vb=vb.pp("post_attention_layernorm"))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                fused: bool = True) -> Tensor:
        x = x + self.self_attn(norm(self.input_layernorm, x, fused), cos, sin, cache, fused)  # (B, T, D)
        return x + self.mlp(norm(self.post_attention_layernorm, x, fused))  # (B, T, D)


class LlamaModel(Module):
    """embed_tokens, the layers, the final norm: ids (B, T) -> normalized hidden states (B, T, D)."""

    def __init__(self, config: LlamaConfig, vb: ParamPath):
        super().__init__()
        init = Normal(0.0, config.initializer_range)
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, vb=vb.pp("embed_tokens"), init=init)
        self.layers = [LlamaDecoderLayer(config, vb.pp("layers").pp(i)) for i in range(config.num_hidden_layers)]
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, vb=vb.pp("norm"))
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_scaling,  # no parameters
                             config.max_position_embeddings, vb.dtype, vb.device)

    def forward(self, idx: Tensor, cache: KVCache | None = None, fused: bool = True) -> Tensor:
        start = cache.length if cache is not None else 0
        cos, sin = self.rotary(start, idx.shape[1])  # (T, hd) each, for positions start .. start + T - 1
        x = self.embed_tokens(idx)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.layers[i] if cache is not None else None, fused)  # (B, T, D)
        if cache is not None:
            cache.length += idx.shape[1]
        return norm(self.norm, x, fused)  # (B, T, D)


class Llama(CausalLM):
    """A Llama / Qwen2 / Qwen3 causal language model; state_dict names are the checkpoints'.

        model = deers.models.from_pretrained("Qwen/Qwen3-0.6B")     # or Llama(LlamaConfig(...))
        logits = model(idx)                                          # (B, T, V)
        out = model.generate(idx, 50, temperature=0.7, top_p=0.9, seed=0)
    """

    context_field = "max_position_embeddings"
    config_class = LlamaConfig
    # tensors some checkpoints hold that are not parameters (older Llama files store RoPE's inv_freq)
    IGNORED_TENSORS = re.compile(r"\.rotary_emb\.inv_freq$")

    def __init__(self, config: LlamaConfig, vb: ParamPath | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str" = f32, fused: bool = True):
        super().__init__()
        if vb is None:
            vb = ParamStore(device=device, dtype=as_dtype(dtype)).root()
        self.config = config
        self.fused = fused  # False: attention, RoPE, RMSNorm and the loss from core ops (deers/models/shared.py)
        self.n_layer = config.num_hidden_layers
        self.context_len = config.max_position_embeddings
        self.model = LlamaModel(config, vb.pp("model"))
        head = vb.pp("model").pp("embed_tokens") if config.tie_word_embeddings else vb.pp("lm_head")
        # tied: the same Var as model.embed_tokens.weight (V, D), listed once in the state_dict
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, vb=head,
                              init=Normal(0.0, config.initializer_range))

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normalized hidden states (B, T, D) that lm_head turns into logits."""
        self.check_ids(idx, cache.length if cache is not None else 0)
        return self.model(idx, cache, self.fused)  # (B, T, D)

    def final_norm(self, x: Tensor) -> Tensor:
        """model.norm, fused or from core ops."""
        return norm(self.model.norm, x, self.fused)  # (B, T, D)
