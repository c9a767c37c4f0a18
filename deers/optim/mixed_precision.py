"""Mixed-precision training pieces: an f16/bf16 working copy of a model beside its f32 master
weights, and dynamic loss scaling for f16.

    low = LowPrecisionCopy(model, GPT(model.config, dtype=deers.bf16))   # same architecture
    low.sync()                                    # master f32 -> the copy's f16/bf16 buffers
    grads = (low.model.loss(x, y) * scaler.scale).backward()
    master_grads = low.master_grads(grads, scaler.scale)   # f32, keyed by the master Vars
    optimizer.step_with_grads(master_grads)

The optimizer updates the f32 master (small updates survive rounding); forward and backward run
in 16 bits. f16's narrow range needs the loss scale (an overflow halves it and skips the step);
bf16 has f32's range and runs with scale 1.
"""
from __future__ import annotations

from ..autograd import Grads
from ..dtype import f32
from ..nn.module import Module


class LowPrecisionCopy:
    """A 16-bit copy `model` of `master` (same parameters in the same order) that runs forward and
    backward; `master` keeps the f32 weights the optimizer updates."""

    def __init__(self, master: Module, copy: Module):
        masters, lows = master.parameters(), copy.parameters()
        if [p.shape for p in masters] != [p.shape for p in lows]:
            raise ValueError("LowPrecisionCopy: the copy must have the master's parameters, in the same order "
                             "and shapes")
        self.model = copy
        self.pairs = list(zip(masters, lows))

    def sync(self) -> None:
        """Cast the master weights into the copy's buffers (in place: the copy's Vars stay the same)."""
        for master, low in self.pairs:
            low.set_data(master)

    def master_grads(self, grads: Grads, loss_scale: float) -> Grads:
        """The copy's gradients as f32 gradients of the master Vars, with the loss scale undone."""
        out = Grads()
        for master, low in self.pairs:
            grad = grads.get(low)  # a Tensor
            if grad is not None:
                out.set(master, grad.to_dtype(f32) * (1.0 / loss_scale))
        return out


class LossScaler:
    """Dynamic loss scaling for f16: an overflow halves the scale (and skips the step); 500 good
    steps double it."""

    def __init__(self, scale: float):
        self.scale = scale
        self.good_steps = 0

    def update(self, finite: bool) -> None:
        """Record whether this step's gradients were finite and adjust the scale."""
        if not finite:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps % 500 == 0:
            self.scale *= 2.0
