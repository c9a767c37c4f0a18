"""Watch a model learn: per-layer statistics of a training step, attention maps, the logit lens.

    diag = Diagnostics(model)
    with diag.record(step, idx) as rec:       # only on the steps you want to look at
        loss = model.loss(idx, targets)
        grads = loss.backward()
        rec.gradients(grads)                  # before clipping and the optimizer step
        optimizer.step_with_grads(grads)
    print(diag.table())                       # the latest record, worst layers first

For every named parameter a record keeps the weight RMS, the gradient norm and the update-to-weight
ratio |w_after - w_before| / |w_before| (healthy training sits near 1e-3; a layer far above the
others is the one about to blow up). For every block (a module held in a list, such as GPT's
`blocks.3`) it keeps the RMS of the block's output, and per attention head the mean entropy of
its attention rows (a head stuck at 0 attends to one token; at log(T) it attends uniformly).

Nothing here runs unless `record` is entered: hooks are registered on entry and removed on exit,
so steps not recorded pay nothing. The statistics stay 0-d tensors on the model's device until
`history()` or `table()` reads them, so an asynchronous device is not synchronised per op.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from .autograd import Grads, no_grad
from .ops.shape import stack
from .tensor import Tensor


def blocks_of(model: Any) -> list[tuple[str, Any]]:
    """The repeated blocks of a model: named modules held in a list ("blocks.0", "h.3", ...)."""
    return [(name, module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1].isdigit()]


def _rms(x: Tensor) -> Tensor:
    return x.square().mean().sqrt()  # 0-d


class StepRecord:
    """The statistics of one recorded step, as 0-d tensors (head entropies: one (n_head,) per layer)."""

    def __init__(self, step: int):
        self.step = step
        self.weight_rms: dict[str, Tensor] = {}
        self.grad_norm: dict[str, Tensor] = {}
        self.update_ratio: dict[str, Tensor] = {}
        self.activation_rms: dict[str, Tensor] = {}
        self.head_entropy: list[Tensor] = []
        self._before: dict[str, Tensor] = {}
        self._params: list[tuple[str, Any]] = []
        self._handles: list[Any] = []

    def gradients(self, grads: Grads) -> None:
        """Keep the norm of every parameter's gradient (call it before clipping scales them)."""
        with no_grad():
            for name, var in self._params:
                grad = grads.get(var)
                if grad is not None:
                    self.grad_norm[name] = grad.square().sum().sqrt()


class Diagnostics:
    """Per-layer statistics of the recorded steps of `model`, kept in order (see the module docstring)."""

    def __init__(self, model: Any, forward_model: Any = None):
        self.model = model  # whose parameters are measured
        self.forward_model = forward_model if forward_model is not None else model  # whose blocks run forward
        self.records: list[StepRecord] = []

    @contextmanager
    def record(self, step: int, idx: Tensor | None = None) -> Iterator[StepRecord]:
        """Record the step run inside the block; with idx (B, T), also the attention entropy per head."""
        rec = self.begin(step, idx)
        try:
            yield rec
        finally:
            self.end(rec)

    def begin(self, step: int, idx: Tensor | None = None) -> StepRecord:
        """What `record` does on entry: weights measured and kept, hooks on the blocks' outputs."""
        rec = StepRecord(step)
        rec._params = self.model.named_parameters()
        with no_grad():
            for name, var in rec._params:
                rec.weight_rms[name] = _rms(var)
                rec._before[name] = Tensor(var.data.copy())
            if idx is not None:
                rec.head_entropy = [attention_entropy(p) for p in attention_maps(self.forward_model, idx)]
        rec._handles = [block.register_forward_hook(self._activation_hook(rec, name))
                        for name, block in blocks_of(self.forward_model)]
        return rec

    def end(self, rec: StepRecord) -> None:
        """What `record` does on exit: hooks removed, update-to-weight ratios, the record kept."""
        for handle in rec._handles:
            handle.remove()
        with no_grad():
            for name, var in rec._params:
                before = rec._before.pop(name)
                rec.update_ratio[name] = (var - before).square().sum().sqrt() / before.square().sum().sqrt()
        self.records.append(rec)

    @staticmethod
    def _activation_hook(rec: StepRecord, name: str):
        def hook(module, args, output):
            if isinstance(output, Tensor):
                with no_grad():
                    rec.activation_rms[name] = _rms(output.detach())
        return hook

    def history(self) -> list[dict]:
        """Every record as plain numbers: {"step", "weight_rms", "grad_norm", "update_ratio",
        "activation_rms" (name -> float), "head_entropy" (layers x heads nested lists)}."""
        return [_as_numbers(rec) for rec in self.records]

    def table(self, rows: int = 8) -> str:
        """The latest record as a compact text table: the parameters with the largest update-to-weight
        ratio first (the ones changing fastest relative to their size), then every block."""
        if not self.records:
            return "diagnostics: nothing recorded yet"
        latest = _as_numbers(self.records[-1])
        ratio, grad, weight = latest["update_ratio"], latest["grad_norm"], latest["weight_rms"]
        worst = sorted(ratio, key=lambda name: -_finite_or_inf(ratio[name]))[:rows]
        width = max([len(name) for name in worst] + [len(name) for name in latest["activation_rms"]] + [9])
        lines = [f"diagnostics at step {latest['step']}, worst {len(worst)} of {len(ratio)} parameters first:",
                 f"  {'parameter':<{width}}  {'weight_rms':>10}  {'grad_norm':>10}  {'update/weight':>13}"]
        for name in worst:
            lines.append(f"  {name:<{width}}  {weight[name]:>10.3e}  {grad.get(name, math.nan):>10.3e}  "
                         f"{ratio[name]:>13.3e}")
        entropy = latest["head_entropy"]
        lines.append(f"  {'block':<{width}}  {'output_rms':>10}" + ("  head entropy min / mean" if entropy else ""))
        for i, (name, value) in enumerate(latest["activation_rms"].items()):
            heads = f"  {min(entropy[i]):.2f} / {sum(entropy[i]) / len(entropy[i]):.2f}" if i < len(entropy) else ""
            lines.append(f"  {name:<{width}}  {value:>10.3e}{heads}")
        return "\n".join(lines)


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf  # NaN and inf sort first: the worst there is


def _as_numbers(rec: StepRecord) -> dict:
    """One host transfer per kind of statistic: the 0-d tensors stacked, then read."""
    def numbers(table: dict[str, Tensor]) -> dict[str, float]:
        if not table:
            return {}
        values = stack(list(table.values())).numpy().astype(np.float64)
        return dict(zip(table, (float(v) for v in values)))

    return {"step": rec.step, "weight_rms": numbers(rec.weight_rms), "grad_norm": numbers(rec.grad_norm),
            "update_ratio": numbers(rec.update_ratio), "activation_rms": numbers(rec.activation_rms),
            "head_entropy": [h.numpy().astype(np.float64).tolist() for h in rec.head_entropy]}


# ---- attention maps --------------------------------------------------------------------------------
def attention_maps(model: Any, idx: Tensor) -> list[Tensor]:
    """Each layer's attention weights for token ids idx (B, T): a list of (B, n_head, T, T) tensors.

    Works for any model whose attention modules have an `attention_weights` method taking the
    same arguments as their forward: a pre-hook hands it each layer's input during one forward.
    """
    maps: list[Tensor] = []

    def hook(module, args):
        maps.append(module.attention_weights(*args))

    attentions = [m for _, m in model.named_modules() if callable(getattr(m, "attention_weights", None))]
    if not attentions:
        raise TypeError(f"attention_maps: {type(model).__name__} has no module with an attention_weights method")
    handles = [m.register_forward_pre_hook(hook) for m in attentions]
    try:
        with no_grad():
            model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def attention_entropy(p: Tensor) -> Tensor:
    """Mean entropy (nats) of the attention rows of p (B, nh, T, S), per head: (nh,)."""
    plogp = (p * p.clamp(1e-30, 1.0).log()).sum(dim=-1)  # (B, nh, T); 0 log 0 = 0
    return -plogp.mean(dim=(0, 2))  # (nh,)


# ---- the logit lens --------------------------------------------------------------------------------
def logit_lens(model: Any, idx: Tensor, tokenizer: Any = None, top: int = 3) -> list[list[list[tuple[Any, float]]]]:
    """What each block's output would predict if it were the last: for the first row of idx (B, T),
    per layer and per position, the `top` (token, probability) pairs of readout(hidden), where
    readout is the model's `logits_from_hidden` (or its final norm then lm_head). Tokens are
    decoded strings with a tokenizer, else ids. Layer order: the input of the first block
    (the embeddings), then each block's output."""
    readout = getattr(model, "logits_from_hidden", None) or (lambda h: model.lm_head(model.norm_f(h)))
    blocks = blocks_of(model)
    if not blocks:
        raise TypeError(f"logit_lens: {type(model).__name__} holds no list of blocks")
    hidden: list[Tensor] = []
    handles = [blocks[0][1].register_forward_pre_hook(lambda module, args: hidden.append(args[0]))]
    handles += [block.register_forward_hook(lambda module, args, out: hidden.append(out)) for _, block in blocks]
    try:
        with no_grad():
            model(idx)
            layers = []
            for h in hidden:
                probs = readout(h[0:1]).softmax(dim=-1)  # (1, T, V)
                values, ids = probs.topk(top, dim=-1)  # (1, T, top) each
                values, ids = values.numpy()[0], ids.numpy()[0]
                layers.append([[(tokenizer.decode([int(i)]) if tokenizer is not None else int(i), float(v))
                                for i, v in zip(row_ids, row_values)] for row_ids, row_values in zip(ids, values)])
    finally:
        for handle in handles:
            handle.remove()
    return layers
