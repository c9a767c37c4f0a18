"""Module.register_forward_hook / register_forward_pre_hook with PyTorch's semantics: what a hook
sees, replacing inputs and outputs, removal (also from inside a hook), order, and that hooks are
invisible to the module tree (parameters, state_dict, device moves, repr)."""
import numpy as np
import pytest

import deers
from deers.nn import Linear, ReLU, RemovableHandle, Sequential


def small_model():
    deers.manual_seed(0)
    return Sequential(Linear(3, 4), ReLU(), Linear(4, 2))


def test_forward_hook_sees_module_args_and_output():
    model = small_model()
    seen = []
    handle = model[0].register_forward_hook(lambda module, args, output: seen.append((module, args, output)))
    x = deers.randn(5, 3)
    model(x)
    assert isinstance(handle, RemovableHandle)
    (module, args, output), = seen
    assert module is model[0] and args[0] is x
    np.testing.assert_allclose(output.numpy(), model[0](x).numpy())


def test_hooks_replace_input_and_output():
    model = small_model()
    x = deers.randn(5, 3)
    expected = model[2](model[1](model[0](x * 2.0))).numpy()
    with model[0].register_forward_pre_hook(lambda module, args: args[0] * 2.0):  # one value: becomes (value,)
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), model[2](model[1](model[0](x))).numpy())  # removed on exit
    handle = model.register_forward_hook(lambda module, args, output: output * 0.0)
    assert np.all(model(x).numpy() == 0.0)
    handle.remove()
    handle.remove()  # twice is harmless
    assert not np.all(model(x).numpy() == 0.0)


def test_pre_hook_tuple_replaces_all_args_and_hooks_run_in_order():
    model = small_model()
    calls = []
    model[0].register_forward_pre_hook(lambda m, args: calls.append("pre1"))
    model[0].register_forward_pre_hook(lambda m, args: (args[0] + 1.0,))
    model[0].register_forward_hook(lambda m, args, out: calls.append(("post", float(args[0].numpy()[0, 0]))))
    x = deers.zeros(1, 3)
    model[0](x)
    assert calls == ["pre1", ("post", 1.0)]  # the forward hook sees the replaced args


def test_hook_removing_itself_runs_once():
    model = small_model()
    count = []
    holder = {}

    def once(module, args, output):
        count.append(1)
        holder["handle"].remove()

    holder["handle"] = model[2].register_forward_hook(once)
    x = deers.randn(2, 3)
    model(x)
    model(x)
    assert len(count) == 1


def test_gradients_flow_through_hooked_modules():
    model = small_model()
    x = deers.randn(4, 3)
    plain = model(x).sum().backward()
    model[0].register_forward_hook(lambda m, args, out: None)  # observes only
    hooked = model(x).sum().backward()
    for p in model.parameters():
        np.testing.assert_allclose(hooked[p].numpy(), plain[p].numpy())


def test_hooks_are_not_members():
    model = small_model()
    names = [name for name, _ in model.named_parameters()]
    text = repr(model)
    model[0].register_forward_hook(lambda m, args, out: None)
    model.register_forward_pre_hook(lambda m, args: None)
    assert [name for name, _ in model.named_parameters()] == names
    assert list(model.state_dict()) == names and repr(model) == text
    model.to_device("cpu")
    model.load_state_dict(model.state_dict())


def test_a_hook_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        small_model().register_forward_hook(3)


def test_same_semantics_as_torch():
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(3, 2)
    mine = Linear(3, 2)
    mine.load_state_dict({k: v.detach().numpy() for k, v in layer.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    for m, make in ((layer, torch.tensor), (mine, deers.tensor)):
        m.register_forward_pre_hook(lambda module, args: (args[0] * 3,))
        m.register_forward_hook(lambda module, args, out: out + 1)
    np.testing.assert_allclose(mine(deers.tensor(x)).numpy(), layer(torch.tensor(x)).detach().numpy(), rtol=1e-5)


# ---- Tensor.register_hook -------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["plain", "view_grads"])
def test_tensor_hook_sees_and_replaces_the_gradient(engine, monkeypatch):
    import sys

    from deers import autograd, view_grads

    tensor_module = sys.modules["deers.tensor"]  # (deers.tensor is also the function)

    monkeypatch.setattr(tensor_module, "run_backward",
                        autograd.run_backward if engine == "plain" else view_grads.run_backward)
    w = deers.Var(deers.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    h = w * 2.0
    parts = h.narrow(1, 0, 2), h.narrow(1, 2, 1)  # view gradients: regions in the view_grads engine
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()))
    handle = h.register_hook(lambda g: g * 10.0)
    loss = (parts[0] * parts[0]).sum() + parts[1].sum() + h.sum()  # h used three times: one summed gradient
    grads = loss.backward(retain_graph=True)
    dh = np.concatenate([2 * h.numpy()[:, :2], np.ones((2, 1))], axis=1) + 1.0
    np.testing.assert_allclose(seen[0], dh)  # called once, with the whole gradient
    np.testing.assert_allclose(grads[w].numpy(), dh * 10.0 * 2.0)
    handle.remove()
    np.testing.assert_allclose(loss.backward()[w].numpy(), dh * 2.0)


def test_leaf_hook_replaces_the_stored_gradient():
    w = deers.Var(deers.tensor([1.0, -2.0]))
    w.register_hook(lambda g: g.clamp(-0.5, 0.5))
    grads = (w * 3.0).sum().backward()
    np.testing.assert_allclose(grads[w].numpy(), [0.5, 0.5])


def test_tensor_hook_errors():
    with pytest.raises(RuntimeError, match="does not require grad"):
        deers.tensor([1.0]).register_hook(lambda g: g)
    w = deers.Var(deers.tensor([1.0, 2.0]))
    w.register_hook(lambda g: g.sum())
    with pytest.raises(ValueError, match=r"shape \(2,\) returned \(\)"):
        (w * 1.0).sum().backward()


def test_tensor_hooks_match_torch():
    torch = pytest.importorskip("torch")
    x0 = np.array([0.5, -1.0, 2.0])
    results = []
    for lib, make in ((torch, lambda v: torch.tensor(v, requires_grad=True)), (deers, lambda v: deers.Var(deers.tensor(v)))):
        x = make(x0)
        y = x * x
        y.register_hook(lambda g: g * 3)
        z = (y * x).sum()
        if lib is torch:
            z.backward()
            results.append(x.grad.numpy())
        else:
            results.append(z.backward()[x].numpy())
    np.testing.assert_allclose(results[1], results[0])
