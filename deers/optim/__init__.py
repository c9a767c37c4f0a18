"""Optimizers, gradient clipping and learning-rate schedules.

    opt = AdamWConfig(3e-4).weight_decay(0.1).betas(0.9, 0.95).build(model.parameters())
    grads = loss.backward()
    norm = clip_grad_norm(model.parameters(), grads, 1.0)
    opt.set_lr(schedule(step))
    opt.step_with_grads(grads)
"""
from .adamw import AdamW, AdamWConfig
from .clip import clip_grad_norm
from .mixed_precision import LossScaler, LowPrecisionCopy
from .optimizer import Optimizer
from .schedule import LRSchedule
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW", "AdamWConfig", "clip_grad_norm", "LRSchedule", "LossScaler",
           "LowPrecisionCopy"]
