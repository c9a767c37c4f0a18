"""Learning-rate schedules: linear warmup, then constant with a linear warmdown, or cosine decay."""
from __future__ import annotations

import math


class LRSchedule:
    """lr for update number `step` (0-based, 0 <= step < total_steps).

    kind="linear" (the default):
      - warmup: the first `warmup` steps rise linearly from 0, lr = peak * (step + 1) / warmup,
        reaching peak at step warmup - 1;
      - then constant at peak;
      - warmdown: the last `warmdown` steps fall linearly to final_frac * peak, reached at the last
        step total_steps - 1: lr = peak * (f + (1 - f) * (total_steps - 1 - step) / warmdown).
    kind="cosine": after the warmup, lr follows half a cosine from peak down to final_frac * peak
    at the last step (warmdown is not used).
    Steps past the end give final_frac * peak.
    """

    def __init__(self, peak_lr: float, total_steps: int, warmup: int = 0, warmdown: int = 0,
                 final_frac: float = 0.0, kind: str = "linear"):
        if kind not in ("linear", "cosine"):
            raise ValueError(f"LRSchedule: kind must be 'linear' or 'cosine', got {kind!r}")
        if total_steps <= 0 or warmup < 0 or warmdown < 0:
            raise ValueError(f"LRSchedule: need total_steps > 0 and warmup, warmdown >= 0, "
                             f"got {total_steps}, {warmup}, {warmdown}")
        if kind == "linear" and warmup + warmdown > total_steps:
            raise ValueError(f"LRSchedule: warmup ({warmup}) + warmdown ({warmdown}) exceed total_steps ({total_steps})")
        if kind == "cosine" and warmup > total_steps:
            raise ValueError(f"LRSchedule: warmup ({warmup}) exceeds total_steps ({total_steps})")
        if not 0.0 <= final_frac <= 1.0:
            raise ValueError(f"LRSchedule: final_frac must be in [0, 1], got {final_frac}")
        self.peak_lr, self.total_steps = float(peak_lr), int(total_steps)
        self.warmup, self.warmdown = int(warmup), int(warmdown)
        self.final_frac, self.kind = float(final_frac), kind

    def lr_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"LRSchedule: step must be >= 0, got {step}")
        peak, final = self.peak_lr, self.final_frac * self.peak_lr
        if step >= self.total_steps:
            return final
        if step < self.warmup:
            return peak * (step + 1) / self.warmup
        if self.kind == "cosine":
            span = self.total_steps - self.warmup  # steps warmup .. total-1 map to progress (0, 1]
            progress = (step - self.warmup + 1) / span
            return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        left = self.total_steps - 1 - step  # steps still to come after this one
        if left < self.warmdown:
            return final + (peak - final) * left / self.warmdown
        return peak

    def __call__(self, step: int) -> float:
        return self.lr_at(step)

    def __repr__(self) -> str:
        return (f"LRSchedule(peak_lr={self.peak_lr}, total_steps={self.total_steps}, warmup={self.warmup}, "
                f"warmdown={self.warmdown}, final_frac={self.final_frac}, kind={self.kind!r})")
