"""How much one GPT training step asks of a GPU: kernel launches, GEMMs and host syncs, counted by
benchmarks/cuda_launches.py (the real CUDA backend on a counting runtime; no GPU, no compiler).

Issue 14's targets, held here for f32 and bf16: a step whose loss is not read makes no host sync,
headline L + G <= 350 and GPT-2-124M L + G <= 1,200. (Measured when these bounds were set: headline
f32 167 + 111, bf16 169 + 165; 124M f32 398 + 237, bf16 415 + 489 — bf16 splits the attention GEMMs
whose batch dims do not collapse into one call per sequence, see deers/backend/cuda/gemm.py.)
A change that adds launches past a target or a sync fails here and has to say why.
"""
from __future__ import annotations

import os
import sys

import pytest

import deers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import cuda_launches  # noqa: E402

# (config, dtype) -> the most launches + GEMMs one step may take (issue 14's targets)
BOUNDS = {("headline", "f32"): 350, ("headline", "bf16"): 350, ("gpt2-124m", "f32"): 1200,
          ("gpt2-124m", "bf16"): 1200}


@pytest.mark.parametrize("config,dtype", list(BOUNDS), ids=lambda v: str(v))
def test_a_training_step_makes_no_sync_and_a_bounded_number_of_launches(config, dtype):
    if dtype == "bf16" and not deers.bf16.available:
        pytest.skip("bf16 needs the optional package ml_dtypes (pip install 'deers[bf16]')")
    runtime, seconds = cuda_launches.count_step(config, dtype, steps=2)
    launches, gemms, syncs = (sum(c.values()) for c in (runtime.launches, runtime.gemms, runtime.syncs))
    assert syncs == 0, f"{config} {dtype}: the step waits for the device: {dict(runtime.syncs)}"
    assert launches + gemms <= BOUNDS[config, dtype], cuda_launches.summary(runtime, seconds)
    assert gemms >= 10 and launches >= 10  # the runtime saw the step at all


def test_every_attention_softmax_and_rope_is_one_launch_for_all_heads():
    runtime, _ = cuda_launches.count_step("headline", "f32", steps=1)
    n_layer = cuda_launches.CONFIGS["headline"][2]
    assert runtime.launches["softmax_f32"] == n_layer  # forward: one causal softmax per layer
    assert runtime.launches["softmax_backward_f32"] == n_layer
    assert runtime.launches["rope_f32"] == 4 * n_layer  # q and k, forward and backward
    assert runtime.launches["cross_entropy_f32"] == 1 and runtime.launches["cross_entropy_targets_i64"] == 1


def test_the_summary_line_has_the_documented_form():
    runtime, seconds = cuda_launches.count_step("tiny", "f32", steps=2)
    line = cuda_launches.summary(runtime, seconds)
    assert line.startswith("launches ") and ", gemms " in line and ", syncs 0, host us/op " in line


def test_a_bf16_step_runs_every_gemm_in_bf16_the_lm_head_included():
    if not deers.bf16.available:
        pytest.skip("bf16 needs the optional package ml_dtypes (pip install 'deers[bf16]')")
    runtime, _ = cuda_launches.count_step("headline", "bf16", steps=1)
    dtypes = {key.split()[0] for key in runtime.gemms}
    assert dtypes == {"bf16"}, dict(runtime.gemms)  # tensor cores, f32 accumulation; no f32 copy of the lm_head
    vocab = cuda_launches.CONFIGS["headline"][0]
    assert any(f"m {vocab} " in key or f"n {vocab} " in key for key in runtime.gemms)
