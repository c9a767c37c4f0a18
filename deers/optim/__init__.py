"""Optimizers, gradient clipping and learning-rate schedules.

    opt = AdamWConfig(3e-4).weight_decay(0.1).betas(0.9, 0.95).build(model.parameters())
    grads = loss.backward()
    norm = clip_grad_norm(model.parameters(), grads, 1.0)
    opt.set_lr(schedule(step))
    opt.step_with_grads(grads)

Muon (deers.optim.Muon, as torch.optim.Muon) updates hidden 2-D matrices; `muon_with_adamw(model)`
splits a model into (Muon for those, AdamW for embeddings, lm_head and gains), nanochat's recipe.
"""
from .adamw import AdamW, AdamWConfig
from .clip import clip_grad_norm
from .mixed_precision import LossScaler, LowPrecisionCopy
from .muon import Muon, muon_with_adamw
from .optimizer import Optimizer
from .schedule import LRSchedule
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "AdamW", "AdamWConfig", "Muon", "muon_with_adamw", "clip_grad_norm", "LRSchedule",
           "LossScaler", "LowPrecisionCopy"]
