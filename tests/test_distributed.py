"""deers.distributed: collectives and data-parallel training across MPI processes.

The multi-process tests launch `mpirun -n 2 python tests/dist_scripts/<script>.py OUT_DIR`, which
writes what each rank ends up with into OUT_DIR; the checks run here. They skip when mpirun or
mpi4py is absent. The NCCL path's CPU-side logic is tested without CuPy; its GPU run skips
without CuPy and a CUDA device.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deers
from deers.distributed import ddp, nccl

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "dist_scripts"
TIMEOUT_S = 60


def _have_mpi() -> bool:
    if shutil.which("mpirun") is None:
        return False
    try:
        import mpi4py  # noqa: F401  (only the package: importing mpi4py.MPI would call MPI_Init here)
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="needs mpirun (openmpi-bin) and mpi4py")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",  # CI containers run as root
               OMPI_MCA_rmaps_base_oversubscribe="1",  # 2 ranks even where fewer cores are visible
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_script(script: str, *args: str, ranks: int | None = 2) -> None:
    """Run a dist script under `mpirun -n ranks` (or as a plain process when ranks is None)."""
    command = [sys.executable, str(SCRIPTS / script), *args]
    if ranks is not None:
        command = ["mpirun", "-n", str(ranks), *command]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"


def load_ranks(out: Path, world: int) -> list[dict]:
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(world)]


# ---- collectives ---------------------------------------------------------------------------------
def check_collectives(results: list[dict]) -> None:
    world = len(results)
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    scale_sum = world * (world + 1) / 2  # sum over ranks of (r + 1)
    for r, res in enumerate(results):
        assert int(res["world"]) == world and int(res["rank"]) == r
        assert int(res["local_rank"]) == r  # every rank on this one host
        np.testing.assert_array_equal(res["sum_f32"], base * scale_sum)
        np.testing.assert_allclose(res["mean_f64"], base * scale_sum / world, rtol=1e-15)
        np.testing.assert_array_equal(res["sum_i64"], (base * scale_sum).astype(np.int64))
        np.testing.assert_array_equal(res["sum_f16"], base * scale_sum)
        np.testing.assert_array_equal(res["max_f32"], base * world)
        np.testing.assert_array_equal(res["min_f32"], base)
        assert bool(res["in_place"])
        np.testing.assert_array_equal(res["in_place_values"], base * scale_sum)
        np.testing.assert_allclose(res["mean_transposed"], (base * scale_sum / world).T, rtol=1e-6)
        whole = np.arange(10, dtype=np.float64) * (r + 1)
        whole[2:7] = np.arange(2, 7) * scale_sum
        np.testing.assert_array_equal(res["narrow_whole"], whole)
        np.testing.assert_array_equal(res["bcast_f32"], base + 100 * (world - 1))
        np.testing.assert_array_equal(res["bcast_i64"], base + 100 * (world - 1))
        if "bcast_bf16" in res:
            np.testing.assert_array_equal(res["bcast_bf16"], (base + 100 * (world - 1)).astype(deers.bf16.numpy))
            np.testing.assert_array_equal(res["sum_bf16"], base * scale_sum)  # small integers: exact in bf16
        assert int(res["bcast_object"]) == world - 1
        shapes = [(3, 4), (5,), (2, 3, 2), (7,), (1,)]
        expected = np.concatenate([np.full(int(np.prod(s)), (k + 1) * scale_sum / world) for k, s in enumerate(shapes)])
        for name in ("grads_small_buckets", "grads_one_bucket"):
            np.testing.assert_allclose(res[name], expected, rtol=1e-7)
            assert not bool(res[name + "_has_extra"])
        np.testing.assert_array_equal(res["bcast_params"], np.concatenate([base.reshape(-1), np.zeros(3)]))
        assert bool(res["bcast_params_same_buffers"])
        assert float(res["mean_over_ranks"]) == scale_sum / world
        assert bool(res["any_rank_last"]) and not bool(res["any_rank_none"])
        assert bool(res["main_first_saw_file"])
        if "mps_refused" in res:  # only where MLX is installed
            assert bool(res["mps_refused"])


@needs_mpi
def test_collectives_two_processes(tmp_path):
    run_script("collectives.py", str(tmp_path))
    check_collectives(load_ranks(tmp_path, 2))


@needs_mpi
def test_collectives_single_process_is_a_world_of_one(tmp_path):
    run_script("collectives.py", str(tmp_path), ranks=None)  # no launcher: init() gives a world of 1
    check_collectives(load_ranks(tmp_path, 1))


def _cuda_devices() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device
        return 0


@needs_mpi
@pytest.mark.skipif(_cuda_devices() == 0, reason="needs CuPy and a CUDA device")
def test_collectives_nccl(tmp_path):
    world = min(_cuda_devices(), 2)  # NCCL needs one GPU per rank
    run_script("collectives.py", str(tmp_path), "--device", "cuda", ranks=world)
    check_collectives(load_ranks(tmp_path, world))


# ---- data-parallel training ----------------------------------------------------------------------
@needs_mpi
def test_data_parallel_gpt_matches_one_process_and_resumes_in_one(tmp_path):
    pytest.importorskip("safetensors")
    two, one, resumed = tmp_path / "two", tmp_path / "one", tmp_path / "resumed"
    for folder in (two, one, resumed):
        folder.mkdir()
    run_script("train.py", str(two), "--steps", "6", "--save-at", "3")  # 2 ranks x 4 rows per step
    run_script("train.py", str(one), "--steps", "6", ranks=None)  # 1 process x all 8 rows
    run_script("train.py", str(resumed), "--steps", "6", "--resume", str(two / "ckpt.safetensors"), ranks=None)
    rank0, rank1 = load_ranks(two, 2)
    single = load_ranks(one, 1)[0]
    after_resume = load_ranks(resumed, 1)[0]
    names = [k for k in single if not k.startswith("grad.") and k != "losses"]
    assert "blocks.1.attn.qkv.weight" in names
    for name in rank0:  # the replicas never drift apart: bit-identical weights and reduced gradients
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    for name in names:  # the same training as one process on the union of the batches
        np.testing.assert_allclose(rank0[name], single[name], rtol=1e-10, atol=1e-12, err_msg=name)  # f64
        np.testing.assert_allclose(after_resume[name], single[name], rtol=1e-10, atol=1e-12, err_msg=name)
        grad = "grad." + name  # the averaged first-step gradient (a sum instead of a mean would be 2x)
        np.testing.assert_allclose(rank0[grad], single[grad], rtol=1e-9, atol=1e-15, err_msg=grad)
    np.testing.assert_allclose(rank0["losses"], single["losses"], rtol=1e-12)
    np.testing.assert_allclose(after_resume["losses"], single["losses"][3:], rtol=1e-12)
    assert single["losses"][-1] < single["losses"][0]


TRAINER = ROOT / "examples" / "tinystories_train.py"


@needs_mpi
@pytest.mark.skipif("--ddp" not in TRAINER.read_text(), reason="examples/tinystories_train.py has no --ddp flag yet")
def test_trainer_ddp_two_ranks_then_resume_alone(tmp_path):
    pytest.importorskip("tiktoken")
    pytest.importorskip("safetensors")
    from tiny_bpe import train_byte_bpe, write_tiktoken_file

    sentences = ["Once upon a time there was a cat named Tom.", "Tom liked to play with a red ball.",
                 "One day Lily found a big dog.", "They were happy and went home."]
    rng = np.random.default_rng(0)
    text = "\n<|endoftext|>\n".join(" ".join(rng.permutation(sentences)) for _ in range(200))
    (tmp_path / "stories.txt").write_text(text)
    write_tiktoken_file(train_byte_bpe(text[:3000], 40), tmp_path / "tiny.tiktoken")
    common = ["--text-file", str(tmp_path / "stories.txt"), "--tokenizer-file", str(tmp_path / "tiny.tiktoken"),
              "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--batch-size", "2",
              "--seq-len", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--mlp-hidden", "32",
              "--log-every", "2", "--eval-every", "4", "--eval-batches", "1", "--sample-every", "4",
              "--sample-tokens", "4", "--checkpoint-every", "4", "--val-fraction", "0.05"]
    command = ["mpirun", "-n", "2", sys.executable, str(TRAINER), "--ddp", "--steps", "4", *common]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert sum("on each of 2 ranks" in line for line in lines) == 1  # rank 0 alone prints
    assert [line.split(" | ")[0] for line in lines if "train_loss" in line] == ["step 1/4", "step 2/4", "step 4/4"]
    assert sum(line.startswith("saved ") for line in lines) == 1
    assert (tmp_path / "run" / "ckpt.safetensors").exists()
    resume = [sys.executable, str(TRAINER), "--steps", "6", "--resume", *common]  # 1 process, no --ddp
    done = subprocess.run(resume, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "at step 4" in done.stdout and "saved" in done.stdout and "step 6/6" in done.stdout


# ---- in-process checks (no launcher) -------------------------------------------------------------
def test_import_without_mpi4py_and_init_names_the_extra():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import deers, deers.distributed as dist\n"
            "assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()\n"
            "try:\n    dist.init()\nexcept dist.DistributedUnavailable as e:\n    print(e)\n"
            "else:\n    raise SystemExit('init() without mpi4py did not raise')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "deers[distributed]" in done.stdout


def test_collective_before_init_raises():
    from deers.distributed import comm

    if comm.is_initialized():
        pytest.skip("another test initialized the group in this process")
    with pytest.raises(RuntimeError, match="init"):
        comm.all_reduce(deers.ones(2))


def test_plan_buckets_groups_in_order_by_dtype_and_size():
    cpu = deers.Device.CPU
    f32, f64 = deers.f32, deers.f64
    entries = [(10, f32, cpu), (6, f32, cpu), (3, f64, cpu), (20, f32, cpu), (4, f64, cpu), (1, f32, cpu)]
    plan = ddp.plan_buckets(entries, bucket_bytes=64)  # 16 f32 or 8 f64 per bucket
    assert [b.indices for b in plan] == [(0, 1), (2, 4), (3,), (5,)]
    assert [b.offsets for b in plan] == [(0, 10), (0, 3), (0,), (0,)]
    assert [b.numel for b in plan] == [16, 7, 20, 1]
    assert [b.dtype for b in plan] == [f32, f64, f32, f32]
    one = ddp.plan_buckets(entries)  # default 25 MiB: one bucket per dtype
    assert [b.indices for b in one] == [(0, 1, 3, 5), (2, 4)]
    with pytest.raises(ValueError):
        ddp.plan_buckets(entries, bucket_bytes=0)


def test_plan_buckets_separates_devices():
    entries = [(4, deers.f32, deers.Device.CPU), (4, deers.f32, deers.Device.cuda(0)), (4, deers.f32, deers.Device.CPU)]
    plan = ddp.plan_buckets(entries)
    assert [(b.indices, b.device) for b in plan] == [((0, 2), deers.Device.CPU), ((1,), deers.Device.cuda(0))]


def test_seed_for_rank_and_shard_batch():
    assert [ddp.seed_for_rank(7, r) for r in range(3)] == [7, 8, 9]
    assert ddp.seed_for_rank(7) == 7  # before init: rank 0
    batch = deers.arange(12).reshape(6, 2)
    shards = [ddp.shard_batch(batch, r, 3).numpy() for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(shards), batch.numpy())
    np.testing.assert_array_equal(shards[1], [[4, 5], [6, 7]])
    with pytest.raises(ValueError, match="evenly"):
        ddp.shard_batch(batch, 0, 4)
    assert ddp.job_tokens_per_second(1000, 2.0) == 500.0  # world of one before init


# NCCL's ncclDataType_t and ncclRedOp_t values from nccl.h, which CuPy's constants mirror.
NCCL_H = {"NCCL_UINT8": 1, "NCCL_INT64": 4, "NCCL_FLOAT16": 6, "NCCL_FLOAT32": 7, "NCCL_FLOAT64": 8,
          "NCCL_BFLOAT16": 9, "NCCL_SUM": 0, "NCCL_MAX": 2, "NCCL_MIN": 3, "NCCL_AVG": 4}


def test_nccl_dtype_and_op_mapping():
    assert nccl.nccl_dtype_name(deers.f32) == "NCCL_FLOAT32"
    assert nccl.nccl_dtype_name(deers.f16) == "NCCL_FLOAT16"
    assert nccl.nccl_dtype_name(deers.f64) == "NCCL_FLOAT64"
    assert nccl.nccl_dtype_name(deers.i64) == "NCCL_INT64"
    assert nccl.nccl_op_name("mean") == "NCCL_AVG" and nccl.nccl_op_name("sum") == "NCCL_SUM"
    for name in list(nccl.NCCL_DTYPES.values()) + list(nccl.NCCL_OPS.values()):
        assert name in NCCL_H
    with pytest.raises(ValueError):
        nccl.nccl_op_name("prod")
    fake = deers.DType("c64", np.complex64, False)
    with pytest.raises(deers.DTypeError, match="c64"):
        nccl.nccl_dtype_name(fake)


def test_nccl_constants_match_cupy():
    cupy_nccl = pytest.importorskip("cupy.cuda.nccl")
    for name, value in NCCL_H.items():
        if hasattr(cupy_nccl, name):
            assert getattr(cupy_nccl, name) == value


def test_nccl_transport_without_cupy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(deers.distributed.DistributedUnavailable, match="cuda12"):
        nccl.NcclTransport(mpi_comm=None, rank=0, size=1, device_index=0)


class _FakeNccl:
    """Stands in for cupy.cuda.nccl with the signatures of CuPy's nccl.pyx, recording every call."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_BFLOAT16, NCCL_INT64, NCCL_UINT8 = 6, 7, 8, 9, 4, 1
    NCCL_SUM, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 2, 3, 4
    available = True
    calls: list = []

    @staticmethod
    def get_unique_id():
        return tuple(range(128))

    class NcclCommunicator:
        def __init__(self, ndev, comm_id, rank):
            _FakeNccl.calls.append(("init", ndev, comm_id[:3], rank))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802 (CuPy's name)
            _FakeNccl.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))

        def bcast(self, buff, count, datatype, root, stream):
            _FakeNccl.calls.append(("bcast", buff, count, datatype, root, stream))


def test_nccl_transport_calls_with_cupy_signatures(monkeypatch):
    import contextlib
    import types

    stream = types.SimpleNamespace(ptr=77)
    cuda = types.SimpleNamespace(nccl=_FakeNccl, Device=lambda index: contextlib.nullcontext(),
                                 get_current_stream=lambda: stream)
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.cuda = cuda
    fake_cuda_module = types.ModuleType("cupy.cuda")
    fake_cuda_module.nccl = _FakeNccl
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_cuda_module)

    class FakeMPI:  # rank 1 of 2: receives rank 0's unique id through bcast
        def bcast(self, value, root):
            assert value is None and root == 0
            return tuple(range(128))

    _FakeNccl.calls = []
    transport = nccl.NcclTransport(FakeMPI(), rank=1, size=2, device_index=0)
    region = types.SimpleNamespace(data=types.SimpleNamespace(ptr=4096), size=10)
    transport.all_reduce(region, deers.f32, "mean")
    transport.all_reduce(region, deers.f16, "max")
    transport.broadcast(region, deers.i64, src=1)
    assert _FakeNccl.calls == [("init", 2, (0, 1, 2), 1),
                               ("allReduce", 4096, 4096, 10, 7, 4, 77),  # in place, f32, avg, current stream
                               ("allReduce", 4096, 4096, 10, 6, 2, 77),
                               ("bcast", 4096, 10, 4, 1, 77)]
