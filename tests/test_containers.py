"""Containers like PyTorch: ModuleList, ModuleDict, ParameterList, ParameterDict, and Modules/Vars in
plain lists, tuples and dicts — found with stable dotted names by parameters(), named_parameters(),
to_device and state_dict, or refused with ContainerError, never dropped silently. Identity, Flatten.
"""
from __future__ import annotations

import numpy as np
import pytest

import deers
from deers import nn
from devices import ACCELERATORS

try:
    import torch
except ImportError:
    torch = None


class Plain(nn.Module):
    """Modules and Vars in plain containers, mixed with other items."""

    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(2, 3), "not a module", 7, nn.Linear(3, 1, bias=False)]
        self.heads = {"q": nn.Linear(2, 2, bias=False), "scale": deers.Var(deers.ones(2))}
        self.pair = (deers.Var(deers.zeros(1)), [nn.Linear(1, 1, bias=False)])
        self.buffer = deers.zeros(3)  # a plain Tensor: not a parameter, but it moves with to_device


def test_plain_containers_are_found_with_dotted_names():
    model = Plain()
    # a module's own Vars first, then each child's, depth first (PyTorch's order for named_parameters)
    assert [name for name, _ in model.named_parameters()] == [
        "heads.scale", "pair.0", "layers.0.weight", "layers.0.bias", "layers.3.weight", "heads.q.weight",
        "pair.1.0.weight"]
    assert len(model.parameters()) == 7
    assert list(model.state_dict()) == [name for name, _ in model.named_parameters()]
    assert [name for name, _ in model.named_children()] == ["layers.0", "layers.3", "heads.q", "pair.1.0"]


def test_plain_containers_round_trip_through_state_dict():
    source, target = Plain(), Plain()
    target.load_state_dict(source.state_dict())
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_containers_without_stable_names_are_refused():
    model = nn.Module()
    model.group = {nn.Linear(1, 1)}
    with pytest.raises(nn.ContainerError, match="set"):
        model.parameters()
    model.group = {("a", 1): nn.Linear(1, 1)}
    with pytest.raises(nn.ContainerError, match="key"):
        model.named_parameters()
    model.group = {"a.b": deers.Var(deers.zeros(1))}
    with pytest.raises(nn.ContainerError, match="'.'"):
        model.state_dict()
    with pytest.raises(nn.ContainerError):
        nn.ModuleDict({"a.b": nn.Identity()})


def test_module_list_dict_and_parameter_list_name_like_pytorch():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False) for _ in range(2)])
    model.heads = nn.ModuleDict({"q": nn.Linear(2, 1, bias=False), "k": nn.Linear(2, 1, bias=False)})
    model.scales = nn.ParameterList([deers.Var(deers.ones(2)), deers.zeros(3)])
    model.extra = nn.ParameterDict({"gain": deers.ones(1)})
    assert [name for name, _ in model.named_parameters()] == [
        "blocks.0.weight", "blocks.1.weight", "heads.q.weight", "heads.k.weight", "scales.0", "scales.1",
        "extra.gain"]
    assert isinstance(model.scales[1], deers.Var) and len(model.scales) == 2
    model.blocks.append(nn.Linear(2, 2, bias=False))
    model.heads["v"] = nn.Linear(2, 1, bias=False)
    assert len(model.parameters()) == 9 and "v" in model.heads and list(model.heads) == ["q", "k", "v"]
    assert isinstance(model.blocks[1:], nn.ModuleList) and len(model.blocks[1:]) == 2
    with pytest.raises(TypeError, match="ModuleList"):
        model.blocks.append(deers.zeros(1))
    with pytest.raises(TypeError, match="ParameterList"):
        nn.ParameterList([deers.tensor([1, 2])])


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_container_names_match_torch():
    ours = nn.Module()
    ours.blocks = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])
    ours.heads = nn.ModuleDict({"a": nn.Linear(1, 1, bias=False)})
    ours.scales = nn.ParameterList([deers.ones(2)])
    theirs = torch.nn.Module()
    theirs.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)])
    theirs.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(1, 1, bias=False)})
    theirs.scales = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(2))])
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


@pytest.mark.parametrize("device", ACCELERATORS)
def test_to_device_moves_everything_in_containers_and_keeps_var_identity(device):
    model = Plain()
    model.scales = nn.ParameterList([deers.ones(2)])
    before = [id(p) for p in model.parameters()]
    model.to_device(device)
    assert [id(p) for p in model.parameters()] == before
    assert all(p.device == deers.Device.MPS or p.device.kind == device for p in model.parameters())
    assert {p.device for p in model.parameters()} == {model.buffer.device}
    assert model.buffer.device != deers.Device.CPU and model.layers[1] == "not a module"
    x = deers.ones(4, 2, device=device)
    y = model.layers[3](model.layers[0](x))
    assert y.device == x.device
    model.to_device("cpu")
    assert {p.device for p in model.parameters()} == {deers.Device.CPU} and model.buffer.device == deers.Device.CPU


def test_identity_and_flatten():
    x = deers.randn(2, 3, 4)
    assert nn.Identity(54, unused=1)(x) is x
    assert nn.Flatten()(x).shape == (2, 12) and nn.Flatten(0)(x).shape == (24,)
    assert nn.Flatten(0, 1)(x).shape == (6, 4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Identity())
    grads = net(x.attach()).sum().backward()
    assert len(grads) == 3  # the input and Linear's weight and bias
    assert "start_dim=1" in repr(net)
