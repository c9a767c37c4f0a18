"""The GPT of deers.models.gpt: names and shapes, its fused pieces, causality, RoPE, gradients, generation."""
import math

import numpy as np
import pytest

import deers
from deers.models.gpt import GPT, GPTConfig, KVCache, rope_tables
from deers.models.shared import sample_next
from deers.fused.attention import apply_rope, causal_attention, causal_softmax
from deers.fused.rms_norm import rms_norm
from helpers import check_op, rand

TINY = dict(vocab_size=11, sequence_len=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=12)


def tiny_gpt(seed: int = 0, dtype="f64", **overrides) -> GPT:
    deers.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides}), dtype=dtype)


def ids(shape, high=11, seed=0) -> deers.Tensor:
    return deers.tensor(np.random.default_rng(seed).integers(0, high, shape))


# ---- the fused ops ------------------------------------------------------------------------------------
def test_rms_norm_op_forward_and_backward():
    def reference(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w

    check_op(lambda x, w: rms_norm(x, w, 1e-5), rand(3, 4, 6), rand(6, seed=1), reference=reference,
             torch_fn=lambda x, w: x * (x.pow(2).mean(-1, keepdim=True) + 1e-5).rsqrt() * w)


def test_rms_norm_op_errors_name_the_operands():
    x = deers.randn(2, 6)
    with pytest.raises(deers.ShapeError, match=r"rms_norm: weight shape \(5,\)"):
        rms_norm(x, deers.ones(5))
    with pytest.raises(deers.DTypeError, match="rms_norm: .* f64"):
        rms_norm(x, deers.ones(6, dtype="f64"))


def _rotate_half_np(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def test_rope_op_forward_and_backward():
    cos, sin = rope_tables(6, 5, 10000.0)
    check_op(lambda x: apply_rope(x, deers.from_numpy(cos), deers.from_numpy(sin)), rand(2, 3, 5, 6),
             reference=lambda x: x * cos + _rotate_half_np(x) * sin,
             torch_fn=lambda x: x * _torch().tensor(cos) + _torch().cat([-x[..., 3:], x[..., :3]], -1)
             * _torch().tensor(sin))


def test_rope_matches_the_per_position_rotation_formula():
    hd, T, base = 8, 7, 500.0
    x = np.random.default_rng(0).standard_normal((2, 3, T, hd))
    cos, sin = rope_tables(hd, T, base)
    y = apply_rope(deers.from_numpy(x), deers.from_numpy(cos), deers.from_numpy(sin)).numpy()
    expected = np.empty_like(x)
    half = hd // 2
    for t in range(T):
        for j in range(half):  # the pair (j, j + hd/2) turns by the angle t * base^(-2j/hd)
            angle = t * base ** (-2.0 * j / hd)
            a, b = x[..., t, j], x[..., t, j + half]
            expected[..., t, j] = a * math.cos(angle) - b * math.sin(angle)
            expected[..., t, j + half] = b * math.cos(angle) + a * math.sin(angle)
    np.testing.assert_allclose(y, expected, atol=1e-12)


def test_rope_scores_depend_only_on_the_relative_position():
    hd, T = 8, 9
    cos, sin = (deers.from_numpy(t) for t in rope_tables(hd, T, 10000.0))
    q0, k0 = np.random.default_rng(1).standard_normal((2, hd))
    q = apply_rope(deers.from_numpy(np.tile(q0, (T, 1))), cos, sin).numpy()  # the same vector at every position
    k = apply_rope(deers.from_numpy(np.tile(k0, (T, 1))), cos, sin).numpy()
    scores = q @ k.T  # (T, T)
    for offset in range(-T + 1, T):
        diagonal = np.diagonal(scores, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-12)


def test_causal_softmax_op_forward_and_backward():
    mask = np.triu(np.full((4, 4), -np.inf), k=1)

    def reference(s):
        z = s * 0.5 + mask
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    check_op(lambda s: causal_softmax(s, 0.5), rand(2, 3, 4, 4), reference=reference,
             torch_fn=lambda s: (s * 0.5 + _torch().tensor(mask)).softmax(-1))


def _attention_np(q, k, v, scale):
    """softmax(scale q k^T) v with row t seeing keys s <= t + S - T, in NumPy."""
    t, s = q.shape[-2], k.shape[-2]
    mask = np.where(np.arange(s)[None, :] > np.arange(t)[:, None] + (s - t), -np.inf, 0.0)
    return _softmax_np(scale * q @ np.swapaxes(k, -1, -2) + mask) @ v


def test_causal_attention_op_forward_and_backward():
    q, k, v = rand(2, 3, 5, 4), rand(2, 3, 5, 4, seed=1), rand(2, 3, 5, 3, seed=2)
    check_op(lambda q, k, v: causal_attention(q, k, v, 0.5), q, k, v,
             reference=lambda q, k, v: _attention_np(q, k, v, 0.5),
             torch_fn=lambda q, k, v: _torch().nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                          scale=0.5))


@pytest.mark.parametrize("t,s", [(100, 100), (100, 107)], ids=["two-blocks", "cached"])
def test_causal_attention_op_over_query_blocks_and_cached_keys(t, s):
    """T = 100 is two query blocks on the CPU; S > T puts S - T cached keys before the queries'."""
    q, k, v = rand(1, 1, t, 2), rand(1, 1, s, 2, seed=1), rand(1, 1, s, 2, seed=2)
    check_op(lambda q, k, v: causal_attention(q, k, v, 0.7), q, k, v,
             reference=lambda q, k, v: _attention_np(q, k, v, 0.7), layouts=("contiguous", "permuted"),
             torch_fn=lambda q, k, v: _torch().nn.functional.scaled_dot_product_attention(
                 q, k, v, attn_mask=_torch().from_numpy(np.arange(s)[None, :] <= np.arange(t)[:, None] + s - t),
                 scale=0.7))


def test_causal_attention_broadcasts_batch_dims():
    q = rand(2, 3, 6, 4)
    k, v = rand(1, 3, 6, 4, seed=1), rand(3, 6, 4, seed=2)  # one k and v for every batch element
    mask = np.triu(np.full((6, 6), -np.inf), k=1)
    check_op(lambda q, k, v: causal_attention(q, k, v), q, k, v, layouts=("contiguous",),
             reference=lambda q, k, v: _attention_np(q, k, v, 0.5),
             torch_fn=lambda q, k, v: ((q @ k.transpose(-2, -1)) * 0.5 + _torch().from_numpy(mask)).softmax(-1) @ v)


def _torch():
    import torch

    return torch


# ---- the model ------------------------------------------------------------------------------------------
def test_parameter_names_shapes_and_init_follow_the_design():
    config = GPTConfig(vocab_size=300, sequence_len=16, n_layer=2, n_head=4, n_embd=32, mlp_hidden_dim=80)
    deers.manual_seed(0)
    model = GPT(config)
    D, H, V = 32, 80, 300
    expected = [("wte.weight", (V, D))]
    for i in range(2):
        expected += [(f"blocks.{i}.norm1.weight", (D,)), (f"blocks.{i}.attn.qkv.weight", (3 * D, D)),
                     (f"blocks.{i}.attn.proj.weight", (D, D)), (f"blocks.{i}.norm2.weight", (D,)),
                     (f"blocks.{i}.mlp.fc.weight", (H, D)), (f"blocks.{i}.mlp.proj.weight", (D, H))]
    expected += [("norm_f.weight", (D,)), ("lm_head.weight", (V, D))]
    assert [(name, p.shape) for name, p in model.named_parameters()] == expected
    assert list(model.state_dict()) == [name for name, _ in expected]
    for name, p in model.named_parameters():
        values = p.numpy()
        assert p.dtype is deers.f32
        if p.ndim == 1:
            np.testing.assert_array_equal(values, 1.0)
        else:
            assert abs(values.mean()) < 0.002 and abs(values.std() - 0.02) < 0.002, name
    assert not np.allclose(model.wte.weight.numpy(), model.lm_head.weight.numpy())  # untied
    assert model.num_parameters() == 2 * V * D + 2 * (2 * D + 4 * D * D + 2 * D * H) + D


def test_default_config_is_the_headline_model():
    config = GPTConfig()
    assert (config.vocab_size, config.sequence_len, config.n_layer, config.n_head, config.n_embd,
            config.mlp_hidden_dim, config.rms_norm_eps, config.rope_base) == (50257, 256, 6, 6, 192, 768, 1e-5, 10000.0)
    with pytest.raises(ValueError, match="heads"):
        GPTConfig(n_embd=10, n_head=4)


def test_forward_shapes_and_loss():
    model = tiny_gpt(dtype="f32")
    x, y = ids((3, 8)), ids((3, 8), seed=1)
    logits = model(x)
    assert logits.shape == (3, 8, 11) and logits.dtype is deers.f32
    logits2, loss = model(x, y)
    assert loss.shape == () and loss.dtype is deers.f32
    np.testing.assert_array_equal(logits2.numpy(), logits.numpy())
    # at init the logits are nearly uniform: the loss is about ln(V)
    assert abs(loss.item() - math.log(11)) < 0.1
    assert model(ids((2, 3))).shape == (2, 3, 11)  # shorter than sequence_len


def test_bad_inputs_raise_deers_errors():
    model = tiny_gpt(dtype="f32")
    with pytest.raises(deers.DTypeError, match="GPT: token ids must be i64"):
        model(deers.zeros(2, 4))
    with pytest.raises(deers.ShapeError, match="exceed sequence_len 8"):
        model(ids((1, 9)))
    with pytest.raises(deers.ShapeError, match="targets"):
        model(ids((2, 4)), ids((2, 5)))
    with pytest.raises(IndexError):
        model(deers.tensor([[0, 11]]))


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny_gpt()
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    base = model(deers.tensor(x)).numpy()
    for t in range(7):
        changed = x.copy()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + t) % 11
        logits = model(deers.tensor(changed)).numpy()
        np.testing.assert_allclose(logits[:, :t + 1], base[:, :t + 1], atol=1e-12)
        assert not np.allclose(logits[:, t + 1:], base[:, t + 1:])  # and the future ones do change


def test_loss_gradients_match_finite_differences_in_f64():
    model = tiny_gpt(seed=3)
    x, y = ids((2, 6)), ids((2, 6), seed=1)
    _, loss = model(x, y)
    grads = loss.backward()
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name, p in model.named_parameters():
        analytic = grads[p].numpy()
        assert analytic.shape == p.shape
        original = p.numpy()
        flat_ids = rng.choice(original.size, size=min(3, original.size), replace=False)
        for flat in flat_ids:
            k = np.unravel_index(flat, original.shape)
            values = []
            for sign in (1, -1):
                shifted = original.copy()
                shifted[k] += sign * eps
                p.set_data(deers.from_numpy(shifted))
                values.append(model(x, y)[1].item())
            p.set_data(deers.from_numpy(original))
            numeric = (values[0] - values[1]) / (2 * eps)
            assert abs(numeric - analytic[k]) < 1e-7 + 1e-5 * abs(numeric), (name, k, numeric, analytic[k])


def test_kv_cache_gives_the_full_forward_logits():
    model = tiny_gpt(seed=1)
    x = ids((2, 8))
    full = model(x).numpy()
    cache = KVCache(model.config.n_layer)
    parts = [model(x[:, :3], cache=cache).numpy()]
    for t in range(3, 8):
        parts.append(model(x[:, t:t + 1], cache=cache).numpy())
    assert cache.length == 8
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)
    with pytest.raises(deers.ShapeError, match="8 cached"):
        model(x[:, :1], cache=cache)


def test_generate_is_deterministic_for_a_seed():
    model = tiny_gpt(seed=2, dtype="f32")
    prompt = ids((2, 3))
    a = model.generate(prompt, 12, seed=7).numpy()
    deers.manual_seed(123)  # the global generators do not matter when a seed is given
    b = model.generate(prompt, 12, seed=7).numpy()
    c = model.generate(prompt, 12, seed=8).numpy()
    assert a.shape == (2, 15) and a.dtype == np.int64
    np.testing.assert_array_equal(a[:, :3], prompt.numpy())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 11


def test_generate_crops_the_context_and_the_cache_changes_nothing():
    model = tiny_gpt(seed=4)
    prompt = ids((1, 5))
    greedy = model.generate(prompt, 10, temperature=0.0).numpy()  # runs past sequence_len 8
    assert greedy.shape == (1, 15)
    np.testing.assert_array_equal(model.generate(prompt, 10, temperature=0.0, use_cache=False).numpy(), greedy)
    np.testing.assert_array_equal(model.generate(prompt, 10, top_k=1, seed=0).numpy(), greedy)
    sampled = model.generate(prompt, 10, temperature=0.9, top_k=3, seed=5).numpy()
    np.testing.assert_array_equal(model.generate(prompt, 10, temperature=0.9, top_k=3, seed=5, use_cache=False)
                                  .numpy(), sampled)
    # by hand: the step after the window is full sees the last sequence_len tokens only
    last = model(deers.tensor(greedy[:, -9:-1])).numpy()[0, -1]
    assert greedy[0, -1] == last.argmax()


def test_generate_top_p_and_eos_token_id():
    """The GPT samples with the shared sampler: top_p keeps the nucleus (a tiny top_p is greedy), and
    rows that produced eos_token_id are padded with it until every row has (transformers' rules)."""
    model = tiny_gpt(seed=5, dtype="f32")
    prompt = ids((2, 3), seed=1)
    greedy = model.generate(prompt, 5, temperature=0.0).numpy()
    np.testing.assert_array_equal(model.generate(prompt, 5, top_p=1e-6, seed=0).numpy(), greedy)
    nucleus = model.generate(prompt, 5, temperature=1.5, top_p=0.5, seed=3).numpy()
    np.testing.assert_array_equal(model.generate(prompt, 5, temperature=1.5, top_p=0.5, seed=3, use_cache=False)
                                  .numpy(), nucleus)
    eos = int(greedy[0, 4])  # the first row's second new token
    out = model.generate(prompt, 5, temperature=0.0, eos_token_id=eos).numpy()
    assert out.shape[1] <= greedy.shape[1]
    np.testing.assert_array_equal(out[0, 3:5], greedy[0, 3:5])
    assert (out[0, 5:] == eos).all()
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, top_p=0.0)


def test_sample_next_respects_top_k_and_temperature():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, 1.0, 5.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    picks = np.stack([sample_next(logits, 1.0, 2, rng) for _ in range(200)])  # (200, 2)
    assert set(picks[:, 0]) == {2, 3} and set(picks[:, 1]) <= {0, 1, 2, 3}
    assert (picks[:, 0] == 2).mean() > 0.8  # e^5 vs e^2
    np.testing.assert_array_equal(sample_next(logits, 0.0, None, rng), [2, 0])
    cold = np.stack([sample_next(logits, 0.05, None, rng) for _ in range(50)])
    assert (cold == [2, 0]).all()


def test_to_device_keeps_the_constant_tables_with_the_parameters():
    model = tiny_gpt(dtype="f32")
    model.to_device("cpu")
    assert model.rope_cos.device == "cpu" and model.rope_sin.shape == (8, 4)
    assert "rope_cos" not in model.state_dict() and len(model.parameters()) == 3 + 6 * 2


def test_a_tiny_gpt_learns_a_generated_corpus():
    """120 AdamW steps on character-level stories from a small grammar bring the loss far below ln(V)."""
    from deers.dataset import TokenBinDataset
    from deers.optim import AdamW, LRSchedule, clip_grad_norm

    rng = np.random.default_rng(0)
    names, verbs = ["lily", "tom", "ben", "mia"], ["runs", "sings", "jumps", "plays"]
    text = " ".join(f"{rng.choice(names)} {rng.choice(verbs)} with the {rng.choice(['cat', 'dog'])}."
                    for _ in range(300))
    alphabet = sorted(set(text))
    tokens = np.array([alphabet.index(c) for c in text], dtype=np.uint16)
    deers.manual_seed(0)
    data = TokenBinDataset(tokens, seq_len=24)
    model = GPT(GPTConfig(vocab_size=len(alphabet), sequence_len=24, n_layer=2, n_head=2, n_embd=32,
                          mlp_hidden_dim=64))
    optimizer = AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = LRSchedule(1e-2, 120, warmup=10, warmdown=30)
    losses = []
    for step in range(120):
        inputs, targets = data.sample_batch(8)
        _, loss = model(inputs, targets)
        grads = loss.backward()
        clip_grad_norm(model.parameters(), grads, 1.0)
        optimizer.set_lr(schedule(step))
        optimizer.step_with_grads(grads)
        losses.append(loss.item())
    assert abs(losses[0] - math.log(len(alphabet))) < 0.2
    assert np.mean(losses[-20:]) < 0.25 * math.log(len(alphabet)), np.mean(losses[-20:])


@pytest.mark.parametrize("offset", [0, 3, 37])
def test_causal_softmax_with_cached_positions_matches_the_masked_dense_one(offset):
    """Row t sees s <= t + S - T (S - T positions from a KV cache); blocks of rows, the last partial."""
    t, s = 40, 40 + offset
    mask = np.where(np.arange(s)[None, :] > np.arange(t)[:, None] + offset, -np.inf, 0.0)
    scores_np = np.random.default_rng(0).standard_normal((2, 1, t, s))
    check_op(lambda x: causal_softmax(x, 0.5), scores_np,
             reference=lambda x: _softmax_np(x * 0.5 + mask), layouts=("contiguous", "permuted"),
             torch_fn=lambda x: (x * 0.5 + __import__("torch").from_numpy(mask)).softmax(-1))


def _softmax_np(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
