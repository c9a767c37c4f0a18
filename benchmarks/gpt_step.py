"""Time full GPT training steps (forward + loss, backward, clip, AdamW) in Deers and, optionally, PyTorch.

    python benchmarks/gpt_step.py --config headline --device cpu --compare torch --repeats 3

Fair by construction: every framework runs in a process of its own, one process at a time, so
no framework's threads or allocator disturb another's (interleaving them in one process made
PyTorch look up to 1.6x slower than it is). With --compare the runs alternate — deers, torch
(sdpa), torch (explicit), then the next repeat in the opposite order — with the same initial
weights (saved by the parent, loaded by each child) and the same batches (one seeded generator).
Each child reports the median of its timed steps, its phases and its own peak memory (VmHWM);
the parent prints the medians and the ranges over the repeats. "torch (sdpa)" is PyTorch's best
eager form (F.scaled_dot_product_attention); "torch (explicit)" is the same maths as docs/design.md
writes it (q k^T, masked softmax, @ v). On this kind of CPU, unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for the run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import CONFIGS, PhaseTimer, machine_description, matmul_peak_gflops, peak_rss_mb, step_flops

PHASES = ("forward", "backward", "clip", "optimizer")
RUNNERS = ("deers", "torch-sdpa", "torch-explicit")


def gpt_config(name: str) -> dict:
    vocab, seq, n_layer, n_head, n_embd, mlp, _ = CONFIGS[name]
    return dict(vocab_size=vocab, sequence_len=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                mlp_hidden_dim=mlp)


class DeersRunner:
    def __init__(self, config: dict, device: str, dtype: str, weights: dict | None = None):
        import deers
        from deers.models.gpt import GPT, GPTConfig
        from deers.optim import AdamW, clip_grad_norm

        self.deers, self.clip = deers, clip_grad_norm
        self.device = device
        self.model = GPT(GPTConfig(**config), device=device, dtype=dtype)
        if weights is not None:  # else the seeded initial weights
            self.model.load_state_dict(weights)
        self.params = self.model.parameters()
        self.opt = AdamW(self.params, lr=5e-4, weight_decay=0.1)
        self.timer = PhaseTimer(self.params[0].data.synchronize)

    def batch(self, idx: np.ndarray, targets: np.ndarray):
        return self.deers.tensor(idx, device=self.device), self.deers.tensor(targets, device=self.device)

    def step(self, idx, targets) -> float:
        t = self.timer
        t.start()
        loss = self.model.loss(idx, targets)  # fused lm_head + cross-entropy
        value = loss.item()
        t.stamp("forward")
        grads = loss.backward()
        t.stamp("backward")
        self.clip(self.params, grads, 1.0)
        t.stamp("clip")
        self.opt.step_with_grads(grads)
        t.stamp("optimizer")
        return value


class TorchRunner:
    def __init__(self, config: dict, device: str, dtype: str, weights: dict, attention: str):
        import torch
        from torch_gpt import TorchGPT, TorchGPTConfig, from_deers_state_dict

        self.torch = torch
        torch.set_num_threads(os.cpu_count() or 1)
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.model = TorchGPT(TorchGPTConfig(**config, attention=attention)).to(self.device)
        self.model.load_state_dict(from_deers_state_dict(weights), strict=True)
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


def batches(config: dict, batch: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        data = rng.integers(0, config["vocab_size"], (batch, config["sequence_len"] + 1), dtype=np.int64)
        yield data[:, :-1].copy(), data[:, 1:].copy()


def worker(args) -> None:
    """Child process: one framework alone; print its measurements as one JSON line."""
    config = gpt_config(args.config)
    batch = args.batch_size or CONFIGS[args.config][-1]
    weights = dict(np.load(args.weights))
    if args.worker == "deers":
        runner = DeersRunner(config, args.device, args.dtype, weights)
    else:
        runner = TorchRunner(config, args.device, args.dtype, weights, args.worker.split("-", 1)[1])
    times, losses = [], []
    for i, (idx, targets) in enumerate(batches(config, batch, args.warmup + args.steps, args.seed)):
        inputs = runner.batch(idx, targets)
        if i == args.warmup:
            runner.timer.totals.clear()
        start = time.perf_counter()
        losses.append(runner.step(*inputs))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    phases = {p: runner.timer.totals.get(p, 0.0) / len(times) for p in PHASES}
    print(json.dumps({"step_s": statistics.median(times), "phases": phases, "losses": losses,
                      "peak_rss_mb": peak_rss_mb()}))


def run_child(args, name: str, weights_path: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--weights", weights_path, "--config", args.config,
           "--device", args.device, "--dtype", args.dtype, "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--seed", str(args.seed)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise SystemExit(f"the {name} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_initial_weights(args, path: str) -> None:
    """The Deers model's initial weights (seeded), which every child loads: same weights for all."""
    import deers
    from deers.models.gpt import GPT, GPTConfig

    deers.manual_seed(args.seed)
    model = GPT(GPTConfig(**gpt_config(args.config)), dtype="f32")
    np.savez(path, **{name: t.numpy() for name, t in model.state_dict().items()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="headline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32")
    parser.add_argument("--compare", choices=["torch"], default=None,
                        help="also time PyTorch (sdpa and explicit attention), each in its own process")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds of one process per framework")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="leave out the peak-memory column")
    parser.add_argument("--worker", choices=RUNNERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    if args.worker:
        return worker(args)

    config = gpt_config(args.config)
    batch = args.batch_size or CONFIGS[args.config][-1]
    tokens = batch * config["sequence_len"]
    flops = step_flops(*(config[k] for k in ("vocab_size", "sequence_len", "n_layer", "n_head", "n_embd",
                                               "mlp_hidden_dim")), batch)
    peak = matmul_peak_gflops() if args.device == "cpu" else None
    print(f"machine: {machine_description()}")
    print(f"config {args.config}: {config}, batch {batch}, {tokens} tokens/step, {flops / 1e9:.1f} GFLOP/step")
    print("each framework is timed alone, in a process of its own, one process at a time")
    if peak:
        print(f"measured float32 matmul peak (NumPy BLAS): {peak:.1f} GFLOP/s")
    names = list(RUNNERS) if args.compare else ["deers"]
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "weights.npz")
        save_initial_weights(args, weights_path)
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):  # alternate the order across repeats
                res = run_child(args, name, weights_path)
                results[name].append(res)
                print(f"  repeat {r + 1}: {name:15s} {res['step_s']:.3f} s/step  "
                      f"first loss {res['losses'][0]:.4f}", flush=True)

    print()
    print(f"{'':16s}" + "".join(f"{p:>11s}" for p in PHASES) + f"{'step s':>9s}{'tok/s':>9s}{'range':>15s}"
          f"{'GFLOP/s':>9s}" + (f"{'% peak':>8s}" if peak else "") + ("" if args.no_memory else f"{'peak MB':>9s}"))
    rates = {}
    for name in names:
        runs = results[name]
        step_s = statistics.median(r["step_s"] for r in runs)
        rates[name] = [tokens / r["step_s"] for r in runs]
        phases = "".join(f"{statistics.median(r['phases'][p] for r in runs) * 1e3:>9.1f}ms" for p in PHASES)
        span = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        memory = max(r["peak_rss_mb"] for r in runs)
        print(f"{name:16s}{phases}{step_s:>9.3f}{tokens / step_s:>9.0f}{span:>15s}{flops / step_s / 1e9:>9.1f}"
              + (f"{100 * flops / step_s / 1e9 / peak:>7.1f}%" if peak else "")
              + ("" if args.no_memory else f"{memory:>9.0f}"))
    for name in names[1:]:
        ratios = [d / t for d, t in zip(rates["deers"], rates[name])]
        print(f"deers / {name}: {statistics.median(ratios):.2f}x tokens/s (per repeat {min(ratios):.2f}-"
              f"{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
