"""GPT-2, Llama, Qwen2 and Qwen3 from Hugging Face folders against transformers itself.

Tiny random models are built and saved with transformers (tests/hf_tiny_models.py: every weight
random), loaded with deers.models.from_pretrained, and compared: logits to 1e-4 in f32, greedy
generations token for token, cached against uncached decoding, the round trip through
save_pretrained (transformers reads what Deers writes), a sharded folder, both config.json dialects,
bf16 files, the hub's old GPT-2 layout, and the named errors. No network.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the pretrained-model tests compare against transformers (needs torch)")
transformers = pytest.importorskip("transformers", reason="the pretrained-model tests build their models with "
                                   "transformers (an optional test dependency: pip install transformers)")
pytest.importorskip("safetensors", reason="transformers writes the test models with safetensors")

import deers  # noqa: E402
from deers import optim  # noqa: E402
from deers.dtype import DType  # noqa: E402
from deers.models import hub  # noqa: E402
from deers.models import (PretrainedError, UnsupportedConfig, UnsupportedModel, from_pretrained,  # noqa: E402
                          save_pretrained)
from deers.models.shared import filter_logits, rope_tables  # noqa: E402
from hf_tiny_models import FAMILIES, VOCAB, build, save  # noqa: E402

IDS = np.random.default_rng(0).integers(0, VOCAB, (2, 11))  # a batch of two prompts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (transformers model, its saved folder)."""
    root = tmp_path_factory.mktemp("hf")
    return {family: (model, save(model, root / family)) for family, model in
            ((family, build(family, seed=i)) for i, family in enumerate(FAMILIES))}


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def hf_greedy(model, ids: np.ndarray, n: int) -> np.ndarray:
    """Greedy decoding with the transformers model, the whole sequence each step (no cache: the plainest
    form; transformers' own `generate` is checked in test_generate_counts_and_eos, and costs seconds)."""
    x = torch.tensor(ids)
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)  # (B, T + 1)
    return x.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(tiny, family):
    hf, folder = tiny[family]
    model = from_pretrained(folder)
    got = model(deers.tensor(IDS)).numpy()  # (B, T, V)
    assert got.shape == (2, IDS.shape[1], VOCAB) and got.dtype == np.float32
    np.testing.assert_allclose(got, hf_logits(hf, IDS), atol=1e-4, rtol=1e-4)


VARIANTS = {  # config options the tiny models above leave at their defaults
    "gpt2-exact-gelu": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, n_inner=40, activation_function="gelu",
        scale_attn_by_inverse_layer_idx=True, layer_norm_epsilon=1e-3, tie_word_embeddings=False),
    "llama-biases-linear-rope": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=12, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 100.0, "factor": 2.0}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_config_variants_equal_transformers(variant, tmp_path):
    from hf_tiny_models import randomize

    hf = transformers.AutoModelForCausalLM.from_config(VARIANTS[variant]())
    randomize(hf, seed=7)
    hf.eval().save_pretrained(tmp_path)
    np.testing.assert_allclose(from_pretrained(tmp_path)(deers.tensor(IDS)).numpy(), hf_logits(hf, IDS), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_transformers_and_the_cache_changes_nothing(tiny, family):
    hf, folder = tiny[family]
    model = from_pretrained(folder)
    cached = model.generate(deers.tensor(IDS), 10, temperature=0).numpy()
    np.testing.assert_array_equal(cached, hf_greedy(hf, IDS, 10))
    uncached = model.generate(deers.tensor(IDS), 10, temperature=0, use_cache=False).numpy()
    np.testing.assert_array_equal(uncached, cached)
    sampled = [model.generate(deers.tensor(IDS), 8, temperature=0.9, top_k=20, top_p=0.9, seed=3, use_cache=c)
               for c in (True, False)]
    np.testing.assert_array_equal(sampled[0].numpy(), sampled[1].numpy())


@pytest.mark.parametrize("family", ["qwen3", "gpt2"])
def test_logits_with_a_kv_cache_equal_one_full_pass(tiny, family):
    model = from_pretrained(tiny[family][1])
    full = model(deers.tensor(IDS)).numpy()
    cache = model.new_cache()
    parts = [model(deers.tensor(IDS[:, :6]), cache=cache).numpy(), model(deers.tensor(IDS[:, 6:9]), cache=cache).numpy()]
    parts += [model(deers.tensor(IDS[:, t:t + 1]), cache=cache).numpy() for t in range(9, IDS.shape[1])]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == IDS.shape[1]


def test_the_context_limit(tiny):
    """Past n_positions a forward is an error naming it; generate crops the context (recomputing the window)."""
    model = from_pretrained(tiny["gpt2"][1])
    long = np.random.default_rng(2).integers(0, VOCAB, (1, 65))
    with pytest.raises(deers.ShapeError, match="0 cached \\+ 65 new positions exceed n_positions 64"):
        model(deers.tensor(long))
    cached = model.generate(deers.tensor(long[:, :60]), 8, temperature=0)
    assert cached.shape == (1, 68)
    np.testing.assert_array_equal(cached.numpy(), model.generate(deers.tensor(long[:, :60]), 8, temperature=0,
                                                                 use_cache=False).numpy())


def test_state_dict_names_are_the_checkpoints(tiny):
    for family in FAMILIES:
        hf, folder = tiny[family]
        names = set(from_pretrained(folder).state_dict())
        expected = {n for n in hf.state_dict() if not (n == "lm_head.weight" and hf.config.tie_word_embeddings)}
        assert names == expected, family


def test_generate_counts_and_eos(tiny):
    model = from_pretrained(tiny["llama"][1])
    assert model.generate(deers.tensor(IDS), 5, temperature=0).shape == (2, IDS.shape[1] + 5)
    greedy = model.generate(deers.tensor(IDS), 6, temperature=0).numpy()[:, IDS.shape[1]:]
    eos = int(greedy[0, 2])  # the token row 0 produces third: generation stops once both rows made it
    out = model.generate(deers.tensor(IDS), 6, temperature=0, eos_token_id=eos).numpy()[:, IDS.shape[1]:]
    hf = tiny["llama"][0]
    with torch.no_grad():
        ref = hf.generate(torch.tensor(IDS), max_new_tokens=6, do_sample=False, eos_token_id=eos,
                          pad_token_id=eos).numpy()[:, IDS.shape[1]:]
    np.testing.assert_array_equal(out, ref)
    assert eos in out[0] and out.shape[1] <= 6
    with pytest.raises(ValueError, match="top_p"):
        model.generate(deers.tensor(IDS), 2, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(deers.tensor(IDS), 2, top_k=0)


@pytest.mark.parametrize("top_k, top_p", [(None, 0.8), (5, None), (7, 0.6), (3, 0.99)])
def test_filtering_order_matches_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    logits = np.random.default_rng(1).standard_normal((4, 50)) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                                  + ([TopPLogitsWarper(top_p)] if top_p else []))
    ref = warpers(None, torch.tensor(logits)).numpy()
    got = filter_logits(logits, 0.7, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-12)


def test_rope_tables_match_transformers_llama3_scaling(tiny):
    hf = tiny["llama"][0]
    rotary = hf.model.rotary_emb
    positions = torch.arange(40)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    config = from_pretrained(tiny["llama"][1]).config
    ours = rope_tables(config.head_dim, 40, config.rope_theta, config.rope_scaling)
    np.testing.assert_allclose(ours[0], cos[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(ours[1], sin[0].numpy(), atol=2e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuned_model_round_trips_through_save_pretrained(tiny, family, tmp_path):
    model = from_pretrained(tiny[family][1])
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    x, y = deers.tensor(IDS[:, :-1]), deers.tensor(IDS[:, 1:])
    first = model.loss(x, y)
    opt.step(first.backward())
    assert model.loss(x, y).item() < first.item()  # one step of fine-tuning moved the weights
    save_pretrained(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ours = model(deers.tensor(IDS)).numpy()
    np.testing.assert_allclose(hf_logits(back, IDS), ours, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(from_pretrained(tmp_path / "out")(deers.tensor(IDS)).numpy(), ours, atol=1e-6)


def test_save_pretrained_of_a_model_built_in_deers(tmp_path):
    config = deers.models.LlamaConfig(model_type="qwen3", vocab_size=50, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                      max_position_embeddings=32, tie_word_embeddings=True)
    deers.manual_seed(0)
    model = deers.models.Llama(config)
    save_pretrained(model, tmp_path / "new" / "folder")  # the folder is created
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "new" / "folder").eval()
    ids = IDS % 50
    np.testing.assert_allclose(hf_logits(back, ids), model(deers.tensor(ids)).numpy(), atol=1e-5)


def test_sharded_checkpoint(tiny, tmp_path):
    hf = tiny["qwen3"][0]
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    np.testing.assert_allclose(from_pretrained(tmp_path)(deers.tensor(IDS)).numpy(), hf_logits(hf, IDS), atol=1e-4)


def test_transformers_4_config_dialect(tiny, tmp_path):
    """4.x files: top-level rope_theta and rope_scaling ("type" or "rope_type"), torch_dtype."""
    hf, folder = tiny["llama"]
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    config["torch_dtype"] = config.pop("dtype", "float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    np.testing.assert_allclose(from_pretrained(tmp_path)(deers.tensor(IDS)).numpy(), hf_logits(hf, IDS), atol=1e-4)


def test_bf16_checkpoint_loads_as_f32_or_stays_bf16(tiny, tmp_path):
    hf = build("qwen2", seed=5).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model = from_pretrained(tmp_path)
    for name, value in model.state_dict().items():
        assert value.dtype == deers.f32
        np.testing.assert_array_equal(value.numpy(), hf.state_dict()[name].float().numpy(), err_msg=name)
    with pytest.MonkeyPatch.context() as patch:  # as without ml_dtypes: the words are widened by hand
        patch.setattr(hub, "bf16", DType("bf16", None, True, itemsize=2, missing="no ml_dtypes"))
        widened = from_pretrained(tmp_path).state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(widened[name].numpy(), value.numpy(), err_msg=name)
    # transformers in f32 from the same file (a bf16 model converted with .float() keeps a bf16-rounded inv_freq)
    wide = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    np.testing.assert_allclose(model(deers.tensor(IDS)).numpy(), hf_logits(wide, IDS), atol=1e-4)
    if deers.bf16.available:
        half = from_pretrained(tmp_path, dtype="auto")
        assert {v.dtype for v in half.state_dict().values()} == {deers.bf16}
        assert half(deers.tensor(IDS)).dtype == deers.bf16


def test_bf16_words_widen_exactly():
    words = np.random.default_rng(0).integers(0, 2**16, 4096, dtype=np.uint16)
    words[:6] = [0x7F80, 0xFF80, 0x7FC0, 0x0001, 0x8000, 0x3F80]  # inf, -inf, nan, a subnormal, -0, 1
    ref = torch.tensor(words.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(hub.widen_bf16(words).view(np.uint32), ref.view(np.uint32))


def test_hub_gpt2_layout_without_prefix_and_with_mask_buffers(tiny, tmp_path):
    """The hub's `gpt2` files: names without `transformer.`, and h.<i>.attn.bias causal-mask buffers."""
    from safetensors.numpy import save_file

    hf, folder = tiny["gpt2"]
    tensors = {name.removeprefix("transformer."): value.numpy() for name, value in hf.state_dict().items()
               if name != "lm_head.weight"}
    for i in range(hf.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), dtype=np.float32))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    np.testing.assert_allclose(from_pretrained(tmp_path)(deers.tensor(IDS)).numpy(), hf_logits(hf, IDS), atol=1e-4)


# ---- the named errors ----------------------------------------------------------------------------------
def test_unsupported_model_type_is_named_with_the_supported_ones(tiny, tmp_path):
    shutil.copytree(tiny["llama"][1], tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(UnsupportedModel, match=r"'mamba' is not supported; supported: gpt2, llama, qwen2, qwen3"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(UnsupportedConfig, match="hidden_act 'gelu'"):
        from_pretrained(tmp_path)


def test_missing_and_truncated_files_are_named(tiny, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny["qwen3"][1], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 100])
    with pytest.raises(PretrainedError, match=f"{weights} is truncated"):
        from_pretrained(folder)
    weights.write_bytes(data[:5])
    with pytest.raises(PretrainedError, match=f"{weights} is truncated"):
        from_pretrained(folder)
    weights.unlink()
    with pytest.raises(PretrainedError, match="holds neither model.safetensors nor model.safetensors.index.json"):
        from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(PretrainedError, match="config.json is missing"):
        from_pretrained(folder)
    with pytest.raises(PretrainedError, match="no folder ./not/here"):
        from_pretrained("./not/here")


def test_missing_shard_is_named(tiny, tmp_path):
    tiny["llama"][0].save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(PretrainedError, match=f"{shard} is missing"):
        from_pretrained(tmp_path)


def test_missing_or_misshapen_tensor_is_named(tiny, tmp_path):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny["llama"][1], tmp_path, dirs_exist_ok=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight is missing from "):
        from_pretrained(tmp_path)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(deers.ShapeError, match=r"model\.layers\.1\.mlp\.up_proj\.weight .* has shape \(3, 3\)"):
        from_pretrained(tmp_path)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    tensors["model.layers.9.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedError, match=r"no place for: model\.layers\.9\.extra\.weight"):
        from_pretrained(tmp_path)


def test_a_repo_id_without_huggingface_hub_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(deers.models.HubUnavailable, match=r"pip install 'deers\[hf\]'.*or pass a folder"):
        from_pretrained("someone/some-model")


def test_a_repo_id_offline_says_to_pass_a_folder(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(deers.models.HubUnavailable, match="offline, pass a local folder"):
        from_pretrained("someone/some-model-that-is-not-cached")


# ---- memory --------------------------------------------------------------------------------------------
LOAD_AND_MEASURE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import deers
    from deers.models import from_pretrained
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
    config = deers.models.LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                      num_attention_heads=2)
    deers.models.Llama(config)(deers.tensor([[1, 2]]))  # the backends' own start-up memory, before measuring
    before = rss_mb()
    model = from_pretrained(sys.argv[1])
    size = sum(v.numel() * 4 for v in model.parameters()) / 2**20
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peak = int(status["VmHWM"].split()[0]) / 1024  # this process's peak (ru_maxrss would include pytest's, from fork)
    print(before, peak, rss_mb(), size)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm and status")
def test_loading_memory_maps_and_copies_once(tmp_path):
    """Peak RSS while loading stays under the model's size x 1.3 over the RSS before (bf16 file, f32 model)."""
    config = {"model_type": "llama", "vocab_size": 4096, "hidden_size": 512, "intermediate_size": 1024,
              "num_hidden_layers": 8, "num_attention_heads": 8, "max_position_embeddings": 128,
              "tie_word_embeddings": False, "dtype": "bfloat16"}
    model = deers.models.Llama(deers.models.LlamaConfig.from_hf(config))  # the names and shapes to write
    rng = np.random.default_rng(0)
    words = {name: rng.integers(0, 2**16, v.shape, dtype=np.uint16) for name, v in model.state_dict().items()}
    del model
    header, offset = {}, 0
    for name, w in words.items():  # safetensors by hand: header length, JSON header, the bytes
        header[name] = {"dtype": "BF16", "shape": list(w.shape), "data_offsets": [offset, offset + w.nbytes]}
        offset += w.nbytes
    text = json.dumps(header).encode()
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for w in words.values():
            f.write(w.tobytes())
    del words
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(tmp_path)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(deers.__file__).parents[1])), timeout=120)
    assert out.returncode == 0, out.stderr
    before, peak, after, size = map(float, out.stdout.split())
    assert size > 90
    assert peak - before < 1.3 * size, (before, peak, after, size)
