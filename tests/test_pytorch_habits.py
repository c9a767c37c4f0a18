"""What a PyTorch user types gives PyTorch's answer or a clear Deers error (issue 13, items 4, 5, 9):
indices are checked and never wrapped, deers.bf16 is always a dtype, and the raw or misleading
errors of the issue are Deers errors naming the op and the operands. Each runs on every device
here (cpu; mps through MLX)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import deers
from deers.errors import DeersError, DeviceError, DTypeError, ShapeError
from devices import DEVICES

ROOT = Path(__file__).resolve().parents[1]


# ---- 4. indices are checked, never wrapped ----------------------------------------------------------------
INDEX_OPS = {
    "index_select": lambda x, i: x.index_select(0, i),
    "gather": lambda x, i: x.gather(0, i.reshape(1, -1)),
    "embedding": lambda x, i: deers.nn.Embedding(5, 3, vb=deers.nn.ParamStore(device=x.device).root())(i),
    "index_add (index_select's backward)": lambda x, i: x.attach().index_select(0, i.abs()).sum().backward(),
    "cross_entropy": lambda x, i: deers.loss.cross_entropy(x[:2], i),
    "nll_loss": lambda x, i: deers.loss.nll_loss(x[:2].log_softmax(-1), i),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [[0, -1], [1, 5]], ids=["negative", "too large"])
@pytest.mark.parametrize("name", sorted(INDEX_OPS))
def test_out_of_range_ids_raise_index_error(name, bad, device):
    x = deers.randn(5, 3, device=device)
    ids = deers.tensor(bad, device=device)
    if name.startswith("index_add"):  # the forward must succeed, so only the backward sees the bad index
        pytest.skip("covered in test_backend_contract (index_add never sees an index the forward refused)")
    if name in ("cross_entropy", "nll_loss") and bad == [1, 5]:
        ids = deers.tensor([1, 3], device=device)  # 3 classes: 3 is out of range
    with pytest.raises(IndexError, match="out of range"):
        INDEX_OPS[name](x, ids).numpy()  # CUDA checks on the device and raises at the next host read


@pytest.mark.parametrize("device", DEVICES)
def test_python_level_negative_indices_keep_working(device):
    x = deers.tensor(np.arange(12.0).reshape(4, 3), device=device)
    np.testing.assert_array_equal(x[-1].numpy(), [9.0, 10.0, 11.0])
    np.testing.assert_array_equal(x[:, -2:].numpy(), np.arange(12.0).reshape(4, 3)[:, -2:])
    np.testing.assert_array_equal(x[deers.tensor([-1, 0], device=device)].numpy(), [[9, 10, 11], [0, 1, 2]])
    np.testing.assert_array_equal(x[[-4]].numpy(), [[0.0, 1.0, 2.0]])
    with pytest.raises(IndexError, match="out of range"):
        x[deers.tensor([-5], device=device)].numpy()
    assert deers.loss.cross_entropy(x[:2], deers.tensor([-100, 1], device=device)).numpy() > 0  # ignore_index


# ---- 5. deers.bf16 is always a DType --------------------------------------------------------------------
def test_bf16_is_a_dtype_object():
    assert isinstance(deers.bf16, deers.DType) and deers.bf16.is_half and deers.bf16.itemsize == 2


def test_bf16_without_ml_dtypes_raises_a_clear_error_where_it_is_used():
    """In a fresh interpreter where ml_dtypes cannot be imported: bf16 still exists, and every use
    that needs it says which extra to install instead of silently giving f32 or f64."""
    script = r"""
import sys
sys.modules["ml_dtypes"] = None  # import ml_dtypes now raises ImportError
import deers
import deers.models.gpt
from deers.errors import DTypeError
assert isinstance(deers.bf16, deers.DType) and not deers.bf16.available
assert deers.bf16 not in deers.dtype.ALL_DTYPES
uses = {
    "zeros": lambda: deers.zeros(2, dtype=deers.bf16),
    "to_dtype": lambda: deers.ones(2).to_dtype(deers.bf16),
    "tensor": lambda: deers.tensor([1.0], dtype=deers.bf16),
    "by name": lambda: deers.ones(2).to_dtype("bf16"),
    "GPT": lambda: deers.models.gpt.GPT(deers.models.gpt.GPTConfig(vocab_size=8, sequence_len=4, n_layer=1,
                                         n_head=1, n_embd=4, mlp_hidden_dim=8), dtype=deers.bf16),
}
for name, use in uses.items():
    try:
        out = use()
    except DTypeError as err:
        assert "deers[bf16]" in str(err) and "ml_dtypes" in str(err), (name, err)
    else:
        raise AssertionError(f"{name}: gave {out.dtype if hasattr(out, 'dtype') else out} instead of raising")
assert deers.ones(2).dtype is deers.f32  # everything else still works
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ---- 9. clear errors instead of raw or misleading ones ---------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_errors_named_by_the_issue_are_deers_errors(device):
    x = deers.ones(2, 3, device=device)
    with pytest.raises(ShapeError, match=r"max: cannot reduce over an empty dim.*shape \(0, 3\)"):
        deers.zeros(0, 3, device=device).max()
    with pytest.raises(ShapeError, match="cat: zero-dimensional tensor at position 0"):
        deers.cat([deers.tensor(1.0, device=device), deers.tensor(2.0, device=device)])
    with pytest.raises(DeviceError, match="unknown device kind 'gpu'"):
        x.to("gpu")
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        list(deers.tensor(2.0, device=device))
    for err in (ShapeError, DeviceError, DTypeError):
        assert issubclass(err, DeersError)


@pytest.mark.parametrize("device", DEVICES)
def test_pytorch_answers_where_the_issue_found_traps(device):
    x = deers.tensor(np.arange(6.0).reshape(2, 3), device=device)
    assert deers.tensor(2.0, device=device).sum(0).item() == 2.0  # dim 0 of a 0-d tensor, as in torch
    assert (x == None) is False and (x != None) is True  # noqa: E711
    assert x[True].shape == (1, 2, 3) and x[False].shape == (0, 2, 3) and x[None, True].shape == (1, 1, 2, 3)
    mask = deers.tensor([True, False, True], device=device)
    np.testing.assert_array_equal(x[:, mask].numpy(), [[0.0, 2.0], [3.0, 5.0]])  # a mask at dim 1
    np.testing.assert_array_equal(x.clamp(min=deers.tensor([1.0, 1.0, 4.0], device=device)).numpy(),
                                  [[1.0, 1.0, 4.0], [3.0, 4.0, 5.0]])
    assert [row.numpy().tolist() for row in x] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


ZERO_D = {  # op on a 0-d tensor x with dim d; the same spelling in Deers and torch
    "sum": lambda x, d: x.sum(d), "mean": lambda x, d: x.mean(d), "amax": lambda x, d: x.amax(d),
    "max values": lambda x, d: x.max(d)[0], "min indices": lambda x, d: x.min(d)[1],
    "argmax": lambda x, d: x.argmax(d), "argmin": lambda x, d: x.argmin(d), "softmax": lambda x, d: x.softmax(d),
    "log_softmax": lambda x, d: x.log_softmax(d), "logsumexp": lambda x, d: x.logsumexp(d),
    "cumsum": lambda x, d: x.cumsum(d), "flip": lambda x, d: x.flip(d), "transpose": lambda x, d: x.transpose(d, 0),
    "flatten": lambda x, d: x.flatten(d, -1), "squeeze": lambda x, d: x.squeeze(d),
    "unsqueeze": lambda x, d: x.unsqueeze(d), "sort values": lambda x, d: x.sort(d)[0],
    "argsort": lambda x, d: x.argsort(d), "topk values": lambda x, d: x.topk(1, d)[0],
    "var correction 0": lambda x, d: x.var(d, correction=0), "norm": lambda x, d: x.norm(dim=d),
    "index_select": lambda x, d: x.index_select(d, index_like(x, [0])),
    "gather": lambda x, d: x.gather(d, index_like(x, 0)),
    "stack": lambda x, d: lib(x).stack([x, x], d),
}


def lib(x):
    return deers if isinstance(x, deers.Tensor) else pytest.importorskip("torch")


def index_like(x, value):
    """An i64 index on x's device, in x's library."""
    return deers.tensor(value, device=x.device) if isinstance(x, deers.Tensor) else lib(x).tensor(value)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(ZERO_D))
def test_a_0d_tensor_takes_dim_0_and_minus_1_like_pytorch(name, device):
    torch = pytest.importorskip("torch")
    fn = ZERO_D[name]
    for dim in (0, -1):
        out, expected = fn(deers.tensor(2.0, device=device), dim), fn(torch.tensor(2.0), dim)
        assert out.shape == tuple(expected.shape), (name, dim)
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(), err_msg=f"{name} {dim}")
    for dim in (1, -2):  # out of range, as in torch
        with pytest.raises(IndexError, match="out of range"):
            fn(deers.tensor(2.0, device=device), dim)


def test_ops_that_pytorch_refuses_on_a_0d_tensor_say_so():
    x = deers.tensor(2.0)
    for name, fn in (("narrow", lambda: x.narrow(0, 0, 1)), ("split", lambda: x.split(1, -1)),
                     ("chunk", lambda: x.chunk(1, 0)), ("unbind", lambda: x.unbind(-1))):
        with pytest.raises(ShapeError, match=rf"{name}: cannot be applied to a 0-d tensor \(shape \(\) f32 cpu\)"):
            fn()

    # the 0-d paths record ordinary ops, so gradients flow: d/dw (w + softmax(w) + 2 flip(w) + sum(stack(w, w)))
    w = deers.Var(deers.tensor(3.0))
    out = w.sum(-1) + w.softmax(-1) + w.flip(-1) * 2.0 + deers.stack([w, w], -1).sum(-1) + w.mean(0)
    np.testing.assert_allclose(out.backward()[w].numpy(), 1.0 + 0.0 + 2.0 + 2.0 + 1.0)


def test_clamp_with_a_tensor_bound_passes_the_gradient_to_the_bound():
    x = deers.tensor([0.0, 2.0, 5.0]).attach()
    low = deers.tensor([1.0, 1.0, 1.0]).attach()
    grads = x.clamp(min=low).sum().backward()
    np.testing.assert_array_equal(grads[x].numpy(), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(grads[low].numpy(), [1.0, 0.0, 0.0])


def test_mask_index_errors_name_getitem():
    x = deers.ones(2, 3)
    with pytest.raises(IndexError, match=r"getitem: bool mask shape \(2,\) bool cpu at dim 1"):
        x[:, deers.tensor([True, False])]
    with pytest.raises(IndexError, match="getitem: tensors used as indices must be i64 or bool"):
        x[deers.tensor([0.0])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["log(0)", "x / 0", "0 / 0", "softmax of -inf rows", "log_softmax of -inf rows",
                                  "exp overflow", "cross_entropy of -inf logits"])
def test_no_numpy_warning_leaks_from_documented_operations(case, device):
    run = {
        "log(0)": lambda: deers.tensor([0.0, 1.0], device=device).log(),
        "x / 0": lambda: deers.tensor([1.0, -1.0], device=device) / 0.0,
        "0 / 0": lambda: deers.zeros(2, device=device) / deers.zeros(2, device=device),
        "softmax of -inf rows": lambda: deers.full((2, 3), -np.inf, device=device).softmax(-1),
        "log_softmax of -inf rows": lambda: deers.full((2, 3), -np.inf, device=device).log_softmax(-1),
        "exp overflow": lambda: deers.tensor([1000.0], device=device).exp(),
        "cross_entropy of -inf logits": lambda: deers.loss.cross_entropy(deers.full((2, 3), -np.inf, device=device),
                                                                          deers.tensor([0, 1], device=device)),
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run().numpy()
    expected = {"log(0)": [-np.inf, 0.0], "x / 0": [np.inf, -np.inf], "0 / 0": [np.nan, np.nan],
                "exp overflow": [np.inf]}.get(case)
    if expected is not None:
        np.testing.assert_array_equal(out, expected)
    elif "softmax" in case:
        assert np.isnan(out).all()  # as in PyTorch


# ---- the same on the CUDA backend (its kernels emulated on the CPU, or a real GPU when present) ----------
@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    from cuda_emulator import cuda_backend_fixture

    yield from cuda_backend_fixture(request)


def test_the_traps_on_cuda(cuda):
    for name in sorted(INDEX_OPS):
        if not name.startswith("index_add"):
            for bad in ([0, -1], [1, 5]):
                test_out_of_range_ids_raise_index_error(name, bad, "cuda")
                cuda.synchronize()  # nothing pending is left for the next check
    test_python_level_negative_indices_keep_working("cuda")
    test_errors_named_by_the_issue_are_deers_errors("cuda")
    test_pytorch_answers_where_the_issue_found_traps("cuda")
    for name in sorted(ZERO_D):
        test_a_0d_tensor_takes_dim_0_and_minus_1_like_pytorch(name, "cuda")
