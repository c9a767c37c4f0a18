"""What the decoder models share: rotary tables, grouped-query causal attention, the KV cache,
sampling with a KV cache (`generate`), and `CausalLM`, the logits / loss / generate methods.

Deers' GPT, GPT-2, Llama, Qwen2 and Qwen3 (gpt.py, gpt2.py, llama.py) use these pieces; each model
file keeps only what makes its family different (its norms, its MLP, its projections and the
checkpoint names). Shapes in the comments: B = batch, T = new positions, S = positions cached + T,
nh = query heads, nkv = key/value heads (nkv divides nh: grouped-query attention), hd = head dim,
V = vocab size.

Two paths behind one flag, as nanoGPT keeps its explicit attention beside the flash one: every
model has a `fused` attribute (True by default, settable on a built model) that it passes down to
its blocks on each call. With `fused=False` the attention is `softmax(q k^T * scale + mask) v`
written out from core ops (`causal_probabilities`), and RoPE, RMSNorm and the loss are too: the
graph you would write by hand. With `fused=True` each of those is one op of deers/fused/.

A model that `generate` drives provides:
    model.hidden(idx, cache)  -> (B, T, D) final hidden states for ids (B, T) continuing the cache
    model.lm_head             -> a Linear (D -> V)
    model.new_cache()         -> an empty KVCache, one LayerCache per block
    model.context_len         -> the most positions the model takes (learned positions, or RoPE's limit)
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np

from ..autograd import no_grad
from ..creation import host_rng, tensor
from ..dtype import f32
from ..errors import DeersError, DTypeError, ShapeError, describe
from ..fused.attention import apply_rope, apply_rope_reference, causal_attention
from ..fused.cross_entropy import cross_entropy_reference
from ..fused.linear_cross_entropy import linear_cross_entropy
from ..fused.rms_norm import rms_norm_reference
from ..loss import cross_entropy
from ..nn import Module, RMSNorm
from ..ops.compare import where
from ..ops.shape import cat
from ..tensor import Tensor

ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedConfig(DeersError, ValueError):
    """A model config asks for something these models do not implement (named in the message)."""


# ---- rotary position embedding -------------------------------------------------------------------------
def inverse_frequencies(head_dim: int, base: float, scaling: dict | None = None) -> np.ndarray:
    """RoPE's inv_freq (hd/2,) in float64: base^(-2j / hd), optionally rescaled.

    scaling (a config's rope parameters) of type "linear" divides every frequency by `factor`;
    "llama3" (Llama 3.1+) divides the low frequencies (wavelength > original_context / low_freq_factor)
    by `factor`, keeps the high ones (wavelength < original_context / high_freq_factor) and blends
    linearly in between, as transformers' _compute_llama3_parameters does.
    """
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq  # (hd/2,)
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)  # 0 at the low edge, 1 at the high edge
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return np.where(medium, blended, scaled)
    raise UnsupportedConfig(f"RoPE: rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")


def rope_tables(head_dim: int, sequence_len: int, base: float, scaling: dict | None = None,
                start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotary angles for positions start .. start + sequence_len - 1, each
    (sequence_len, head_dim), in float64.

    angle[t, j] = t * inv_freq[j]; the tables repeat the hd/2 angles twice along the last dim
    ([c, c]) to match rotate_half (deers.fused.attention.apply_rope), as transformers' Llama does.
    """
    inv_freq = inverse_frequencies(head_dim, base, scaling)  # (hd/2,)
    positions = np.arange(start, start + sequence_len, dtype=np.float64)
    angle = positions[:, None] * inv_freq[None, :]  # (T, hd/2)
    angle = np.concatenate([angle, angle], axis=-1)  # (T, hd)
    return np.cos(angle), np.sin(angle)


class Rotary(Module):
    """The cos/sin tables of a RoPE model on its device, grown on demand (a model that allows 40,960
    positions should not hold 40,960 rows when it generates 100 tokens). No parameters; the tables
    are plain Tensors, so `to_device` moves them."""

    def __init__(self, head_dim: int, base: float, scaling: dict | None, max_positions: int, dtype, device):
        super().__init__()
        self.head_dim, self.base, self.scaling, self.max_positions = head_dim, base, scaling, max_positions
        inverse_frequencies(head_dim, base, scaling)  # an unsupported rope_type fails here, not at the first call
        self.cos = tensor(np.zeros((0, head_dim)), dtype=dtype, device=device)  # (rows, hd)
        self.sin = tensor(np.zeros((0, head_dim)), dtype=dtype, device=device)  # (rows, hd)

    def forward(self, start: int, T: int) -> tuple[Tensor, Tensor]:
        """cos and sin (T, hd) for positions start .. start + T - 1."""
        if start + T > self.max_positions:
            raise ShapeError(f"RoPE: positions up to {start + T} exceed the model's {self.max_positions}")
        have = self.cos.shape[0]
        if start + T > have:  # grow to the next power of two (at most max_positions) and keep the rows
            rows = min(self.max_positions, max(64, 1 << (start + T - 1).bit_length()))
            cos, sin = rope_tables(self.head_dim, rows - have, self.base, self.scaling, start=have)
            self.cos = cat([self.cos, tensor(cos, dtype=self.cos.dtype, device=self.cos.device)], dim=0)  # (rows, hd)
            self.sin = cat([self.sin, tensor(sin, dtype=self.sin.dtype, device=self.sin.device)], dim=0)  # (rows, hd)
        return self.cos[start:start + T], self.sin[start:start + T]  # (T, hd) each


def rope(x: Tensor, cos: Tensor, sin: Tensor, fused: bool = True) -> Tensor:
    """Rotate x (..., T, hd) by the tables cos, sin (T, hd): x * cos + rotate_half(x) * sin, as one
    fused op, or written from core ops (narrow, neg, cat, mul, add)."""
    return apply_rope(x, cos, sin) if fused else apply_rope_reference(x, cos, sin)


def norm(module: RMSNorm, x: Tensor, fused: bool = True) -> Tensor:
    """RMSNorm x * rsqrt(mean(x^2) + eps) * weight over the last dim: the module's fused op, or the
    same written from core ops (mul, mean, add, rsqrt, mul). (LayerNorm is core ops already.)"""
    return module(x) if fused else rms_norm_reference(x, module.weight, module.eps)


# ---- the KV cache --------------------------------------------------------------------------------------
class LayerCache:
    """Keys and values of one attention layer for the positions seen so far (generation only)."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this call's keys and values (B, nkv, T, hd); return all of them (B, nkv, S + T, hd)."""
        if self.k is not None:
            k = cat([self.k, k], dim=2)  # (B, nkv, S + T, hd)
            v = cat([self.v, v], dim=2)  # (B, nkv, S + T, hd)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """One LayerCache per block plus the number of positions already processed."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]
        self.length = 0


# ---- attention -----------------------------------------------------------------------------------------
def causal_probabilities(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) from core ops: q (..., T, hd), k (..., S, hd) -> p (..., T, S).

    The attention a learner writes by hand (what `fused=False` runs; the fused CausalAttention op
    computes the same in one kernel). Row t is position S - T + t: the first S - T keys come from
    the KV cache, so row t sees keys s <= t + S - T (in training S = T: the lower triangle).
    """
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, hd) @ (..., hd, S) -> (..., T, S)
    visible = tensor(np.tril(np.ones((T, S), dtype=bool), k=S - T), device=q.device)  # (T, S)
    scores = where(visible, scores, float("-inf"))  # (..., T, S): the future gets probability 0
    return (scores - scores.logsumexp(dim=-1, keepdim=True)).exp()  # softmax: exp(a - log(sum(exp(a))))


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale + mask) v from core ops: q (..., T, hd), k and v (..., S, hd) -> (..., T, hd)."""
    return causal_probabilities(q, k, scale) @ v  # (..., T, S) @ (..., S, hd) -> (..., T, hd)


def group_heads(q: Tensor, k: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Grouped-query attention's layout: nh query heads share nkv key/value heads, nh / nkv to a group.

    q (B, nh, T, hd) -> (B, nkv, group, T, hd): heads h = g * group + r, so query head h reads
    key/value head h // group, as transformers' repeat_kv arranges it; k and v (B, nkv, S, hd) ->
    (B, nkv, 1, S, hd), broadcast over the group (no copy). With nkv == nh: unchanged.
    """
    B, nh, T, hd = q.shape
    nkv = k.shape[1]
    if nh % nkv:
        raise ShapeError(f"attention: {nkv} key/value heads must divide {nh} query heads "
                         f"(q {describe(q)}, k {describe(k)})")
    if nkv == nh:
        return q, k, v
    q = q.reshape(B, nkv, nh // nkv, T, hd)  # (B, nkv, group, T, hd)
    k = k.unsqueeze(2)  # (B, nkv, 1, S, hd)
    v = v.unsqueeze(2) if v is not None else None  # (B, nkv, 1, S, hd)
    return q, k, v


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, fused: bool = True) -> Tensor:
    """Causal attention where nh query heads share nkv key/value heads (see group_heads).

    q (B, nh, T, hd), k and v (B, nkv, S, hd) -> (B, nh, T, hd). fused: one CausalAttention op;
    else explicit_attention, the same from core ops. With nkv == nh it is plain multi-head.
    """
    B, nh, T, hd = q.shape
    attention = causal_attention if fused else explicit_attention
    if k.shape[1] == nh:
        return attention(q, k, v, scale)  # (B, nh, T, hd)
    q, k, v = group_heads(q, k, v)  # (B, nkv, group, T, hd), (B, nkv, 1, S, hd) twice
    y = attention(q, k, v, scale)  # (B, nkv, group, T, hd)
    return y.reshape(B, nh, T, hd)


def attend(q: Tensor, k: Tensor, v: Tensor, cache: LayerCache | None, scale: float, fused: bool = True) -> Tensor:
    """The attention of one layer after its projections and RoPE: keys and values go into the cache,
    then every query sees the keys up to its own position.

    q (B, nh, T, hd), k and v (B, nkv, T, hd) -> y (B, T, nh * hd), ready for the output projection.
    """
    B, nh, T, hd = q.shape
    if cache is not None:
        k, v = cache.extend(k, v)  # (B, nkv, S, hd), S = positions cached + T
    # softmax(scale q k^T) v, query t seeing keys s <= t + S - T: (B, nh, T, S) scores, (B, nh, T, hd) out
    y = grouped_attention(q, k, v, scale, fused)
    return y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, nh, hd) -> (B, T, nh * hd)


def attention_weights(q: Tensor, k: Tensor, cache: LayerCache | None, scale: float) -> Tensor:
    """The probabilities (B, nh, T, S) that `attend` applies to v, for deers.diagnostics.attention_maps
    (attend itself does not keep them). q (B, nh, T, hd), k (B, nkv, T, hd) after RoPE; the cache
    is read, not extended."""
    B, nh, T, hd = q.shape
    if cache is not None and cache.k is not None:
        k = cat([cache.k, k], dim=2)  # (B, nkv, S, hd): the keys of earlier positions too
    S = k.shape[2]
    q, k, _ = group_heads(q, k)  # (B, nkv, group, T, hd), (B, nkv, 1, S, hd)
    return causal_probabilities(q, k, scale).reshape(B, nh, T, S)  # (B, nkv, group, T, S) -> (B, nh, T, S)


# ---- sampling ------------------------------------------------------------------------------------------
def filter_logits(logits: np.ndarray, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> np.ndarray:
    """logits (B, V) / temperature, with -inf outside the top_k largest, then outside the top_p nucleus
    (the smallest set of the most likely tokens whose probabilities sum to at least top_p). The order
    (temperature, top_k, top_p) and the rules at ties are transformers' logits warpers'."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k:].min(axis=-1, keepdims=True)  # (B, 1)
        logits = np.where(logits < kth, -np.inf, logits)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(logits, axis=-1, kind="stable")  # ascending, (B, V)
        ascending = np.take_along_axis(logits, order, axis=-1)  # (B, V)
        probs = np.exp(ascending - ascending[:, -1:])
        cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)  # (B, V)
        drop = cumulative <= 1.0 - top_p  # the unlikely tail whose mass is at most 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        removed = np.zeros_like(drop)
        np.put_along_axis(removed, order, drop, axis=-1)  # back to vocabulary order
        logits = np.where(removed, -np.inf, logits)
    return logits


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator,
                top_p: float | None = None) -> np.ndarray:
    """One token id per row of logits (B, V): argmax at temperature 0, else a draw from the softmax of
    filter_logits (temperature, then top_k, then top_p)."""
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    logits = filter_logits(logits, temperature, top_k, top_p)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))  # (B, V)
    cdf = np.cumsum(probs, axis=-1)  # (B, V)
    u = rng.random(logits.shape[0]) * cdf[:, -1]  # (B,)
    picks = [min(int(np.searchsorted(row, x, side="right")), row.shape[0] - 1) for row, x in zip(cdf, u)]
    return np.array(picks, dtype=np.int64)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError for a sampling setting that means nothing."""
    if not temperature >= 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p}")


class Timing:
    """Seconds spent in the first forward (the prompt: prefill) and in the later ones (decode)."""

    def __init__(self):
        self.prefill_s = self.decode_s = 0.0
        self.prefill_tokens = self.decode_tokens = 0


def stream(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, eos_token_id: "int | list[int] | None" = None,
           use_cache: bool = True, timing: Timing | None = None) -> Iterator[np.ndarray]:
    """Yield the next token id of every row (B,) int64, one step at a time (see `generate`)."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if idx.dtype.name != "i64" or idx.ndim != 2 or idx.shape[1] < 1:
        raise ShapeError(f"generate: token ids must be i64 (B, T) with T >= 1, got {describe(idx)}")
    eos = None if eos_token_id is None else np.atleast_1d(np.asarray(eos_token_id, dtype=np.int64))
    rng = np.random.default_rng(seed) if seed is not None else host_rng()
    tokens = idx.numpy().astype(np.int64)  # (B, T)
    finished = np.zeros(tokens.shape[0], dtype=bool)  # rows that produced an eos token
    S = model.context_len
    cache = None
    with no_grad():
        for _ in range(max_new_tokens):
            start = time.perf_counter()
            if use_cache and cache is not None and cache.length < S:
                ids = tokens[:, -1:]  # (B, 1): the keys and values of the rest are cached
            else:  # first step, no cache, or the window is full (positions move: recompute from scratch)
                cache = model.new_cache() if use_cache else None
                ids = tokens[:, -S:]  # (B, T)
            h = model.hidden(tensor(ids, device=idx.device), cache)  # (B, T, D)
            last = model.lm_head(h[:, -1:, :])[:, 0, :].numpy().astype(np.float64)  # (B, V)
            next_ids = sample_next(last, temperature, top_k, rng, top_p)  # (B,)
            if eos is not None:
                next_ids = np.where(finished, eos[0], next_ids)  # finished rows are padded with eos
                finished |= np.isin(next_ids, eos)
            if timing is not None:
                seconds = time.perf_counter() - start
                if ids.shape[1] > 1 or timing.prefill_tokens == 0:
                    timing.prefill_s += seconds
                    timing.prefill_tokens += ids.size
                else:
                    timing.decode_s += seconds
                    timing.decode_tokens += ids.size
            tokens = np.concatenate([tokens, next_ids[:, None]], axis=1)  # (B, T + 1)
            yield next_ids
            if eos is not None and finished.all():
                return


def generate(model, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, eos_token_id: "int | list[int] | None" = None,
             use_cache: bool = True) -> Tensor:
    """Append up to `max_new_tokens` sampled tokens to idx (B, T); returns (B, T + n) i64.

    Each step samples from softmax(logits / temperature) of the last position, restricted to the
    top_k most likely tokens, then to the top_p nucleus, when given (temperature 0: the argmax).
    n = max_new_tokens exactly, unless eos_token_id (an id or a list of ids) is given: then the
    rows that produced it are padded with it and generation stops once every row has, as in
    transformers. The context is cropped to the last `model.context_len` tokens. With a seed the
    samples come from a private generator; without one, from deers' host generator
    (deers.manual_seed). The KV cache keeps the keys and values of earlier positions, so the prompt
    is run once (prefill) and each later step runs the model on one new token (decode).
    """
    rows = [idx.numpy().astype(np.int64)]
    for next_ids in stream(model, idx, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id, use_cache):
        rows.append(next_ids[:, None])
    return tensor(np.concatenate(rows, axis=1), device=idx.device)  # (B, T + n)


# ---- the language-model head every family shares --------------------------------------------------------
class CausalLM(Module):
    """The part of a decoder-only language model that does not depend on its family: logits, the loss,
    generation. A subclass sets `self.lm_head` (a Linear D -> V), `self.n_layer`, `self.context_len`
    (and names its config field in `context_field`), and implements `hidden(idx, cache)`, the final
    normalized hidden states (B, T, D), and `final_norm(x)`, the norm that ends `hidden`.

    `fused` (True by default; a plain attribute, so it can be switched on a built model) picks the
    path of every block, the final norm and the loss on each call: one fused op each, or the same
    from core ops (see the module docstring). Both give the same logits, loss and gradients.
    """

    lm_head: Module
    n_layer: int
    context_len: int
    fused: bool = True
    context_field = "the context length"  # the config field that sets context_len, for error messages

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.hidden")

    def final_norm(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.final_norm")

    def logits_from_hidden(self, h: Tensor) -> Tensor:
        """Logits (B, T, V) of any block's output h (B, T, D): the final norm, then lm_head (the
        readout deers.diagnostics.logit_lens applies to every layer)."""
        return self.lm_head(self.final_norm(h))

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None):
        """Logits (B, T, V) for token ids idx (B, T); with targets (B, T) also the mean cross-entropy.

        With a KVCache the ids continue the positions already in the cache (generation). Training
        should call `loss`, which never builds the (B, T, V) logits.
        """
        logits = self.lm_head(self.hidden(idx, cache))  # (B, T, V)
        if targets is None:
            return logits
        self.check_targets(idx, targets)
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
        self.check_targets(idx, targets)
        if getattr(self.lm_head, "bias", None) is not None:
            raise ShapeError(f"{type(self).__name__}.loss: the fused loss takes an lm_head without bias")
        # f16 / bf16: the lm_head GEMMs stay 16-bit (f32 accumulation), the loss comes out in f32
        return linear_cross_entropy(self.hidden(idx), self.lm_head.weight, targets)

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model (one LayerCache per block)."""
        return KVCache(self.n_layer)

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 eos_token_id: "int | list[int] | None" = None, use_cache: bool = True) -> Tensor:
        """Append up to `max_new_tokens` sampled tokens to idx (B, T): see deers.models.shared.generate."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, seed, eos_token_id, use_cache)

    def check_ids(self, idx: Tensor, start: int) -> None:
        """DTypeError / ShapeError unless idx is i64 (B, T), T >= 1, and fits after `start` cached positions."""
        name = type(self).__name__
        if idx.dtype.name != "i64":
            raise DTypeError(f"{name}: token ids must be i64, got {describe(idx)}")
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ShapeError(f"{name}: token ids must be (B, T) with T >= 1, got {describe(idx)}")
        if start + idx.shape[1] > self.context_len:
            raise ShapeError(f"{name}: {start} cached + {idx.shape[1]} new positions exceed {self.context_field} "
                             f"{self.context_len} (ids {describe(idx)})")

    def check_targets(self, idx: Tensor, targets: Tensor) -> None:
        if targets.shape != idx.shape:
            raise ShapeError(f"{type(self).__name__}: targets {describe(targets)} must match idx {describe(idx)}")
