"""deers.diagnostics: per-layer statistics against NumPy recomputations, attention maps against a
NumPy attention, the logit lens against the model's own logits, and no hooks left behind."""
import math

import numpy as np
import pytest

import deers
from deers.diagnostics import Diagnostics, attention_entropy, attention_maps, blocks_of, logit_lens
from deers.models.gpt import GPT, GPTConfig
from deers.optim import SGD


@pytest.fixture
def model():
    deers.manual_seed(3)
    m = GPT(GPTConfig(vocab_size=40, sequence_len=12, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=16),
            dtype="f64")
    for _, p in m.named_parameters():  # random weights, so attention is far from uniform
        p.set_data(deers.randn(*p.shape, dtype="f64") * 0.5)
    return m


def ids(seed=0, shape=(2, 6)):
    return deers.tensor(np.random.default_rng(seed).integers(0, 40, shape))


def no_hooks_left(model):
    return all(m._hooks is None or (not m._hooks.pre and not m._hooks.post) for m in model.modules())


def test_record_matches_numpy(model):
    idx, targets = ids(0), ids(1)
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    block_out = {}
    for name, block in blocks_of(model):
        block.register_forward_hook(lambda m, a, out, name=name: block_out.__setitem__(name, out.numpy()))
    diag = Diagnostics(model)
    opt = SGD(model.parameters(), lr=0.1)
    with diag.record(7, idx) as rec:
        grads = model.loss(idx, targets).backward()
        rec.gradients(grads)
        g = {name: grads[p].numpy() for name, p in model.named_parameters()}
        opt.step_with_grads(grads)
    row, = diag.history()
    assert row["step"] == 7 and [name for name, _ in blocks_of(model)] == ["blocks.0", "blocks.1"]
    for name, w in before.items():
        assert row["weight_rms"][name] == pytest.approx(np.sqrt(np.mean(w ** 2)), rel=1e-9)
        assert row["grad_norm"][name] == pytest.approx(np.linalg.norm(g[name]), rel=1e-9)
        # SGD: the update is lr * g, so |dw| / |w| = 0.1 |g| / |w|
        assert row["update_ratio"][name] == pytest.approx(0.1 * np.linalg.norm(g[name]) / np.linalg.norm(w), rel=1e-6)
    for name, out in block_out.items():
        assert row["activation_rms"][name] == pytest.approx(np.sqrt(np.mean(out ** 2)), rel=1e-9)
    assert np.array(row["head_entropy"]).shape == (2, 2)
    table = diag.table(rows=3)
    assert "diagnostics at step 7" in table and table.count("blocks.") >= 3


def test_table_puts_the_fastest_changing_parameter_first(model):
    diag = Diagnostics(model)
    with diag.record(1):
        model.lm_head.weight.set_data(model.lm_head.weight * 3.0)  # |dw| / |w| = 2: the worst by far
    first = diag.table().splitlines()[2]
    assert first.split()[0] == "lm_head.weight" and float(first.split()[-1]) == pytest.approx(2.0)
    assert no_hooks_left(model)


def test_nan_sorts_first():
    deers.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=16, sequence_len=8, n_layer=1, n_head=1, n_embd=4, mlp_hidden_dim=8))
    diag = Diagnostics(m)
    with diag.record(1):
        m.norm_f.weight.set_data(m.norm_f.weight * float("nan"))
    assert diag.table().splitlines()[2].split()[0] == "norm_f.weight"


def numpy_attention(model, idx):
    """softmax(q k^T / sqrt(hd)) with the causal mask, from the weights, in NumPy, per layer."""
    from deers.models.gpt import rope_tables

    x = model.wte.weight.numpy()[idx.numpy()]  # (B, T, D)
    B, T, D = x.shape
    nh = model.config.n_head
    hd = D // nh
    cos, sin = (t[:T] for t in rope_tables(hd, model.config.sequence_len, model.config.rope_base))
    maps = []

    def rms(v, w):
        return v / np.sqrt(np.mean(v ** 2, axis=-1, keepdims=True) + model.config.rms_norm_eps) * w

    def rope(v):
        return v * cos + np.concatenate([-v[..., hd // 2:], v[..., :hd // 2]], axis=-1) * sin

    for block in model.blocks:
        h = rms(x, block.norm1.weight.numpy())
        qkv = h @ block.attn.qkv.weight.numpy().T
        q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, T, nh, hd).transpose(0, 2, 1, 3) for i in range(3))
        s = rope(q) @ rope(k).transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        maps.append(p)
        y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, D) @ block.attn.proj.weight.numpy().T
        x = x + y
        h = rms(x, block.norm2.weight.numpy())
        x = x + np.maximum(h @ block.mlp.fc.weight.numpy().T, 0) @ block.mlp.proj.weight.numpy().T
    return maps


def test_attention_maps_equal_numpy_attention(model):
    idx = ids(2)
    maps = attention_maps(model, idx)
    expected = numpy_attention(model, idx)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 6, 6)
    for got, want in zip(maps, expected):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    entropy = attention_entropy(maps[1]).numpy()
    p = expected[1]
    np.testing.assert_allclose(entropy, -(p * np.log(np.where(p > 0, p, 1))).sum(-1).mean(axis=(0, 2)), atol=1e-12)
    assert no_hooks_left(model)


def test_logit_lens_last_layer_is_the_models_prediction(model):
    idx = ids(4, (1, 5))
    layers = logit_lens(model, idx, top=2)
    assert len(layers) == 3 and len(layers[0]) == 5 and len(layers[0][0]) == 2  # embeddings + 2 blocks
    probs = model(idx).softmax(-1).numpy()[0]  # (T, V)
    for t, cell in enumerate(layers[-1]):
        assert cell[0][0] == int(probs[t].argmax()) and cell[0][1] == pytest.approx(probs[t].max(), rel=1e-9)
        assert cell[0][1] >= cell[1][1]
    assert no_hooks_left(model)


def test_dashboard_and_pictures(model, tmp_path):
    pytest.importorskip("matplotlib")
    from deers.dashboard import attention_figure, diagnostics_dashboard, logit_lens_figure

    diag = Diagnostics(model)
    opt = SGD(model.parameters(), lr=0.01)
    for step in (1, 2):
        with diag.record(step, ids(step)) as rec:
            grads = model.loss(ids(step), ids(step + 5)).backward()
            rec.gradients(grads)
            opt.step_with_grads(grads)
    idx = ids(9, (1, 5))
    tokens = [str(i) for i in idx.numpy()[0]]
    for path in (diagnostics_dashboard(diag.history(), tmp_path / "d.png"),
                 attention_figure(attention_maps(model, idx), tokens, tmp_path / "a.png"),
                 logit_lens_figure(logit_lens(model, idx), tokens, tmp_path / "l.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainer_diagnostics_flag(tmp_path, capsys):
    pytest.importorskip("tiktoken")
    pytest.importorskip("safetensors")
    from test_trainer import load_example, make_stories, tiny_args
    from tiny_bpe import train_byte_bpe, write_tiktoken_file

    text = make_stories(60, seed=0)
    (tmp_path / "stories.txt").write_text(text)
    write_tiktoken_file(train_byte_bpe(text[:3000], 30), tmp_path / "tiny.tiktoken")
    trainer = load_example("tinystories_train")
    trainer.main(tiny_args(tmp_path, tmp_path / "run", 6, "--diagnostics", "3", "--log-every", "3",
                           "--eval-every", "6", "--sample-every", "100"))
    out = capsys.readouterr().out
    assert out.count("diagnostics at step") == 2 and "diagnostics at step 6" in out
    assert "head entropy min / mean" in out
    import json
    rows = json.loads((tmp_path / "run" / "diagnostics.json").read_text())
    assert [row["step"] for row in rows] == [3, 6] and "blocks.0" in rows[0]["activation_rms"]
    import importlib.util
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "run" / "diagnostics.png").stat().st_size > 0
    inspector = load_example("inspect_model")
    layers = inspector.main(["--checkpoint", str(tmp_path / "run"), "--prompt", "Once upon a time", "--top", "2"])
    assert len(layers) == 2  # the embeddings and the one block of the tiny run
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("after ") and "block 0:" in lines[0]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "run" / "attention.png").stat().st_size > 0
        assert (tmp_path / "run" / "logit_lens.png").stat().st_size > 0


def _diagnose_on(device):
    """One recorded SGD step, attention maps and the lens of a small f32 GPT on `device`."""
    deers.manual_seed(5)
    m = GPT(GPTConfig(vocab_size=40, sequence_len=12, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=16))
    m.to_device(device)
    idx, targets = (deers.tensor(ids(s).numpy(), device=device) for s in (0, 1))
    diag = Diagnostics(m)
    with diag.record(1, idx) as rec:
        grads = m.loss(idx, targets).backward()
        rec.gradients(grads)
        SGD(m.parameters(), lr=0.1).step_with_grads(grads)
    maps = [p.numpy() for p in attention_maps(m, idx)]
    return diag.history()[0], maps, logit_lens(m, idx[0:1], top=1)


@pytest.fixture(scope="module", params=["mps", "cuda-emulated"])
def device(request):
    if request.param == "mps":
        pytest.importorskip("mlx.core")
        yield "mps"
    else:
        from cuda_emulator import cuda_backend_fixture

        class Emulated:
            param = "emulated"

        yield from cuda_backend_fixture(Emulated())
        return


def test_diagnostics_on_other_devices_match_the_cpu(device):
    want, want_maps, want_lens = _diagnose_on("cpu")
    got, got_maps, got_lens = _diagnose_on("cuda" if device != "mps" else "mps")
    for key in ("weight_rms", "grad_norm", "update_ratio", "activation_rms"):
        assert got[key].keys() == want[key].keys()
        for name in want[key]:
            assert got[key][name] == pytest.approx(want[key][name], rel=1e-4, abs=1e-7), (key, name)
    np.testing.assert_allclose(got["head_entropy"], want["head_entropy"], rtol=1e-4)
    for g, w in zip(got_maps, want_maps):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert [[c[0][0] for c in layer] for layer in got_lens] == [[c[0][0] for c in layer] for layer in want_lens]
