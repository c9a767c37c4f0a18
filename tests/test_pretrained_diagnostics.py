"""deers.diagnostics on the loaded families: attention maps of GPT-2, Llama, Qwen2 and Qwen3 equal
transformers' own attention weights (output_attentions=True with the eager attention), and the logit
lens' last layer is the model's own prediction."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the tiny pretrained models are built with transformers (needs torch)")
pytest.importorskip("transformers", reason="the tiny pretrained models are built with transformers "
                    "(an optional test dependency: pip install transformers)")
pytest.importorskip("safetensors", reason="transformers writes the test models with safetensors")

import deers  # noqa: E402
from deers.diagnostics import attention_maps, blocks_of, logit_lens  # noqa: E402
from deers.models import from_pretrained  # noqa: E402
from hf_tiny_models import FAMILIES, VOCAB, build, save  # noqa: E402

IDS = np.random.default_rng(5).integers(0, VOCAB, (2, 9))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (transformers model with the eager attention, the Deers model loaded from its folder)."""
    root = tmp_path_factory.mktemp("hf_diag")
    out = {}
    for i, family in enumerate(FAMILIES):
        hf = build(family, seed=20 + i)
        hf.set_attn_implementation("eager")  # the sdpa attention returns no weights
        out[family] = (hf, from_pretrained(save(hf, root / family)))
    return out


def no_hooks_left(model):
    return all(m._hooks is None or (not m._hooks.pre and not m._hooks.post) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_equal_transformers_attention_weights(tiny, family):
    hf, model = tiny[family]
    maps = attention_maps(model, deers.tensor(IDS))
    with torch.no_grad():
        want = [a.numpy() for a in hf(torch.tensor(IDS), output_attentions=True).attentions]
    B, T = IDS.shape
    assert len(maps) == len(want) == len(blocks_of(model))
    for got, expected in zip(maps, want):
        p = got.numpy()
        assert p.shape == expected.shape and p.shape[0] == B and p.shape[2:] == (T, T)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)  # each row a distribution
        assert (p[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0).all()  # causal zeros
        np.testing.assert_allclose(p, expected, atol=1e-5)
    assert no_hooks_left(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_last_layer_is_the_models_prediction(tiny, family):
    _, model = tiny[family]
    layers = logit_lens(model, deers.tensor(IDS), top=3)
    assert len(layers) == len(blocks_of(model)) + 1  # the embeddings, then each block's output
    probs = model(deers.tensor(IDS)).softmax(dim=-1).numpy()[0]  # (T, V) of the first row
    top_ids = np.argsort(-probs, axis=-1)[:, :3]  # (T, 3)
    for t, row in enumerate(layers[-1]):
        assert [token for token, _ in row] == top_ids[t].tolist()
        np.testing.assert_allclose([p for _, p in row], probs[t, top_ids[t]], rtol=1e-5, atol=1e-7)
    assert no_hooks_left(model)
