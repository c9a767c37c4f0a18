"""`fused=False` for the loaded families: GPT-2, Llama, Qwen2 and Qwen3 from core ops give what the fused
models give, and their graphs hold no fused op.

The same checks as tests/test_gpt_core_path.py does for Deers' GPT, on the tiny random transformers
models of tests/hf_tiny_models.py loaded in float64: logits, both losses, every gradient, the KV
cache and greedy samples agree; the core path's graph (and its backend calls) have no fused op.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the tiny pretrained models are built with transformers (needs torch)")
pytest.importorskip("transformers", reason="the tiny pretrained models are built with transformers "
                    "(an optional test dependency: pip install transformers)")
pytest.importorskip("safetensors", reason="transformers writes the test models with safetensors")

import deers  # noqa: E402
from deers.models import GPT2, GPT2Config, Llama, LlamaConfig, from_pretrained  # noqa: E402
from hf_tiny_models import FAMILIES, VOCAB, build, save  # noqa: E402
from test_gpt_core_path import graph_ops, is_fused, refuse_fused_primitives  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_core")
    return {family: save(build(family, seed=10 + i), root / family) for i, family in enumerate(FAMILIES)}


def twins(folder):
    """The same f64 model twice: fused (the default) and switched to core ops on the built model."""
    fused, core = from_pretrained(folder, dtype="f64"), from_pretrained(folder, dtype="f64")
    assert fused.fused is True
    core.fused = False
    return fused, core


def ids(shape, seed=0) -> deers.Tensor:
    return deers.tensor(np.random.default_rng(seed).integers(0, VOCAB, shape))


def test_fused_is_a_constructor_argument_too():
    assert GPT2(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2), fused=False).fused is False
    config = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8)
    assert Llama(config).fused is True and Llama(config, fused=False).fused is False


@pytest.mark.parametrize("family", FAMILIES)
def test_core_and_fused_agree_in_f64_and_the_core_graph_has_no_fused_op(folders, family):
    fused, core = twins(folders[family])
    x, y = ids((2, 7)), ids((2, 7), seed=1)
    logits_f, loss_f = fused(x, y)
    logits_c, loss_c = core(x, y)
    np.testing.assert_allclose(logits_c.numpy(), logits_f.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(loss_c.item(), loss_f.item(), rtol=1e-12)
    core_loss = core.loss(x, y)
    np.testing.assert_allclose(core_loss.item(), fused.loss(x, y).item(), rtol=1e-12)
    for loss in (loss_c, core_loss):
        assert not [op.name for op in graph_ops(loss) if is_fused(op)]
    assert any(is_fused(op) for op in graph_ops(loss_f))  # the check can fail
    grads_f, grads_c = fused.loss(x, y).backward(), core_loss.backward()
    params_c = dict(core.named_parameters())
    for name, p in fused.named_parameters():
        np.testing.assert_allclose(grads_c[params_c[name]].numpy(), grads_f[p].numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=name)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_core_kv_cache_and_greedy_samples(folders, family):
    fused, core = twins(folders[family])
    x = ids((2, 8), seed=2)
    full = fused(x).numpy()
    cache = core.new_cache()
    parts = [core(x[:, :5], cache=cache).numpy()] + [core(x[:, t:t + 1], cache=cache).numpy() for t in range(5, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(core.generate(x[:, :3], 5, temperature=0).numpy(),
                                  fused.generate(x[:, :3], 5, temperature=0).numpy())


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_the_core_path_never_calls_a_fused_primitive(folders, family, monkeypatch):
    _, core = twins(folders[family])
    x, y = ids((2, 6), seed=3), ids((2, 6), seed=4)
    refuse_fused_primitives(monkeypatch)
    core.loss(x, y).backward()
    core.generate(x[:, :2], 3, temperature=0.0)
    core.fused = True
    with pytest.raises(AssertionError, match="fused primitive"):
        core.loss(x, y)  # the check can fail
