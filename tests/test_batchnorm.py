"""Batch norm (train and eval, running statistics over several steps, momentum=None, affine,
track_running_stats) against PyTorch and finite differences; module buffers (register_buffer: in
state_dict with prefixes inside containers, load_state_dict, to_device, checkpoints, skipped by
optimizers); the conv/pool layers' PyTorch defaults; a PyTorch CNN's state_dict giving the same outputs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import deers
from deers import nn
from deers.errors import ShapeError
from deers.nn import batch_norm
from helpers import finite_differences, make_input


# ---- batch norm against PyTorch ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,shape", [("2d", (4, 3, 5, 4)), ("1d", (6, 3)), ("1d", (4, 3, 5))])
@pytest.mark.parametrize("momentum,affine,track", [(0.1, True, True), (None, True, True), (0.3, False, True),
                                                   (0.1, True, False)])
def test_batch_norm_trains_and_evaluates_like_torch(kind, shape, momentum, affine, track):
    torch = pytest.importorskip("torch")
    mine = (nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d)(3, momentum=momentum, affine=affine,
                                                                 track_running_stats=track, dtype="f64")
    theirs = (torch.nn.BatchNorm2d if kind == "2d" else torch.nn.BatchNorm1d)(
        3, momentum=momentum, affine=affine, track_running_stats=track).double()
    if affine:  # not the default 1 and 0, so their gradients and effect show
        rng = np.random.default_rng(9)
        values = {"weight": rng.uniform(0.5, 1.5, 3), "bias": rng.standard_normal(3)}
        mine.load_state_dict({**{k: v.numpy() for k, v in theirs.state_dict().items()}, **values})
        theirs.load_state_dict({k: torch.tensor(v) for k, v in values.items()}, strict=False)
    for step in range(3):
        x = np.random.default_rng(step).standard_normal(shape) * 2 + 1
        xt = make_input(x, ("contiguous", "permuted", "narrowed")[step], True)
        tx = torch.tensor(x, requires_grad=True)
        y, ty = mine(xt), theirs(tx)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-12, rtol=1e-10)
        seed = np.random.default_rng(10 + step).standard_normal(shape)
        grads = y.backward(deers.from_numpy(seed))
        ty.backward(torch.tensor(seed))
        np.testing.assert_allclose(grads[xt].numpy(), tx.grad.numpy(), atol=1e-11, rtol=1e-9)
        for name, param in mine.named_parameters():
            np.testing.assert_allclose(grads[param].numpy(), getattr(theirs, name).grad.numpy(), atol=1e-11)
            getattr(theirs, name).grad = None
    expected = theirs.state_dict()
    assert list(mine.state_dict()) == list(expected)
    for name, value in mine.state_dict().items():
        np.testing.assert_allclose(value.numpy(), expected[name].numpy(), atol=1e-13, err_msg=name)
    if track:
        assert mine.num_batches_tracked.dtype is deers.i64 and mine.num_batches_tracked.shape == ()
        assert mine.num_batches_tracked.item() == 3
    mine.eval()
    theirs.eval()
    x = np.random.default_rng(5).standard_normal(shape)
    np.testing.assert_allclose(mine(deers.from_numpy(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), atol=1e-12)


def test_momentum_none_is_the_cumulative_average_with_the_unbiased_variance():
    bn = nn.BatchNorm1d(2, momentum=None, affine=False, dtype="f64")
    batches = [np.random.default_rng(i).standard_normal((5, 2)) for i in range(4)]
    for x in batches:
        bn(deers.from_numpy(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), atol=1e-14)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([b.var(0, ddof=1) for b in batches], 0), atol=1e-14)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(training):
    rng = np.random.default_rng(11)
    x, weight, bias = rng.standard_normal((3, 2, 2, 3)), rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    mean, var = deers.from_numpy(rng.standard_normal(2)), deers.from_numpy(rng.uniform(0.5, 2, 2))
    fn = lambda x, w, b: batch_norm(x, mean, var, w, b, training=training, momentum=0.0)  # noqa: E731
    tensors = [deers.from_numpy(a).attach() for a in (x, weight, bias)]
    out = fn(*tensors)
    seed = rng.standard_normal(out.shape)
    grads = out.backward(deers.from_numpy(seed))
    for i, numeric in finite_differences(fn, [x, weight, bias], seed, [0, 1, 2], 1e-6).items():
        np.testing.assert_allclose(grads[tensors[i]].numpy(), numeric, atol=1e-7, rtol=1e-6)


def test_batch_norm_errors():
    with pytest.raises(ShapeError, match=r"BatchNorm2d\(3\).*\(2, 3, 4\)"):
        nn.BatchNorm2d(3)(deers.zeros(2, 3, 4))
    with pytest.raises(ShapeError, match=r"BatchNorm1d\(3\).*4 channels"):
        nn.BatchNorm1d(3)(deers.zeros(2, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(deers.zeros(1, 3))
    nn.BatchNorm1d(3).eval()(deers.zeros(1, 3))  # eval mode normalizes a single sample


# ---- buffers ------------------------------------------------------------------------------------------------
class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(2, 2)
        self.register_buffer("steps", deers.tensor(0))
        self.register_buffer("cache", deers.zeros(3), persistent=False)


def test_buffers_are_in_state_dict_with_prefixes_inside_containers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ModuleDict({"inner": nn.ModuleList([Counter()])}))
    keys = list(model.state_dict())
    assert keys == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                    "1.num_batches_tracked", "2.inner.0.steps", "2.inner.0.scale.weight", "2.inner.0.scale.bias"]
    # (a module's own parameters and buffers come before its children's, as in PyTorch)
    assert [name for name, _ in model.named_buffers()] == ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                                                          "2.inner.0.steps", "2.inner.0.cache"]
    assert len(model.parameters()) == 6  # buffers are not parameters: an optimizer never sees them
    assert model.state_dict()["1.num_batches_tracked"].dtype is deers.i64


def test_load_state_dict_writes_buffers_in_place_and_checks_them():
    model = nn.Sequential(nn.BatchNorm1d(2))
    running = model[0].running_mean
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["0.running_mean"] = np.array([1.0, 2.0], np.float32)
    state["0.num_batches_tracked"] = np.array(7)
    model.load_state_dict(state)
    assert model[0].running_mean is running and running.numpy().tolist() == [1.0, 2.0]
    assert model[0].num_batches_tracked.item() == 7 and model[0].num_batches_tracked.dtype is deers.i64
    del state["0.running_var"]
    with pytest.raises(nn.StateDictError, match="0.running_var"):
        model.load_state_dict(state)
    state["0.running_var"] = np.ones(3)
    with pytest.raises(nn.StateDictError, match="size mismatch for 0.running_var"):
        model.load_state_dict(state)


def test_optimizer_skips_buffers_and_checkpoints_keep_them(tmp_path):
    pytest.importorskip("safetensors")
    from deers import checkpoint
    from deers.optim import AdamW

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.step(model(deers.randn(5, 3)).square().sum().backward())
    saved = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    checkpoint.save(tmp_path / "bn.safetensors", model=model, optimizer=optimizer, step=2)
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    checkpoint.load(tmp_path / "bn.safetensors", model=fresh, optimizer=AdamW(fresh.parameters(), lr=0.1))
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[name], err_msg=name)
    assert fresh[1].num_batches_tracked.item() == 2


def test_to_device_moves_buffers():
    pytest.importorskip("mlx.core")
    model = nn.Sequential(nn.BatchNorm2d(2), Counter()).to_device("mps")
    assert {b.device for b in model.buffers()} == {deers.tensor(0.0, device="mps").device}
    y = model[0](deers.randn(3, 2, 2, 2, device="mps"))
    assert model[0].num_batches_tracked.item() == 1 and y.device == model[0].running_mean.device


def test_register_buffer_refuses_parameters_and_dotted_names():
    module = nn.Module()
    with pytest.raises(TypeError, match="parameter"):
        module.register_buffer("w", deers.Var(deers.zeros(2)))
    with pytest.raises(KeyError):
        module.register_buffer("a.b", deers.zeros(2))


# ---- layers: PyTorch's defaults, and a PyTorch CNN's weights -------------------------------------------------
def test_conv_layers_have_pytorch_shapes_and_init():
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    assert conv.weight.shape == (6, 2, 3, 2) and conv.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 3 * 2)  # fan_in = in/groups * kernel area
    big = nn.Conv2d(8, 64, 3)
    values = big.weight.numpy()
    assert np.abs(values).max() <= 1 / math.sqrt(72) and np.abs(values).max() > 0.9 / math.sqrt(72)
    assert np.abs(conv.weight.numpy()).max() <= bound
    assert nn.Conv1d(3, 5, 4, bias=False).weight.shape == (5, 3, 4)
    assert nn.Conv1d(3, 5, 4, bias=False).bias is None
    assert nn.Conv2d(2, 2, 3, dtype="f64").weight.dtype is deers.f64
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(3, 4, 3, groups=2)


class TorchStyleCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, groups=8, padding="same"), nn.AvgPool2d(2))
        self.seq = nn.Conv1d(8, 4, 2)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.features(x).flatten(2)  # (N, 8, 4)
        return self.head(self.norm(self.seq(x)).relu().mean(dim=2))


def test_a_pytorch_cnn_state_dict_loads_with_the_same_outputs():
    torch = pytest.importorskip("torch")
    T = torch.nn

    class Theirs(T.Module):
        def __init__(self):
            super().__init__()
            self.features = T.Sequential(T.Conv2d(3, 8, 3, padding=1), T.BatchNorm2d(8), T.ReLU(), T.MaxPool2d(2),
                                         T.Conv2d(8, 8, 3, groups=8, padding="same"), T.AvgPool2d(2))
            self.seq = T.Conv1d(8, 4, 2)
            self.norm = T.BatchNorm1d(4)
            self.head = T.Linear(4, 5)

        def forward(self, x):
            x = self.features(x).flatten(2)
            return self.head(self.norm(self.seq(x)).relu().mean(dim=2))

    torch.manual_seed(0)
    theirs = Theirs()
    theirs.train()
    for _ in range(2):  # running statistics that are not the initial ones
        theirs(torch.randn(4, 3, 10, 12))
    mine = TorchStyleCNN()
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 3, 10, 12)).astype(np.float32)
    for mode in ("eval", "train"):
        getattr(mine, mode)()
        getattr(theirs, mode)()
        np.testing.assert_allclose(mine(deers.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                   atol=2e-5, rtol=1e-4, err_msg=mode)
    for name, value in mine.state_dict().items():  # the train-mode step updated both alike
        np.testing.assert_allclose(value.numpy(), theirs.state_dict()[name].numpy(), atol=1e-5, err_msg=name)
