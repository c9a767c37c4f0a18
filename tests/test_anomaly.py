"""deers.detect_anomaly: the first op that makes NaN or inf is named, with its module path and the
user code line that called it, whether the anomaly appears in the forward pass or only in backward."""
import re

import numpy as np
import pytest

import deers
from deers import AnomalyError, detect_anomaly
from deers.models.gpt import GPT, GPTConfig
from deers.nn import Linear, Module


class Net(Module):
    def __init__(self):
        super().__init__()
        self.fc = Linear(3, 3)
        self.head = Head()

    def forward(self, x):
        return self.head(self.fc(x))


class Head(Module):
    mode = "log"

    def forward(self, h):
        if self.mode == "log":
            return h.log().sum()  # LOG_LINE: NaN in the forward pass for negative h
        return (h * 0.0).sqrt().sum()  # SQRT_LINE: sqrt(0) is fine forward, its gradient is inf


def test_forward_nan_names_op_module_and_line():
    deers.manual_seed(0)
    net = Net()
    x = deers.tensor(-np.ones((2, 3), np.float32))
    net.fc.weight.set_data(deers.tensor(np.eye(3, dtype=np.float32)))
    with pytest.raises(AnomalyError) as info:
        with detect_anomaly(net):
            net(x)
    message = str(info.value)
    assert message.startswith("Log's forward gave nan in its output (2, 3) f32 on cpu, in module head, called at ")
    assert re.search(r"test_anomaly.py:\d+ in forward: return h.log\(\).sum\(\)", message)


def test_backward_inf_names_the_forward_line():
    deers.manual_seed(0)
    net = Net()
    net.head.mode = "sqrt"
    x = deers.randn(2, 3)
    with detect_anomaly(net):
        loss = net(x)  # finite
        assert np.isfinite(loss.item())
        with pytest.raises(AnomalyError) as info:
            loss.backward()
    message = str(info.value)
    assert message.startswith("Sqrt's backward gave inf in the gradient of its input 0 (2, 3) f32 on cpu")
    assert "in module head" in message and "return (h * 0.0).sqrt().sum()" in message


def test_without_a_model_the_line_is_still_named():
    x = deers.tensor([1.0, -1.0]).attach()
    with pytest.raises(AnomalyError, match=r"^Log's forward gave nan .*test_anomaly.py:\d+ in test_without"):
        with detect_anomaly():
            x.log()


def test_new_inf_is_an_anomaly_but_a_given_one_passes():
    x = deers.tensor([0.0, 1.0])
    with pytest.raises(AnomalyError, match="Log's forward gave inf"):
        with detect_anomaly():
            x.log()  # log(0) = -inf from finite input
    with detect_anomaly():
        masked = deers.where(deers.tensor([True, False]), x, float("-inf"))  # the -inf is an input
        probs = masked.softmax(-1)
    np.testing.assert_allclose(probs.numpy(), [1.0, 0.0])


def test_a_healthy_gpt_step_gives_the_same_gradients_and_leaves_no_hooks():
    deers.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=32, sequence_len=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=16))
    idx = deers.tensor(np.arange(12).reshape(2, 6) % 32)
    plain = model.loss(idx, idx).backward()
    with detect_anomaly(model):
        watched = model.loss(idx, idx).backward()
    for p in model.parameters():
        np.testing.assert_allclose(watched[p].numpy(), plain[p].numpy())
    assert all(m._hooks is None or not (m._hooks.pre or m._hooks.post) for m in model.modules())
    with deers.profiler.profile():  # the thread's slot is free again
        model.loss(idx, idx)


def test_nesting_with_the_profiler_is_refused():
    with detect_anomaly():
        with pytest.raises(RuntimeError, match="already"):
            deers.profiler.profile().start()
    with deers.profiler.profile():
        with pytest.raises(RuntimeError, match="already watching"):
            with detect_anomaly():
                pass


def test_anomaly_mode_on_mps():
    pytest.importorskip("mlx.core")
    x = deers.tensor([1.0, 0.0], device="mps").attach()
    with detect_anomaly():
        y = (x * 0.0).sqrt().sum()
        with pytest.raises(AnomalyError, match=r"^Sqrt's backward gave inf .* f32 on mps"):
            y.backward()
