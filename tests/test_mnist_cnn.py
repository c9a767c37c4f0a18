"""The CNN of examples/mnist_train.py (--model cnn) is PyTorch's examples/mnist network: the same
state_dict names and shapes, and from the same weights the same loss and every gradient."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import deers
from deers import loss

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist_train.py"


def _example():
    spec = importlib.util.spec_from_file_location("mnist_train_cnn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_cnn_is_pytorchs_mnist_network():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Net(torch.nn.Module):  # pytorch/examples mnist/main.py
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 32, 3, 1), torch.nn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = torch.nn.Dropout(0.25), torch.nn.Dropout(0.5)
            self.fc1, self.fc2 = torch.nn.Linear(9216, 128), torch.nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            return self.fc2(self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))))

    torch.manual_seed(0)
    theirs = Net().eval()  # dropout off in both, so the arithmetic is comparable
    mine = _example().make_model("cpu", "cnn").eval()
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 6)
    expected = F.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
    expected.backward()
    got = loss.cross_entropy(mine(deers.tensor(x)), deers.tensor(y))
    grads = got.backward()
    np.testing.assert_allclose(got.item(), expected.item(), rtol=1e-5)
    parameters = dict(theirs.named_parameters())
    for name, var in mine.named_parameters():
        np.testing.assert_allclose(grads[var].numpy(), parameters[name].grad.numpy(), atol=2e-6, rtol=1e-4, err_msg=name)
