"""deers.profiler: per-op forward/backward time, calls and bytes inside a block; nothing outside it."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

import deers
from deers import profiler
from deers.models.gpt import GPT, GPTConfig
from devices import DEVICES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tiny_gpt(device: str) -> GPT:
    deers.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, sequence_len=32, n_layer=2, n_head=2, n_embd=64, mlp_hidden_dim=128),
               device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_profile_of_a_tiny_gpt_step_lists_the_matmuls_and_covers_the_step(device):
    model = tiny_gpt(device)
    idx = deers.randint(0, 256, (4, 32), device=device)
    model.loss(idx, idx).backward()  # warm up: first calls compile kernels on some devices
    began = time.perf_counter()
    with profiler.profile() as prof:
        loss = model.loss(idx, idx)
        grads = loss.backward()
    wall = time.perf_counter() - began
    events = prof.events()
    assert {e.phase for e in events} == {"forward", "backward"}
    attention = [e for e in events if e.name == "CausalAttention"]  # q k^T, softmax and att v in one op
    assert len([e for e in attention if e.phase == "forward"]) == 2  # one per block
    assert len([e for e in attention if e.phase == "backward"]) == 2
    assert not [e for e in events if e.name == "MatMul"]
    linears = [e for e in events if e.name == "Linear"]
    assert len([e for e in linears if e.phase == "forward"]) == 2 * 4  # qkv, attn proj, fc, mlp proj (lm_head is fused)
    assert len([e for e in linears if e.phase == "backward"]) == 2 * 4
    for e in events:
        assert e.seconds >= 0 and e.bytes >= 0 and e.device == str(deers.Device.CPU if device == "cpu" else
                                                                    deers.Device.MPS)
    inside = prof.op_seconds()
    assert inside <= prof.wall_seconds <= wall
    assert inside + prof.overhead_seconds <= prof.wall_seconds
    assert inside >= 0.5 * (prof.wall_seconds - prof.overhead_seconds)  # the ops are most of a step
    assert len(grads) == len(model.parameters())
    table = prof.table()
    assert table.splitlines()[0].split() == ["op", "calls", "fwd", "ms", "bwd", "ms", "total", "ms", "%", "bytes"]
    assert any(line.startswith("Linear ") for line in table.splitlines())
    assert "peak live bytes during the block" in table


def test_events_hold_the_bytes_each_op_allocated_and_the_calls_add_up():
    x = deers.randn(8, 4)
    w = deers.Var(deers.randn(4, 3))
    with profiler.profile() as prof:
        y = (x @ w).relu()
        (y * y).sum().backward()
    forward = [e for e in prof.events() if e.phase == "forward"]
    assert [e.name for e in forward] == ["MatMul", "Relu", "Mul", "Sum"]
    assert forward[0].bytes == 8 * 3 * 4 and forward[0].shape == (8, 3)
    assert forward[0].live_bytes >= 8 * 4 * 4 + 4 * 3 * 4 + 8 * 3 * 4  # x, w and the product are alive
    assert all(e.name in {"MatMul", "Relu", "Mul", "Sum"} for e in prof.events())
    rows = {row.name: row for row in prof.totals()}
    assert rows["MatMul"].calls == 1 and rows["MatMul"].backward_seconds > 0
    assert [row.name for row in prof.totals("name")] == ["MatMul", "Mul", "Relu", "Sum"]
    assert prof.totals("calls")[0].calls >= prof.totals("calls")[-1].calls
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="speed")
    short = prof.table(limit=2)
    assert "(2 more ops)" in short


def test_the_peak_covers_the_block_and_nothing_is_recorded_outside_it():
    with profiler.profile() as prof:
        big = deers.zeros(500, 500) + 1.0  # 1 MB result, freed before the block ends
        del big
    assert prof.peak["cpu"] - prof.start_live["cpu"] >= 1_000_000
    count = len(prof.events())
    deers.randn(3) * 2.0  # after the block: not recorded
    assert len(prof.events()) == count
    assert profiler.profiling.session is None


def test_one_profile_at_a_time_and_an_error_in_an_op_leaves_the_profile_running():
    prof = profiler.profile().start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            profiler.profile().start()
        with pytest.raises(deers.ShapeError):
            deers.randn(2, 3) @ deers.randn(2, 3)
        deers.randn(2) + 1.0
        assert prof.events()[-1].name == "Add"
    finally:
        prof.stop()
    with pytest.raises(RuntimeError, match="not running"):
        prof.stop()


def test_nested_ops_are_part_of_the_outer_op():
    class Twice(deers.Op):
        """A toy op whose forward applies another op: its time is Twice's, not counted again."""

        def forward(self, a):
            return (deers.Tensor(a) + deers.Tensor(a)).data

    with profiler.profile() as prof:
        deers.apply(Twice(), deers.randn(4))
    assert [e.name for e in prof.events()] == ["Twice"]


def test_trainer_prints_the_profile_of_step_n(tmp_path, capsys):
    pytest.importorskip("tiktoken")
    pytest.importorskip("safetensors")
    spec = importlib.util.spec_from_file_location("example_tinystories_train_profile",
                                                  EXAMPLES / "tinystories_train.py")
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    common = ["--data", "sample", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--batch-size", "2", "--seq-len", "16", "--n-layer", "1", "--n-embd", "32", "--log-every", "1",
              "--eval-every", "100", "--eval-batches", "1", "--sample-every", "100", "--checkpoint-every", "100"]
    with pytest.raises(SystemExit):
        trainer.parse_args(common + ["--steps", "2", "--profile", "3"])
    assert "--profile 3: the run has only 2 steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trainer.parse_args(common + ["--steps", "2", "--profile", "0"])
    capsys.readouterr()
    trainer.main(common + ["--steps", "2", "--profile", "2"])
    out = capsys.readouterr().out
    assert out.count("profile of step") == 1
    after = out.split("profile of step 2 (deers.profiler):\n", 1)[1]
    assert after.splitlines()[0].startswith("op ") and "\nCausalAttention " in after and "LinearCrossEntropy" in after
    assert profiler.profiling.session is None
