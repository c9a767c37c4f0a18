"""deers.nn: parameter names (ParamStore paths and attribute names), state dicts and strict loading,
initialisation, train/eval, device moves, and every layer's forward and backward against NumPy,
finite differences and PyTorch."""
import math

import numpy as np
import pytest

import deers
from deers.nn import (GELU, Constant, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Normal, ParamStore,
                      ReLU, RMSNorm, Sequential, SiLU, StateDictError, gelu)
from devices import DEVICES


class Block(Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.fc = Linear(dim, 2 * dim, bias=False)
        self.proj = Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.proj(self.fc(self.norm(x)).relu())


class Net(Module):
    """A small model built PyTorch style: names come from the attributes."""

    def __init__(self, vocab=7, dim=4, n=2):
        super().__init__()
        self.wte = Embedding(vocab, dim)
        self.blocks = ModuleList([Block(dim) for _ in range(n)])
        self.head = Linear(dim, vocab, bias=False)
        self.drop = Dropout(0.5)

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(x))


NET_NAMES = ["wte.weight",
             "blocks.0.norm.weight", "blocks.0.fc.weight", "blocks.0.proj.weight", "blocks.0.proj.bias",
             "blocks.1.norm.weight", "blocks.1.fc.weight", "blocks.1.proj.weight", "blocks.1.proj.bias",
             "head.weight"]


# ---- names -------------------------------------------------------------------------------------------
def test_param_store_paths_name_parameters_in_creation_order():
    store = ParamStore(device="cpu", dtype=deers.f32)
    vb = store.root()
    block = vb.pp("blocks").pp(0)
    fc = Linear(4, 8, bias=False, vb=block.pp("mlp").pp("fc"), init=Normal(0.0, 0.02))
    norm = RMSNorm(4, vb=block.pp("norm1"))
    extra = vb.pp("lm_head").get((3, 4), "weight", init=Constant(0.5))
    assert [n for n, _ in store.named_parameters()] == ["blocks.0.mlp.fc.weight", "blocks.0.norm1.weight",
                                                        "lm_head.weight"]
    assert store.parameters() == [fc.weight, norm.weight, extra]
    assert store["blocks.0.norm1.weight"] is norm.weight
    assert np.all(extra.numpy() == 0.5) and extra.dtype is deers.f32 and extra.requires_grad


def test_param_store_get_returns_the_existing_var_and_checks_its_shape():
    store = ParamStore()
    vb = store.root().pp("a")
    w = vb.get((2, 3), "w", init=Normal())
    assert vb.get((2, 3), "w", init=Normal()) is w
    assert len(store) == 1
    with pytest.raises(ValueError, match="a.w"):
        vb.get((3, 2), "w", init=Normal())
    with pytest.raises(ValueError, match="'.'"):
        vb.pp("x.y")


def test_module_names_come_from_attributes_and_lists():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == NET_NAMES
    assert [n for n, _ in net.named_children()] == ["wte", "blocks", "head", "drop"]
    model = Sequential(Linear(3, 5), ReLU(), Linear(5, 2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]

    class PlainList(Module):
        def __init__(self):
            self.layers = [Linear(2, 2), Linear(2, 2, bias=False)]  # no super().__init__(): still a Module

    assert [n for n, _ in PlainList().named_parameters()] == ["layers.0.weight", "layers.0.bias", "layers.1.weight"]


def test_tied_parameters_are_listed_once():
    net = Net()
    net.head.weight = net.wte.weight  # (vocab, dim) both
    names = [n for n, _ in net.named_parameters()]
    assert "head.weight" not in names and names[0] == "wte.weight"
    assert len(net.parameters()) == len(NET_NAMES) - 1


def test_names_and_shapes_match_the_same_model_in_torch():
    torch = pytest.importorskip("torch")
    model = Sequential(Linear(6, 5), ReLU(), Linear(5, 3, bias=False), LayerNorm(3), Embedding(4, 3))
    reference = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False),
                                    torch.nn.LayerNorm(3), torch.nn.Embedding(4, 3))
    ours = {n: v.shape for n, v in model.state_dict().items()}
    theirs = {n: tuple(v.shape) for n, v in reference.state_dict().items()}
    assert list(ours) == list(theirs) and ours == theirs
    model.load_state_dict({n: v.numpy() for n, v in reference.state_dict().items()})  # torch weights load as-is


# ---- state dicts -----------------------------------------------------------------------------------------
def test_state_dict_round_trip_copies_values_and_keeps_ids():
    deers.manual_seed(0)
    a, b = Net().eval(), Net().eval()
    ids = [id(v) for v in b.parameters()]
    buffers = [v.data.buffer for v in b.parameters()]
    ids_in = deers.tensor([[0, 3, 6]])
    assert not np.allclose(a(ids_in).numpy(), b(ids_in).numpy())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(ids_in).numpy(), b(ids_in).numpy())
    assert [id(v) for v in b.parameters()] == ids
    assert all(v.data.buffer is buf for v, buf in zip(b.parameters(), buffers))
    a.wte.weight.set_data(deers.zeros(7, 4))  # b holds copies, not views of a's buffers
    assert np.abs(b.wte.weight.numpy()).sum() > 0


def test_state_dict_loads_numpy_arrays():
    net = Net()
    state = {n: np.full(v.shape, 0.25, np.float64) for n, v in net.state_dict().items()}
    net.load_state_dict(state)
    assert all(np.all(v.numpy() == 0.25) and v.dtype is deers.f32 for v in net.parameters())


def test_strict_load_names_missing_unexpected_and_misshaped_parameters():
    net = Net()
    state = net.state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.proj.bias"}
    with pytest.raises(StateDictError, match=r"missing parameters: blocks\.1\.proj\.bias"):
        net.load_state_dict(missing)
    with pytest.raises(StateDictError, match=r"unexpected parameters: blocks\.2\.fc\.weight"):
        net.load_state_dict(dict(state, **{"blocks.2.fc.weight": np.zeros((8, 4))}))
    wrong = dict(state, **{"head.weight": np.zeros((4, 7))})
    with pytest.raises(StateDictError, match=r"size mismatch for head\.weight.*\(4, 7\).*\(7, 4\)"):
        net.load_state_dict(wrong)
    with pytest.raises(StateDictError, match="head.weight"):
        net.load_state_dict(wrong, strict=False)  # a wrong shape is never skipped
    result = net.load_state_dict(dict(missing, extra=np.zeros(1)), strict=False)
    assert result.missing_keys == ["blocks.1.proj.bias"] and result.unexpected_keys == ["extra"]
    with pytest.raises(ValueError):  # StateDictError is a ValueError, as users catch it
        net.load_state_dict({})


# ---- init --------------------------------------------------------------------------------------------------
def test_linear_default_init_is_pytorch_kaiming_uniform():
    deers.manual_seed(0)
    layer = Linear(400, 300)
    bound = 1 / math.sqrt(400)
    for v in (layer.weight.numpy(), layer.bias.numpy()):
        assert v.min() >= -bound and v.max() <= bound
        assert v.max() > 0.9 * bound and v.min() < -0.9 * bound
    assert abs(layer.weight.numpy().std() - bound / math.sqrt(3)) < 0.02 * bound
    assert layer.weight.shape == (300, 400) and layer.bias.shape == (300,)


def test_gpt_init_and_norm_gains():
    deers.manual_seed(0)
    layer = Linear(256, 512, bias=False, init=Normal(0.0, 0.02))
    assert abs(layer.weight.numpy().std() - 0.02) < 1e-3 and abs(layer.weight.numpy().mean()) < 1e-3
    with_bias = Linear(4, 4, init=Normal(0.0, 0.02))
    assert np.all(with_bias.bias.numpy() == 0)  # explicit init: bias starts at zero
    assert np.all(RMSNorm(5).weight.numpy() == 1) and np.all(LayerNorm(5).weight.numpy() == 1)
    assert np.all(LayerNorm(5).bias.numpy() == 0)


def test_init_is_reproducible_under_manual_seed():
    deers.manual_seed(3)
    first = [v.numpy() for v in Net().parameters()]
    deers.manual_seed(3)
    second = [v.numpy() for v in Net().parameters()]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# ---- layers against references -----------------------------------------------------------------------------
def _grads_of(module, x, weights):
    """Forward a float64 input through `module`, backward sum(y * w); returns (y, dx, {name: dparam})."""
    xt = deers.tensor(x).attach()
    y = module(xt)
    grads = (y * deers.tensor(weights)).sum().backward()
    return y.numpy(), grads[xt].numpy(), {n: grads[v].numpy() for n, v in module.named_parameters()}


def _layer_cases():
    return [
        ("linear", lambda: Linear(5, 3, dtype="f64"), lambda t: t.nn.Linear(5, 3, dtype=t.float64), (4, 2, 5)),
        ("linear_nobias", lambda: Linear(5, 3, bias=False, dtype="f64"),
         lambda t: t.nn.Linear(5, 3, bias=False, dtype=t.float64), (4, 5)),
        ("rmsnorm", lambda: RMSNorm(6, eps=1e-5, dtype="f64"), lambda t: t.nn.RMSNorm(6, eps=1e-5, dtype=t.float64),
         (3, 6)),
        ("layernorm", lambda: LayerNorm(6, dtype="f64"), lambda t: t.nn.LayerNorm(6, dtype=t.float64), (2, 3, 6)),
        ("gelu", lambda: GELU(), lambda t: t.nn.GELU(), (4, 7)),
        ("gelu_tanh", lambda: GELU("tanh"), lambda t: t.nn.GELU(approximate="tanh"), (4, 7)),
        ("silu", lambda: SiLU(), lambda t: t.nn.SiLU(), (4, 7)),
        ("relu", lambda: ReLU(), lambda t: t.nn.ReLU(), (4, 7)),
    ]


@pytest.mark.parametrize("name,make,make_torch,shape", _layer_cases(), ids=[c[0] for c in _layer_cases()])
def test_layer_forward_and_backward_match_torch(name, make, make_torch, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    deers.manual_seed(0)
    module, reference = make(), make_torch(torch)
    for n, v in module.named_parameters():  # random gains too, so their gradients are not trivial
        v.set_data(deers.tensor(rng.standard_normal(v.shape)))
    reference.load_state_dict({n: torch.tensor(v.numpy()) for n, v in module.named_parameters()})
    x = rng.standard_normal(shape) * 2
    weights = rng.standard_normal(module(deers.tensor(x)).shape)
    y, dx, dparams = _grads_of(module, x, weights)
    xt = torch.tensor(x, requires_grad=True)
    yt = reference(xt)
    (yt * torch.tensor(weights)).sum().backward()
    tol = 1e-10
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=tol, rtol=tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=tol, rtol=tol)
    for n, p in reference.named_parameters():
        np.testing.assert_allclose(dparams[n], p.grad.numpy(), atol=1e-10, rtol=1e-10)


def test_layers_match_numpy_formulas():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5))
    lin = Linear(5, 4, dtype="f64")
    w, b = lin.weight.numpy(), lin.bias.numpy()
    np.testing.assert_allclose(lin(deers.tensor(x)).numpy(), x @ w.T + b, rtol=1e-12)
    norm = RMSNorm(5, eps=1e-6, dtype="f64")
    np.testing.assert_allclose(norm(deers.tensor(x)).numpy(), x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6),
                               rtol=1e-12)
    emb = Embedding(6, 3, dtype="f64")
    ids = np.array([[5, 0], [2, 2]])
    np.testing.assert_array_equal(emb(deers.tensor(ids)).numpy(), emb.weight.numpy()[ids])
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(gelu(deers.tensor(x)).numpy(), 0.5 * x * (1 + erf(x / math.sqrt(2))), atol=1e-15)


def test_exact_gelu_gradient_by_finite_differences():
    x = np.linspace(-4, 4, 41)
    xt = deers.tensor(x).attach()
    analytic = gelu(xt).sum().backward()[xt].numpy()
    erf = np.vectorize(math.erf)
    cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
    np.testing.assert_allclose(analytic, cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi), atol=1e-15)
    h = 1e-5
    numeric = (gelu(deers.tensor(x + h)).numpy() - gelu(deers.tensor(x - h)).numpy()) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, atol=2e-6)


def test_linear_rejects_wrong_input_width():
    with pytest.raises(ValueError, match=r"Linear\(5, 3\).*\(2, 4\)"):
        Linear(5, 3)(deers.zeros(2, 4))


# ---- modes, dropout, devices ----------------------------------------------------------------------------------
def test_train_eval_reach_every_descendant():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    assert net.train() is net and all(m.training for m in net.modules())


def test_dropout_masks_scales_and_is_reproducible():
    drop = Dropout(0.25)
    x = deers.ones(200, 100).attach()
    deers.manual_seed(5)
    y = drop(x)
    values = y.numpy()
    kept = values != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(values[kept], 1 / 0.75)
    grad = y.sum().backward()[x].numpy()
    np.testing.assert_allclose(grad, kept / 0.75)  # the gradient goes through the same mask
    deers.manual_seed(5)
    np.testing.assert_array_equal(drop(x).numpy(), values)
    drop.eval()
    assert drop(x) is x
    assert np.all(Dropout(1.0)(x).numpy() == 0)
    with pytest.raises(ValueError):
        Dropout(1.5)


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_moves_buffers_and_keeps_the_vars(device):
    deers.manual_seed(0)
    net = Net().eval()
    ids = [id(v) for v in net.parameters()]
    tokens = [[1, 2, 3]]
    expected = net(deers.tensor(tokens)).numpy()
    assert net.to_device(device) is net
    assert [id(v) for v in net.parameters()] == ids
    assert all(v.device == device for v in net.parameters())
    np.testing.assert_allclose(net(deers.tensor(tokens, device=device)).numpy(), expected, rtol=1e-5, atol=1e-6)
    net.to_device("cpu")
    assert all(v.device == "cpu" for v in net.parameters())
