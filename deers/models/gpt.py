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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..autograd import no_grad
from ..creation import host_rng, tensor
from ..device import Device
from ..dtype import DType, as_dtype, f32
from ..errors import DTypeError, ShapeError, describe
from ..fused.attention import apply_rope, apply_rope_reference, causal_attention, causal_softmax_reference
from ..fused.cross_entropy import cross_entropy_reference
from ..fused.linear_cross_entropy import linear_cross_entropy
from ..fused.rms_norm import rms_norm_reference
from ..loss import cross_entropy
from ..nn import Embedding, Linear, Module, Normal, ParamPath, ParamStore, RMSNorm
from ..ops.compare import where
from ..ops.shape import cat
from ..tensor import Tensor


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


def rope_tables(head_dim: int, sequence_len: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles, each (sequence_len, head_dim), computed in float64.

    inv_freq[j] = base^(-2j / hd) for j < hd/2; angle[t, j] = t * inv_freq[j]; the tables repeat
    the hd/2 angles twice along the last dim ([c, c]) to match rotate_half.
    """
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    angle = np.arange(sequence_len, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, hd/2)
    angle = np.concatenate([angle, angle], axis=-1)  # (T, hd)
    return np.cos(angle), np.sin(angle)


class LayerCache:
    """Keys and values of one attention layer for the positions seen so far (generation only)."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's keys and values (B, nh, T, hd); return all of them (B, nh, S + T, hd)."""
        if self.k is not None:
            k = cat([self.k, k], dim=2)  # (B, nh, S + T, hd)
            v = cat([self.v, v], dim=2)  # (B, nh, S + T, hd)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """One LayerCache per block plus the number of positions already processed."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.length = 0


class CausalSelfAttention(Module):
    """Multi-head self-attention where position t sees positions s <= t only."""

    def __init__(self, config: GPTConfig, vb: ParamPath):
        super().__init__()
        D = config.n_embd
        self.n_head = config.n_head
        self.head_dim = D // config.n_head
        self.qkv = Linear(D, 3 * D, bias=False, vb=vb.pp("qkv"), init=Normal(0.0, 0.02))  # rows q, k, v
        self.proj = Linear(D, D, bias=False, vb=vb.pp("proj"), init=Normal(0.0, 0.02))

    def heads(self, x: Tensor, cos: Tensor, sin: Tensor, fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of x (B, T, D), split into heads, q and k rotated by their positions (RoPE)."""
        B, T, D = x.shape
        nh, hd = self.n_head, self.head_dim
        qkv = self.qkv(x)  # (B, T, 3D)
        q = qkv.narrow(2, 0, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = qkv.narrow(2, D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        v = qkv.narrow(2, 2 * D, D).reshape(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        rope = apply_rope if fused else apply_rope_reference  # both: x * cos + rotate_half(x) * sin
        return rope(q, cos, sin), rope(k, cos, sin), v

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                fused: bool = True) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.heads(x, cos, sin, fused)  # (B, nh, T, hd) each
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, nh, S, hd) with S = positions cached + T
        S = k.shape[2]
        scale = 1.0 / math.sqrt(self.head_dim)
        if fused:
            # one op: the scores, the masked softmax and the sum over values in one kernel each way
            y = causal_attention(q, k, v, scale=scale)  # (B, nh, T, hd)
        else:
            att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, hd) @ (B, nh, hd, S) -> (B, nh, T, S)
            # row t is position S - T + t (the first S - T keys are cached): it sees keys s <= t + S - T
            visible = tensor(np.tril(np.ones((T, S), dtype=bool), k=S - T), device=x.device)  # (T, S)
            att = where(visible, att, float("-inf"))  # (B, nh, T, S): the future gets probability 0
            att = (att - att.logsumexp(dim=-1, keepdim=True)).exp()  # softmax: exp(a - log(sum(exp(a))))
            y = att @ v  # (B, nh, T, S) @ (B, nh, S, hd) -> (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, nh, hd) -> (B, T, D)
        return self.proj(y)

    def attention_weights(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None,
                          fused: bool = True) -> Tensor:
        """The probabilities softmax(q k^T / sqrt(hd)) that forward applies to v, (B, nh, T, S): what
        deers.diagnostics.attention_maps shows (forward itself does not keep them)."""
        q, k, _ = self.heads(x, cos, sin, fused)  # (B, nh, T, hd) each
        if cache is not None and cache.k is not None:
            k = cat([cache.k, k], dim=2)  # (B, nh, S, hd): the keys of earlier positions too
        return causal_softmax_reference(q @ k.transpose(-2, -1), scale=1.0 / math.sqrt(self.head_dim))  # (B, nh, T, S)


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
        x = x + self.attn(norm(self.norm1, x, fused), cos, sin, cache, fused=fused)  # (B, T, D)
        return x + self.mlp(norm(self.norm2, x, fused))  # (B, T, D)


def norm(module: RMSNorm, x: Tensor, fused: bool) -> Tensor:
    """RMSNorm x * rsqrt(mean(x^2) + eps) * weight over the last dim (D,): the module's fused op, or
    the same written from core ops (mul, mean, add, rsqrt, mul)."""
    return module(x) if fused else rms_norm_reference(x, module.weight, module.eps)


class GPT(Module):
    """The language model: token ids (B, T) -> next-token logits (B, T, V).

        model = GPT(GPTConfig(vocab_size=50257))
        logits = model(idx)                       # (B, T, V)
        logits, loss = model(idx, targets)        # loss: mean cross-entropy, a 0-d tensor
        out = model.generate(idx, 50, top_k=40, seed=0)
        model.fused = False                       # every block from core ops from now on

    `fused` (True by default) picks the path of every block, the final norm and the loss on
    each call; it is a plain attribute, so it can be switched on a built model.
    """

    def __init__(self, config: GPTConfig, vb: ParamPath | None = None, device: "Device | str | None" = None,
                 dtype: "DType | str" = f32, fused: bool = True):
        super().__init__()
        if vb is None:
            vb = ParamStore(device=device, dtype=as_dtype(dtype)).root()
        self.config = config
        self.fused = fused
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

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None):
        """Logits (B, T, V) for token ids idx (B, T); with targets (B, T) also the mean cross-entropy.

        With a KVCache the ids continue the positions already in the cache (generation). Training
        should call `loss`, which never builds the (B, T, V) logits.
        """
        logits = self.lm_head(self.hidden(idx, cache))  # (B, T, V)
        if targets is None:
            return logits
        self._check_targets(idx, targets)
        wide = logits.to_dtype(f32) if logits.dtype.is_half else logits  # f16 / bf16: the loss in f32
        rows, row_targets = wide.reshape(-1, wide.shape[-1]), targets.reshape(-1)  # (B*T, V), (B*T,)
        if self.fused:
            return logits, cross_entropy(rows, row_targets)  # one op: loss and dlogits in one pass
        # from core ops: log_softmax = logits - logsumexp(logits), then -log_probs[target] gathered
        return logits, cross_entropy_reference(rows, row_targets)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy of idx (B, T) against targets (B, T): a 0-d tensor.

        Same value and gradients as `forward(idx, targets)[1]`, through the fused lm_head +
        cross-entropy op, which holds the logits one chunk of rows at a time (the full (B, T, V)
        logits and their gradient are most of a training step's memory traffic). With
        `fused = False` it is `forward(idx, targets)[1]`: the full logits, then the loss from core ops.
        """
        if not self.fused:
            return self(idx, targets)[1]
        self._check_targets(idx, targets)
        x = self.hidden(idx)  # (B, T, D)
        # f16 / bf16: the lm_head GEMMs stay 16-bit (f32 accumulation), the loss comes out in f32
        return linear_cross_entropy(x, self.lm_head.weight, targets)

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normalized hidden states (B, T, D) that lm_head turns into logits."""
        start = cache.length if cache is not None else 0
        self._check_ids(idx, start)
        B, T = idx.shape
        cos = self.rope_cos[start:start + T]  # (T, hd)
        sin = self.rope_sin[start:start + T]  # (T, hd)
        x = self.wte(idx)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None, fused=self.fused)  # (B, T, D)
        if cache is not None:
            cache.length += T
        return norm(self.norm_f, x, self.fused)  # (B, T, D)

    def _check_targets(self, idx: Tensor, targets: Tensor) -> None:
        if targets.shape != idx.shape:
            raise ShapeError(f"GPT: targets {describe(targets)} must match idx {describe(idx)}")

    def _check_ids(self, idx: Tensor, start: int) -> None:
        if idx.dtype.name != "i64":
            raise DTypeError(f"GPT: token ids must be i64, got {describe(idx)}")
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ShapeError(f"GPT: token ids must be (B, T) with T >= 1, got {describe(idx)}")
        if start + idx.shape[1] > self.config.sequence_len:
            raise ShapeError(f"GPT: {start} cached + {idx.shape[1]} new positions exceed sequence_len "
                             f"{self.config.sequence_len} (ids {describe(idx)})")

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Append `max_new_tokens` sampled tokens to idx (B, T); returns (B, T + max_new_tokens) i64.

        Each step samples from softmax(logits / temperature) of the last position, restricted to
        the top_k most likely tokens when given (temperature 0 takes the argmax). The context is
        cropped to the last sequence_len tokens. With a seed the samples come from a private
        generator, so the result is the same for the same seed whatever else drew random numbers;
        without one, from deers' host generator (deers.manual_seed). A KV cache keeps the keys and
        values of earlier positions, so each step runs the model on one new token only (once the
        window is full, the cropped context is recomputed from scratch since its positions move).
        """
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        rng = np.random.default_rng(seed) if seed is not None else host_rng()
        tokens = idx.numpy().astype(np.int64)  # (B, T)
        S = self.config.sequence_len
        cache = None
        with no_grad():
            for _ in range(max_new_tokens):
                if use_cache and cache is not None and cache.length < S:
                    logits = self(tensor(tokens[:, -1:], device=idx.device), cache=cache)  # (B, 1, V)
                else:
                    cache = KVCache(self.config.n_layer) if use_cache else None
                    logits = self(tensor(tokens[:, -S:], device=idx.device), cache=cache)  # (B, T, V)
                last = logits[:, -1, :].numpy().astype(np.float64)  # (B, V)
                next_ids = sample_next(last, temperature, top_k, rng)  # (B,)
                tokens = np.concatenate([tokens, next_ids[:, None]], axis=1)  # (B, T + 1)
        return tensor(tokens, device=idx.device)


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits (B, V): argmax at temperature 0, else a draw from the tempered top_k softmax."""
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k:].min(axis=-1, keepdims=True)  # (B, 1)
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (B, V)
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random(logits.shape[0]) * cdf[:, -1]  # (B,)
    picks = [min(int(np.searchsorted(row, x, side="right")), row.shape[0] - 1) for row, x in zip(cdf, u)]
    return np.array(picks, dtype=np.int64)
