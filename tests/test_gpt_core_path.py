"""GPT(config, fused=False): the model written from core ops gives what the fused model gives.

In float64 both paths must agree on the logits, the loss (`model(idx, targets)` and `model.loss`),
every parameter's gradient and the greedy samples (with and without the KV cache); and the core
path's recorded graph must hold no fused op. Which ops are fused is derived from the code: the
backend primitives numbered 14-22 in deers/backend/__init__.py, the NDArray methods that call
them, and the Op classes that call those methods (each must say `fused = True`).
"""
import functools
import importlib
import inspect
import pkgutil
import re

import numpy as np
import pytest

import deers
from deers.array import NDArray
from deers.autograd import Op, topo_sort
from deers.backend import Backend
from deers.models.gpt import GPT, GPTConfig, KVCache

TINY = dict(vocab_size=13, sequence_len=8, n_layer=2, n_head=2, n_embd=8, mlp_hidden_dim=12)


def twins(seed: int = 0) -> tuple[GPT, GPT]:
    """A fused f64 GPT and a core one holding the same weights."""
    deers.manual_seed(seed)
    fused = GPT(GPTConfig(**TINY), dtype="f64")
    core = GPT(GPTConfig(**TINY), dtype="f64", fused=False)
    core.load_state_dict(fused.state_dict())
    return fused, core


def ids(shape, seed=0) -> deers.Tensor:
    return deers.tensor(np.random.default_rng(seed).integers(0, TINY["vocab_size"], shape))


# ---- which ops are fused, derived from the code ---------------------------------------------------
@functools.cache
def fused_primitives() -> set[str]:
    """The backend contract's items 14-22 (the fused primitives), less `synchronize`, which computes nothing."""
    names, item = set(), None
    for line in inspect.getsource(Backend).splitlines():
        number = re.match(r"\s*#\s*(\d+)\.", line)
        if number:
            item = int(number.group(1))
        method = re.match(r"\s*def (\w+)\(", line)
        if method and item is not None and 14 <= item <= 22 and method.group(1) != "synchronize":
            names.add(method.group(1))
    return names


def refuse_fused_primitives(monkeypatch) -> None:
    """Make every fused primitive of the CPU backend raise an AssertionError naming it."""
    backend = deers.backend.backend_for("cpu")

    def refuse(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the core path called the fused primitive {name}")
        return call

    for name in fused_primitives():
        monkeypatch.setattr(backend, name, refuse(name))


@functools.cache
def fused_array_methods() -> set[str]:
    """NDArray methods that reach a fused primitive (directly, or through another such method)."""
    sources = {name: inspect.getsource(fn) for name, fn in vars(NDArray).items()
               if callable(getattr(fn, "__func__", fn)) and not name.startswith("__")}
    prims = fused_primitives()
    found = {name for name, src in sources.items() if set(re.findall(r"backend\.(\w+)\(", src)) & prims}
    while True:
        more = {name for name, src in sources.items() if set(re.findall(r"\.(\w+)\(", src)) & found} - found
        if not more:
            return found
        found |= more


@functools.cache
def all_op_classes() -> frozenset[type]:
    """Every Op subclass in the package (the backends hold none; a module whose optional
    dependency is missing cannot put its ops in a graph either)."""
    for info in pkgutil.walk_packages(deers.__path__, "deers."):
        if not info.name.startswith("deers.backend"):
            try:
                importlib.import_module(info.name)
            except ImportError:
                continue
    classes, stack = set(), [Op]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in classes and sub.__module__.startswith("deers."):
                classes.add(sub)
                stack.append(sub)
    return frozenset(classes)


def calls_a_fused_primitive(cls: type) -> bool:
    """Whether the class's own code (forward, backward, helpers) calls an NDArray method that runs a fused primitive."""
    return bool(set(re.findall(r"\.(\w+)\(", inspect.getsource(cls))) & fused_array_methods())


def is_fused(op: Op) -> bool:
    return type(op).fused


def test_the_derivation_finds_the_fused_primitives_and_methods():
    assert {"softmax", "cross_entropy", "rmsnorm", "rope", "causal_attention", "adamw_step"} <= fused_primitives()
    assert {"softmax", "cross_entropy", "rms_norm", "rope", "causal_attention"} <= fused_array_methods()


def test_the_fused_marks_match_the_code():
    """`fused = True` exactly on the Op classes of deers.fused and those that call a fused primitive."""
    derived = {cls for cls in all_op_classes()
               if cls.__module__.startswith("deers.fused.") or calls_a_fused_primitive(cls)}
    marked = {cls for cls in all_op_classes() if cls.fused}
    assert {cls.__name__ for cls in derived} >= {"Softmax", "CausalAttention", "RoPE", "RMSNormOp",
                                                 "CrossEntropy", "LinearCrossEntropy", "CausalSoftmax"}
    assert marked == derived, (f"unmarked: {sorted(c.__name__ for c in derived - marked)}, "
                               f"marked but not fused: {sorted(c.__name__ for c in marked - derived)}")


def graph_ops(root: deers.Tensor) -> list[Op]:
    return [node._op for node in topo_sort(root, every_input=True) if node._op is not None]


# ---- the core path ----------------------------------------------------------------------------------
def test_fused_is_the_default_and_a_plain_switch():
    config = GPTConfig(**TINY)
    assert GPT(config).fused is True and GPT(config, fused=False).fused is False


def test_the_core_graph_holds_no_fused_op_and_switching_works():
    fused, _ = twins()
    x, y = ids((2, 6)), ids((2, 6), seed=1)
    for loss in (fused(x, y)[1], fused.loss(x, y)):
        assert any(is_fused(op) for op in graph_ops(loss))  # the check can fail: the fused graph has them
    fused.fused = False  # switched on the built model: every block, the final norm and the loss
    for loss in (fused(x, y)[1], fused.loss(x, y)):
        ops = graph_ops(loss)
        assert not [op.name for op in ops if is_fused(op)]
        names = {op.name for op in ops}
        assert {"index_select", "exp", "log", "matmul", "where", "gather", "linear"} <= names, names
    fused.fused = True
    assert any(is_fused(op) for op in graph_ops(fused.loss(x, y)))


@pytest.mark.parametrize("ignored", [False, True])
def test_core_and_fused_give_the_same_logits_loss_and_gradients_in_f64(ignored):
    fused, core = twins(seed=1)
    x, y = ids((2, 7)), ids((2, 7), seed=2)
    if ignored:  # rows with target -100 count for nothing, on both paths
        y = deers.tensor(np.where(np.arange(7) % 3 == 0, -100, y.numpy()))
    logits_f, loss_f = fused(x, y)
    logits_c, loss_c = core(x, y)
    np.testing.assert_allclose(logits_c.numpy(), logits_f.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(loss_c.item(), loss_f.item(), rtol=1e-12)
    np.testing.assert_allclose(core.loss(x, y).item(), fused.loss(x, y).item(), rtol=1e-12)
    for make_loss in (lambda m: m(x, y)[1], lambda m: m.loss(x, y)):
        grads_f, grads_c = make_loss(fused).backward(), make_loss(core).backward()
        params_c = dict(core.named_parameters())
        for name, p in fused.named_parameters():
            np.testing.assert_allclose(grads_c[params_c[name]].numpy(), grads_f[p].numpy(), rtol=1e-9,
                                       atol=1e-12, err_msg=name)


def test_core_kv_cache_gives_the_full_forward_logits():
    fused, core = twins(seed=2)
    x = ids((2, 8), seed=3)
    full = core(x).numpy()
    np.testing.assert_allclose(full, fused(x).numpy(), rtol=1e-12, atol=1e-13)
    cache = KVCache(core.config.n_layer)
    parts = [core(x[:, :3], cache=cache).numpy(), core(x[:, 3:6], cache=cache).numpy()]  # T = 3 over S = 6
    parts += [core(x[:, t:t + 1], cache=cache).numpy() for t in range(6, 8)]
    assert cache.length == 8
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-12)


def test_core_and_fused_give_the_same_greedy_samples():
    fused, core = twins(seed=3)
    prompt = ids((2, 3), seed=4)
    greedy = fused.generate(prompt, 9, temperature=0.0).numpy()  # runs past sequence_len 8: crop and recompute
    for use_cache in (True, False):
        np.testing.assert_array_equal(core.generate(prompt, 9, temperature=0.0, use_cache=use_cache).numpy(),
                                      greedy)


def test_the_core_path_never_calls_a_fused_primitive(monkeypatch):
    """Not only the graph: forward, backward and cached generation run without items 14-22 at all."""
    fused, core = twins(seed=4)
    x, y = ids((2, 6), seed=5), ids((2, 6), seed=6)
    refuse_fused_primitives(monkeypatch)
    core.loss(x, y).backward()
    core(x, y)[1].backward()
    core.generate(x[:, :2], 7, temperature=0.0)  # past sequence_len 8: cached steps, then a recompute
    with pytest.raises(AssertionError, match="fused primitive"):
        fused.loss(x, y)  # the check can fail
