"""deers.optim: SGD and AdamW against hand-written NumPy updates and torch.optim (several steps),
in-place updates, state dicts, parameter groups, gradient clipping and the learning-rate schedule."""
import math

import numpy as np
import pytest

import deers
from deers.optim import SGD, AdamW, AdamWConfig, LRSchedule, clip_grad_norm
from devices import ACCELERATORS

W0 = np.random.default_rng(0).standard_normal((3, 4))
B0 = np.random.default_rng(1).standard_normal(4)
BATCHES = [np.random.default_rng(10 + i).standard_normal((5, 3)) for i in range(6)]


def _loss(x, w, b):
    """A small non-quadratic loss so the gradients change every step."""
    return ((x @ w + b).tanh() ** 2).sum()


def _run_deers(make, steps=len(BATCHES)):
    w, b = deers.Var(deers.tensor(W0)), deers.Var(deers.tensor(B0))
    opt = make([w, b])
    for x in BATCHES[:steps]:
        opt.step(_loss(deers.tensor(x), w, b).backward())
    return w.numpy(), b.numpy()


def _run_torch(torch, make, steps=len(BATCHES)):
    w = torch.tensor(W0, requires_grad=True)
    b = torch.tensor(B0, requires_grad=True)
    opt = make([w, b])
    for x in BATCHES[:steps]:
        opt.zero_grad()
        _loss(torch.tensor(x), w, b).backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


def _numpy_grads(x, w, b):
    """Gradients of sum(tanh(xw + b)^2): d = 2 tanh (1 - tanh^2)."""
    t = np.tanh(x @ w + b)
    d = 2 * t * (1 - t * t)
    return x.T @ d, d.sum(0)


OPTIMIZERS = {
    "adamw": (lambda p: AdamW(p, lr=0.05), lambda t, p: t.optim.AdamW(p, lr=0.05)),
    "adamw_hyper": (lambda p: AdamW(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3),
                    lambda t, p: t.optim.AdamW(p, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)),
    "sgd": (lambda p: SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    "sgd_nesterov": (lambda p: SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
                     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_matches_torch_over_several_steps(name):
    torch = pytest.importorskip("torch")
    make, make_torch = OPTIMIZERS[name]
    for ours, theirs in zip(_run_deers(make), _run_torch(torch, lambda p: make_torch(torch, p))):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-13)


def test_adamw_matches_the_hand_written_update():
    lr, (b1, b2), eps, wd = 0.05, (0.9, 0.999), 1e-8, 0.01
    w, b = W0.copy(), B0.copy()
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    for t, x in enumerate(BATCHES, start=1):
        params = [w, b]
        for i, g in enumerate(_numpy_grads(x, w, b)):
            p = params[i]
            p *= 1 - lr * wd  # decoupled weight decay
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p -= lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
    ours = _run_deers(lambda p: AdamW(p, lr=lr))
    np.testing.assert_allclose(ours[0], w, rtol=1e-12)
    np.testing.assert_allclose(ours[1], b, rtol=1e-12)


def test_sgd_momentum_matches_the_hand_written_update():
    lr, mu, wd = 0.1, 0.9, 0.05
    w, b = W0.copy(), B0.copy()
    bufs = [None, None]
    for x in BATCHES:
        params = [w, b]
        for i, g in enumerate(_numpy_grads(x, w, b)):
            g = g + wd * params[i]
            bufs[i] = g.copy() if bufs[i] is None else mu * bufs[i] + g
            params[i] -= lr * bufs[i]
    ours = _run_deers(lambda p: SGD(p, lr=lr, momentum=mu, weight_decay=wd))
    np.testing.assert_allclose(ours[0], w, rtol=1e-12)
    np.testing.assert_allclose(ours[1], b, rtol=1e-12)


def test_adamw_config_builder_equals_the_constructor():
    opt = AdamWConfig(3e-4).weight_decay(0.1).betas(0.9, 0.95).eps(1e-7).build([deers.Var(deers.zeros(2))])
    assert isinstance(opt, AdamW)
    group = opt.groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.95), 1e-7, 0.1)
    defaults = AdamW([deers.Var(deers.zeros(2))]).groups[0]
    assert (defaults["lr"], defaults["betas"], defaults["eps"], defaults["weight_decay"]) == (1e-3, (0.9, 0.999),
                                                                                              1e-8, 0.01)
    np.testing.assert_array_equal(_run_deers(lambda p: AdamWConfig(0.05).weight_decay(0.2).build(p))[0],
                                  _run_deers(lambda p: AdamW(p, lr=0.05, weight_decay=0.2))[0])


@pytest.mark.parametrize("make", [lambda p: AdamW(p, lr=0.1), lambda p: SGD(p, lr=0.1, momentum=0.9)])
def test_updates_are_in_place_without_a_graph_and_skip_missing_grads(make):
    w, unused = deers.Var(deers.tensor(W0)), deers.Var(deers.ones(2))
    buffer = w.data.buffer
    opt = make([w, unused])
    before = w.numpy()
    opt.step_with_grads(_loss(deers.tensor(BATCHES[0]), w, deers.zeros(4, dtype="f64")).backward())
    assert w.data.buffer is buffer and w.is_leaf and w.requires_grad
    assert not np.allclose(w.numpy(), before)
    np.testing.assert_array_equal(unused.numpy(), np.ones(2))  # no gradient, no update (no decay either)


def test_set_lr_and_lr_property():
    opt = SGD([deers.Var(deers.zeros(3))], lr=0.5)
    assert opt.lr == 0.5
    opt.set_lr(0.25)
    assert opt.lr == 0.25 and all(g["lr"] == 0.25 for g in opt.groups)


@pytest.mark.parametrize("make", [lambda p: AdamW(p, lr=0.05, weight_decay=0.1),
                                  lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True)])
def test_state_dict_resume_gives_the_uninterrupted_result(make):
    straight = _run_deers(make)
    w, b = deers.Var(deers.tensor(W0)), deers.Var(deers.tensor(B0))
    opt = make([w, b])
    for x in BATCHES[:3]:
        opt.step(_loss(deers.tensor(x), w, b).backward())
    saved, values = opt.state_dict(), (w.numpy(), b.numpy())
    w2, b2 = deers.Var(deers.tensor(values[0])), deers.Var(deers.tensor(values[1]))
    fresh = make([w2, b2])
    fresh.set_lr(123.0)  # overwritten by the saved hyper-parameters
    fresh.load_state_dict(saved)
    assert fresh.lr == 0.05
    for x in BATCHES[3:]:
        fresh.step(_loss(deers.tensor(x), w2, b2).backward())
    np.testing.assert_array_equal(w2.numpy(), straight[0])
    np.testing.assert_array_equal(b2.numpy(), straight[1])


def test_state_dict_contents_and_load_checks():
    w = deers.Var(deers.tensor(W0))
    opt = AdamW([w], lr=0.1)
    opt.step(_loss(deers.tensor(BATCHES[0]), w, deers.zeros(4, dtype="f64")).backward())
    state = opt.state_dict()
    assert state["type"] == "AdamW" and state["param_groups"][0]["params"] == [0]
    assert state["state"][0]["step"] == 1 and set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["state"][0]["exp_avg"].shape == (3, 4)
    with pytest.raises(ValueError, match="AdamW"):
        SGD([w]).load_state_dict(state)
    with pytest.raises(ValueError, match="groups"):
        AdamW([w, deers.Var(deers.zeros(2))]).load_state_dict(state)
    bad = {"type": "AdamW", "groups": state["param_groups"], "state": {0: dict(state["state"][0], exp_avg=np.zeros(3))}}
    with pytest.raises(ValueError, match="exp_avg"):
        AdamW([w]).load_state_dict(bad)


def test_parameter_groups_match_torch():
    torch = pytest.importorskip("torch")

    def ours(p):
        return AdamW([{"params": [p[0]]}, {"params": [p[1]], "weight_decay": 0.0}], lr=0.05, weight_decay=0.5)

    def theirs(p):
        return torch.optim.AdamW([{"params": [p[0]]}, {"params": [p[1]], "weight_decay": 0.0}], lr=0.05,
                                 weight_decay=0.5)

    for a, b in zip(_run_deers(ours), _run_torch(torch, theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="unknown options"):
        AdamW([{"params": [deers.Var(deers.zeros(1))], "momentum": 0.9}])


def test_param_groups_behave_as_in_pytorch():
    """Per-group lr written through param_groups and groups added mid-run: the same weights as torch.optim."""
    torch = pytest.importorskip("torch")
    c0 = np.random.default_rng(2).standard_normal(4)

    def run(make_var, make_opt, step):
        w, b, c = make_var(W0), make_var(B0), make_var(c0)
        opt = make_opt([{"params": [w]}])
        step(opt, w, b, c, BATCHES[0])
        opt.param_groups[0]["lr"] = 0.02  # as a schedule does
        opt.add_param_group({"params": [b], "lr": 0.1, "weight_decay": 0.0})
        opt.add_param_group({"params": c})  # one tensor, every option from the defaults
        assert [g["lr"] for g in opt.param_groups] == [0.02, 0.1, 0.05]
        assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0, 0.3]
        with pytest.raises(ValueError, match="more than one"):
            opt.add_param_group({"params": [w]})
        assert len(opt.param_groups) == 3
        for x in BATCHES[1:4]:
            step(opt, w, b, c, x)
        return [w, b, c], opt

    def loss(x, w, b, c):
        return ((x @ w + b * c).tanh() ** 2).sum()

    def deers_step(opt, w, b, c, x):
        opt.step(loss(deers.tensor(x), w, b, c).backward())

    def torch_step(opt, w, b, c, x):
        opt.zero_grad()
        loss(torch.tensor(x), w, b, c).backward()
        opt.step()

    ours, opt = run(lambda a: deers.Var(deers.tensor(a)), lambda g: AdamW(g, lr=0.05, weight_decay=0.3), deers_step)
    theirs, _ = run(lambda a: torch.tensor(a, requires_grad=True),
                    lambda g: torch.optim.AdamW(g, lr=0.05, weight_decay=0.3), torch_step)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-13)

    state = opt.state_dict()  # the added groups and the changed lr round-trip
    assert [g["params"] for g in state["param_groups"]] == [[0], [1], [2]]
    fresh = AdamW([{"params": [deers.Var(deers.tensor(p.numpy()))]} for p in ours], lr=1.0)
    fresh.load_state_dict(state)
    assert [g["lr"] for g in fresh.param_groups] == [0.02, 0.1, 0.05]
    assert [s["step"] for s in fresh.state] == [4, 3, 3]
    with pytest.raises(TypeError, match="'params'"):
        opt.add_param_group([ours[0]])


def test_constructor_errors():
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([deers.Var(deers.zeros(1))], nesterov=True)
    with pytest.raises(TypeError, match="Var"):
        SGD([deers.zeros(2)])
    with pytest.raises(ValueError, match="betas"):
        AdamW([deers.Var(deers.zeros(1))], betas=(1.0, 0.9))


# ---- clipping ----------------------------------------------------------------------------------------------
def _two_grads(scale):
    a, b = deers.Var(deers.zeros(3, dtype="f64")), deers.Var(deers.zeros(2, 2, dtype="f64"))
    ga, gb = np.array([3.0, 0.0, 4.0]) * scale, np.array([[0.0, 12.0], [0.0, 0.0]]) * scale
    grads = ((a * deers.tensor(ga)).sum() + (b * deers.tensor(gb)).sum()).backward()
    return [a, b], grads, ga, gb


def test_clip_grad_norm_scales_in_place_and_returns_the_norm_before():
    params, grads, ga, gb = _two_grads(1.0)  # global norm sqrt(9 + 16 + 144) = 13
    total = clip_grad_norm(params, grads, 6.5)
    assert isinstance(total, deers.Tensor) and total.shape == () and float(total) == pytest.approx(13.0)
    np.testing.assert_allclose(grads[params[0]].numpy(), ga * 6.5 / (13.0 + 1e-6))
    np.testing.assert_allclose(grads[params[1]].numpy(), gb * 6.5 / (13.0 + 1e-6))
    after = math.sqrt(sum(float((grads[p].numpy() ** 2).sum()) for p in params))
    assert after == pytest.approx(6.5, rel=1e-6)
    params, grads, ga, _ = _two_grads(0.1)  # norm 1.3 < 2: untouched
    assert float(clip_grad_norm(params, grads, 2.0)) == pytest.approx(1.3)
    np.testing.assert_array_equal(grads[params[0]].numpy(), ga)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params, grads, ga, gb = _two_grads(1.0)
    ta, tb = torch.zeros(3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    ta.grad, tb.grad = torch.tensor(ga), torch.tensor(gb)
    expected = torch.nn.utils.clip_grad_norm_([ta, tb], 5.0).item()
    assert float(clip_grad_norm(params, grads, 5.0)) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grads[params[0]].numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads[params[1]].numpy(), tb.grad.numpy(), rtol=1e-12)


# ---- schedule -------------------------------------------------------------------------------------------------
def test_linear_schedule_boundaries():
    s = LRSchedule(1e-3, total_steps=100, warmup=10, warmdown=20, final_frac=0.1)
    assert s(0) == pytest.approx(1e-4)  # first step: 1/warmup of peak, never zero
    assert s(4) == pytest.approx(5e-4)
    assert s(9) == pytest.approx(1e-3)  # warmup end
    assert s(10) == s(50) == s(79) == pytest.approx(1e-3)  # constant until the warmdown
    assert s(80) == pytest.approx(1e-3 * (0.1 + 0.9 * 19 / 20))  # warmdown start: first decayed step
    assert s(99) == pytest.approx(1e-4)  # last step: final_frac * peak
    assert s(150) == pytest.approx(1e-4)
    values = [s(i) for i in range(100)]
    assert all(a >= b for a, b in zip(values[9:], values[10:]))  # non-increasing after warmup
    assert s.lr_at(30) == s(30)


def test_schedule_without_warmup_or_warmdown_and_errors():
    s = LRSchedule(0.5, total_steps=10)
    assert [s(i) for i in range(10)] == [0.5] * 10
    down = LRSchedule(1.0, total_steps=5, warmdown=5)
    assert [down(i) for i in range(5)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    with pytest.raises(ValueError, match="exceed"):
        LRSchedule(1.0, total_steps=10, warmup=6, warmdown=5)
    with pytest.raises(ValueError, match="kind"):
        LRSchedule(1.0, total_steps=10, kind="step")
    with pytest.raises(ValueError):
        s(-1)


def test_cosine_schedule():
    s = LRSchedule(2.0, total_steps=110, warmup=10, final_frac=0.25, kind="cosine")
    assert s(0) == pytest.approx(0.2) and s(9) == pytest.approx(2.0)
    assert s(59) == pytest.approx(0.5 + 1.5 * 0.5)  # half way through the decay: the midpoint
    assert s(109) == pytest.approx(0.5)
    values = [s(i) for i in range(9, 110)]
    assert all(a > b for a, b in zip(values, values[1:]))


# ---- state follows its parameters across device moves -----------------------------------------------
def _run_moving(make, devices):
    """Train a small module for len(BATCHES) steps, on devices[i] for step i (moved with to_device)."""
    model = deers.nn.Module()
    model.w, model.b = deers.Var(deers.tensor(W0, dtype="f32")), deers.Var(deers.tensor(B0, dtype="f32"))
    opt = make([model.w, model.b])
    for x, device in zip(BATCHES, devices):
        model.to_device(device)
        opt.step(_loss(deers.tensor(x, dtype="f32", device=device), model.w, model.b).backward())
        for slots in opt.state:
            for value in slots.values():
                assert not isinstance(value, deers.array.NDArray) or value.device == model.w.device
    return model.w.numpy(), model.b.numpy(), opt.state_dict()["state"]


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("name", ["adamw_hyper", "sgd_momentum"])
def test_state_follows_the_parameters_after_to_device(name, device):
    make = OPTIMIZERS[name][0]
    straight = _run_moving(make, ["cpu"] * len(BATCHES))
    moved = _run_moving(make, ["cpu", "cpu", device, device, "cpu", device])
    for a, b in zip(moved[:2], straight[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for i, slots in straight[2].items():  # the moments kept updating on every device
        for slot, value in slots.items():
            np.testing.assert_allclose(moved[2][i][slot], value, rtol=1e-5, atol=1e-6, err_msg=slot)
