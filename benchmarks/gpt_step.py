"""Time full GPT training steps (forward + loss, backward, clip, AdamW) in Deers and, optionally, PyTorch.

    python benchmarks/gpt_step.py --config headline --device cpu --compare torch

Both models have the same design (DESIGN.md) and the same initial weights; their steps are
interleaved in one process so machine noise hits both alike. Peak memory is measured in a
separate child process per framework (ru_maxrss after a few steps), so each number is that
framework's own. On this kind of CPU, unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from common import CONFIGS, PhaseTimer, machine_description, matmul_peak_gflops, peak_rss_mb, step_flops

import deers
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, clip_grad_norm

PHASES = ("forward", "backward", "clip", "optimizer")


def gpt_config(name: str) -> GPTConfig:
    vocab, seq, n_layer, n_head, n_embd, mlp, _ = CONFIGS[name]
    return GPTConfig(vocab_size=vocab, sequence_len=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     mlp_hidden_dim=mlp)


class DeersRunner:
    name = "deers"

    def __init__(self, config: GPTConfig, device: str, dtype: str, seed: int):
        deers.manual_seed(seed)
        self.device = device
        self.model = GPT(config, device=device, dtype=dtype)
        self.params = self.model.parameters()
        self.opt = AdamW(self.params, lr=5e-4, weight_decay=0.1)
        self.timer = PhaseTimer(self.params[0].data.synchronize)

    def batch(self, idx: np.ndarray, targets: np.ndarray):
        return deers.tensor(idx, device=self.device), deers.tensor(targets, device=self.device)

    def step(self, idx, targets) -> float:
        t = self.timer
        t.start()
        loss = self.model.loss(idx, targets)  # fused lm_head + cross-entropy
        value = loss.item()
        t.stamp("forward")
        grads = loss.backward()
        t.stamp("backward")
        clip_grad_norm(self.params, grads, 1.0)
        t.stamp("clip")
        self.opt.step_with_grads(grads)
        t.stamp("optimizer")
        return value


class TorchRunner:
    name = "torch"

    def __init__(self, config: GPTConfig, device: str, dtype: str, state: dict):
        import torch
        from torch_gpt import TorchGPT, TorchGPTConfig, from_deers_state_dict

        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.model = TorchGPT(TorchGPTConfig(**config.__dict__)).to(self.device)
        self.model.load_state_dict(from_deers_state_dict(state), strict=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-4, weight_decay=0.1)
        self.autocast = dtype in ("bf16", "f16")
        self.amp_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        self.timer = PhaseTimer(sync)

    def batch(self, idx: np.ndarray, targets: np.ndarray):
        return (self.torch.from_numpy(idx).to(self.device), self.torch.from_numpy(targets).to(self.device))

    def step(self, idx, targets) -> float:
        torch, t = self.torch, self.timer
        t.start()
        with torch.autocast(self.device, dtype=self.amp_dtype, enabled=self.autocast):
            _, loss = self.model(idx, targets)
        value = loss.item()
        t.stamp("forward")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.stamp("backward")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        t.stamp("clip")
        self.opt.step()
        t.stamp("optimizer")
        return value


def batches(config: GPTConfig, batch: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        data = rng.integers(0, config.vocab_size, (batch, config.sequence_len + 1), dtype=np.int64)
        yield data[:, :-1].copy(), data[:, 1:].copy()


def make_runners(args, config: GPTConfig, which: list[str]) -> list:
    runners = []
    deers_runner = DeersRunner(config, args.device, args.dtype, args.seed)
    if "deers" in which:
        runners.append(deers_runner)
    if "torch" in which:
        runners.append(TorchRunner(config, args.device, args.dtype, deers_runner.model.state_dict()))
    return runners


def memory_probe(args) -> None:
    """Child process: a few steps of one framework, then print its peak RSS as JSON."""
    config = gpt_config(args.config)
    batch = args.batch_size or CONFIGS[args.config][-1]
    (runner,) = make_runners(args, config, [args.memory_probe])
    for idx, targets in batches(config, batch, 3, args.seed):
        runner.step(*runner.batch(idx, targets))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def measure_memory(args, name: str) -> float | None:
    cmd = [sys.executable, __file__, "--config", args.config, "--device", args.device, "--dtype", args.dtype,
           "--memory-probe", name, "--seed", str(args.seed)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        print(f"memory probe for {name} failed:\n{out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="headline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32")
    parser.add_argument("--compare", choices=["torch"], default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-framework peak-RSS child runs")
    parser.add_argument("--memory-probe", choices=["deers", "torch"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        return memory_probe(args)

    config = gpt_config(args.config)
    batch = args.batch_size or CONFIGS[args.config][-1]
    tokens = batch * config.sequence_len
    flops = step_flops(config.vocab_size, config.sequence_len, config.n_layer, config.n_head, config.n_embd,
                       config.mlp_hidden_dim, batch)
    peak = matmul_peak_gflops() if args.device == "cpu" else None
    print(f"machine: {machine_description()}")
    print(f"config {args.config}: {config}, batch {batch}, {tokens} tokens/step, {flops / 1e9:.1f} GFLOP/step")
    if peak:
        print(f"measured float32 matmul peak (NumPy BLAS): {peak:.1f} GFLOP/s")

    runners = make_runners(args, config, ["deers"] + (["torch"] if args.compare else []))
    step_times: dict[str, list[float]] = {r.name: [] for r in runners}
    data = list(batches(config, batch, args.warmup + args.steps, args.seed))
    for i, (idx, targets) in enumerate(data):
        for runner in runners:  # interleaved: deers step i, then torch step i
            inputs = runner.batch(idx, targets)
            if i == args.warmup:
                runner.timer.totals.clear()
            start = time.perf_counter()
            loss = runner.step(*inputs)
            if i >= args.warmup:
                step_times[runner.name].append(time.perf_counter() - start)
            print(f"  {runner.name:5s} step {i}: loss {loss:.4f}  {time.perf_counter() - start:.3f}s", flush=True)

    print()
    print(f"{'':8s}" + "".join(f"{p:>11s}" for p in PHASES) + f"{'step s':>9s}{'tok/s':>9s}{'GFLOP/s':>9s}"
          + (f"{'% peak':>8s}" if peak else "") + f"{'peak MB':>9s}")
    rates = {}
    for runner in runners:
        n = len(step_times[runner.name])
        phases = "".join(f"{runner.timer.totals.get(p, 0.0) / n * 1e3:>9.1f}ms" for p in PHASES)
        step_s = statistics.median(step_times[runner.name])
        rates[runner.name] = tokens / step_s
        memory = None if args.no_memory else measure_memory(args, runner.name)
        print(f"{runner.name:8s}{phases}{step_s:>9.3f}{tokens / step_s:>9.0f}{flops / step_s / 1e9:>9.1f}"
              + (f"{100 * flops / step_s / 1e9 / peak:>7.1f}%" if peak else "")
              + (f"{memory:>9.0f}" if memory else f"{'-':>9s}"))
    if "torch" in rates:
        print(f"\ndeers / torch tokens/s: {rates['deers'] / rates['torch']:.2f}x")


if __name__ == "__main__":
    main()
