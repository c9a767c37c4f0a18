"""The layers above the ops on the CUDA backend against the CPU: an nn model trained with AdamW,
and the GPT (logits and every gradient, training steps with clipping, greedy generation, bf16/f16
models tracking the f32 one). Runs on the emulated kernels everywhere and on a GPU when present.
"""
from __future__ import annotations

import pytest

from cuda_emulator import cuda_backend_fixture
from device_models import (LOW_PRECISION, check_gpt_logits_and_gradients_like_cpu,
                           check_gpt_training_and_generation_like_cpu, check_low_precision_gpt_tracks_f32_cpu,
                           check_nn_model_trains_like_cpu)


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def cuda(request):
    yield from cuda_backend_fixture(request)


def test_nn_model_trains_the_same_on_cuda_and_cpu(cuda):
    check_nn_model_trains_like_cpu("cuda")


def test_gpt_logits_and_gradients_match_cpu(cuda):
    check_gpt_logits_and_gradients_like_cpu("cuda")


def test_gpt_training_steps_and_generation_match_cpu(cuda):
    check_gpt_training_and_generation_like_cpu("cuda", new_tokens=5)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: d.name)
def test_low_precision_gpt_on_cuda_tracks_the_f32_cpu_model(cuda, dtype):
    check_low_precision_gpt_tracks_f32_cpu("cuda", dtype)
