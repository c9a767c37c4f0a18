"""deers.checkpoint: round trips (model, optimizer, step, RNG, extra), names readable by
safetensors.torch, resume equivalence, atomic writes under a crash, and clear errors for
truncated, corrupted or mismatched files."""
import json
import os

import numpy as np
import pytest

import deers
from deers import checkpoint, loss
from deers.checkpoint import CheckpointError
from deers.nn import Dropout, Linear, Module, ReLU, Sequential
from deers.optim import SGD, AdamW


class MLP(Module):
    def __init__(self, dropout=0.2):
        super().__init__()
        self.body = Sequential(Linear(6, 16), ReLU(), Dropout(dropout), Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _batch(step):
    rng = np.random.default_rng(100 + step)
    return deers.tensor(rng.standard_normal((8, 6)).astype(np.float32)), deers.tensor(rng.integers(0, 3, 8))


def _train(model, opt, steps, first=0):
    """Steps `first` .. `first + steps - 1`; the dropout masks come from deers' generator."""
    losses = []
    for step in range(first, first + steps):
        x, y = _batch(step)
        out = loss.cross_entropy(model(x), y)
        opt.step(out.backward())
        losses.append(out.item())
    return losses


def test_round_trip_model_optimizer_step_rng_extra(tmp_path):
    deers.manual_seed(0)
    model, path = MLP(), tmp_path / "ckpt.safetensors"
    opt = AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    _train(model, opt, 3)
    rng_before = deers.get_rng_state()
    checkpoint.save(path, model=model, optimizer=opt, step=3, extra={"config": {"dim": 16}, "note": "hi"})
    expected_next = deers.rand(4).numpy()

    deers.manual_seed(123)  # scramble the generators, then restore from the file
    fresh = MLP()
    fresh_opt = AdamW(fresh.parameters(), lr=0.5)
    info = checkpoint.load(path, model=fresh, optimizer=fresh_opt)
    assert info["step"] == 3 and info["extra"] == {"config": {"dim": 16}, "note": "hi"}
    assert info["rng"] == json.loads(json.dumps(rng_before))
    np.testing.assert_array_equal(deers.rand(4).numpy(), expected_next)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    assert fresh_opt.lr == 0.01 and fresh_opt.groups[0]["weight_decay"] == 0.1
    for saved, loaded in zip(opt.state, fresh_opt.state):
        assert saved["step"] == loaded["step"] == 3
        np.testing.assert_array_equal(saved["exp_avg"].numpy(), loaded["exp_avg"].numpy())
        np.testing.assert_array_equal(saved["exp_avg_sq"].numpy(), loaded["exp_avg_sq"].numpy())
    assert info["metadata"]["deers_version"] == deers.__version__
    assert info["metadata"]["numpy_version"] == np.__version__


def test_file_names_are_the_state_dict_names(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    pytest.importorskip("torch")
    model = MLP()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, 1)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, model=model, optimizer=opt, step=1)
    tensors = safetensors_torch.load_file(str(path))
    model_names = [n for n in tensors if not n.startswith("optim.")]
    assert sorted(model_names) == sorted(model.state_dict())
    assert sorted(n for n in tensors if n.startswith("optim.")) == sorted(
        f"optim.{n}.momentum_buffer" for n in model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(tensors[name].numpy(), value.numpy())


@pytest.mark.parametrize("make_opt", [lambda p: AdamW(p, lr=0.02), lambda p: SGD(p, lr=0.05, momentum=0.9)])
def test_resume_gives_the_same_losses_as_the_uninterrupted_run(tmp_path, make_opt):
    deers.manual_seed(7)
    model = MLP()
    opt = make_opt(model.parameters())
    straight = _train(model, opt, 6)

    deers.manual_seed(7)
    model = MLP()
    opt = make_opt(model.parameters())
    first = _train(model, opt, 3)
    checkpoint.save(tmp_path / "c.safetensors", model=model, optimizer=opt, step=3)
    deers.manual_seed(999)  # a fresh process would start with other generator states
    resumed_model = MLP()
    resumed_opt = make_opt(resumed_model.parameters())
    info = checkpoint.load(tmp_path / "c.safetensors", model=resumed_model, optimizer=resumed_opt)
    rest = _train(resumed_model, resumed_opt, 3, first=info["step"])
    assert first + rest == straight  # bit for bit: weights, moments, step counts and dropout masks


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = MLP()
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, model=model, step=1)
    old = {n: v.numpy() for n, v in model.state_dict().items()}
    for p in model.parameters():
        p.set_data(deers.zeros(*p.shape))

    def failing_replace(src, dst):
        assert os.path.getsize(src) > 0  # the temporary file was fully written first
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(path, model=model, step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind
    restored = MLP()
    assert checkpoint.load(path, model=restored)["step"] == 1
    for name, value in restored.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), old[name])


def test_save_overwrites_and_creates_folders(tmp_path):
    model = MLP()
    path = tmp_path / "a" / "b" / "c.safetensors"
    checkpoint.save(path, model=model, step=1)
    checkpoint.save(path, model=model, step=2)
    assert checkpoint.load(path, model=MLP())["step"] == 2
    assert os.listdir(path.parent) == ["c.safetensors"]


def test_truncated_or_corrupted_file_names_the_file(tmp_path):
    model = MLP()
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, model=model, step=1)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        checkpoint.load(truncated, model=MLP())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        checkpoint.load(garbage, model=MLP())
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors"):
        checkpoint.load(empty)


def test_mismatched_model_names_the_file_and_the_parameter(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, model=MLP(), step=1)
    wider = Sequential(Linear(6, 16), ReLU(), Dropout(0.2), Linear(16, 4))
    wider_outer = MLP()
    wider_outer.body = wider
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*body\.3\.weight.*\(3, 16\).*\(4, 16\)"):
        checkpoint.load(path, model=wider_outer)
    renamed = Sequential(Linear(6, 16), ReLU(), Dropout(0.2), Linear(16, 3))
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*missing parameters: 0\.weight"):
        checkpoint.load(path, model=renamed)
    info = checkpoint.load(path, model=renamed, strict=False)  # nothing matches: loads nothing, says so
    assert info["step"] == 1


def test_optimizer_mismatch_and_missing_state(tmp_path):
    model = MLP()
    opt = AdamW(model.parameters())
    _train(model, opt, 1)
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, model=model, optimizer=opt, step=1)
    other = MLP()
    with pytest.raises(CheckpointError, match="AdamW state, not SGD"):
        checkpoint.load(path, model=other, optimizer=SGD(other.parameters()))
    fresh = MLP()
    with pytest.raises(CheckpointError, match=r"body\.0\.weight"):  # optimizer over a subset of the parameters
        checkpoint.load(path, model=fresh, optimizer=AdamW(fresh.parameters()[2:]))
    checkpoint.save(path, model=model, step=1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        checkpoint.load(path, model=MLP(), optimizer=AdamW(MLP().parameters()))


@pytest.mark.skipif(not deers.bf16.available, reason="bf16 needs ml_dtypes")
def test_bf16_parameters_round_trip(tmp_path):
    layer = Linear(4, 3, dtype="bf16")
    path = tmp_path / "bf16.safetensors"
    checkpoint.save(path, model=layer)
    fresh = Linear(4, 3, dtype="bf16")
    checkpoint.load(path, model=fresh)
    np.testing.assert_array_equal(fresh.weight.numpy().astype(np.float32), layer.weight.numpy().astype(np.float32))
    assert fresh.weight.dtype is deers.bf16
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch = pytest.importorskip("torch")
    assert safetensors_torch.load_file(str(path))["weight"].dtype == torch.bfloat16


def test_param_store_round_trip(tmp_path):
    from deers.nn import Normal, ParamStore

    store = ParamStore()
    store.root().pp("blocks").pp(0).get((2, 3), "weight", init=Normal())
    checkpoint.save(tmp_path / "s.safetensors", model=store)
    fresh = ParamStore()
    fresh.root().pp("blocks").pp(0).get((2, 3), "weight", init=Normal())
    checkpoint.load(tmp_path / "s.safetensors", model=fresh)
    np.testing.assert_array_equal(fresh["blocks.0.weight"].numpy(), store["blocks.0.weight"].numpy())
