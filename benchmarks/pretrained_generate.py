"""Prefill and decode speed of a ~100M-parameter Llama-shaped model: Deers against transformers.

    python benchmarks/pretrained_generate.py                       # both, each in its own process
    python benchmarks/pretrained_generate.py --device cuda         # Deers on a GPU (transformers too, if torch sees one)

The model is built once with transformers (random weights: speed does not depend on them) and saved to
--folder: hidden 768, 12 layers, 12 query heads and 4 key/value heads of 64, SwiGLU 2048, vocabulary
32,000 with a tied head (100M parameters). Each framework then runs in a fresh process on the same
machine: greedy generation, batch 1, a --prompt-len prompt, through its own `generate` with a KV cache.
Prefill tokens/s = prompt tokens / time of generate(1 token); decode tokens/s = (N - 1) / (time of
generate(N tokens) - time of generate(1 token)), N = --new-tokens. The best of --repeats runs after
one warm-up (compiled kernels, allocator) counts. Never two frameworks in one process.

Both clocks are reported: wall time, and the process's CPU time (all its threads). On a machine
shared with other jobs the wall time measures the sharing as much as the code; with --threads 1
(each process pinned to one core, torch set to one thread) the CPU time is the work itself.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=True)


def build(folder: Path) -> None:
    import torch
    import transformers

    if (folder / "model.safetensors").is_file():
        return
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE))
    model.save_pretrained(folder)


def run_deers(folder: Path, prompt, new_tokens: int, repeats: int, device: str) -> dict:
    import deers
    from deers.models import from_pretrained

    model = from_pretrained(folder, device=device)
    idx = deers.tensor([prompt], device=device)

    def seconds(n: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        model.generate(idx, n, temperature=0).numpy()
        return time.perf_counter() - start, time.process_time() - cpu

    seconds(8)  # warm-up
    return {"framework": "deers", "parameters": model.num_parameters(), **best(seconds, new_tokens, repeats)}


def run_transformers(folder: Path, prompt, new_tokens: int, repeats: int, device: str) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().to(device)
    idx = torch.tensor([prompt], device=device)

    def seconds(n: int) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0).cpu()
        return time.perf_counter() - start, time.process_time() - cpu

    seconds(8)  # warm-up
    return {"framework": f"transformers {transformers.__version__} (torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads)",
            "parameters": sum(p.numel() for p in model.parameters()), **best(seconds, new_tokens, repeats)}


def best(seconds, new_tokens: int, repeats: int) -> dict:
    """The least wall and CPU seconds of generate(1) and generate(new_tokens) over `repeats` runs each."""
    one = [seconds(1) for _ in range(repeats)]
    full = [seconds(new_tokens) for _ in range(repeats)]
    return {"one": min(w for w, _ in one), "all": min(w for w, _ in full),
            "one_cpu": min(c for _, c in one), "all_cpu": min(c for _, c in full)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "deers-bench-llama-100m"),
                   help="where the model is built (400 MB) and read")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="pin each process to this many cores (0: all)")
    p.add_argument("--only", choices=["deers", "transformers"], help="run one framework in this process (internal)")
    args = p.parse_args()
    folder = Path(args.folder)
    prompt = [(7 * i + 3) % SHAPE["vocab_size"] for i in range(args.prompt_len)]
    if args.only:
        if args.threads:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])  # Deers' pool follows it
            if args.only == "transformers":
                import torch
                torch.set_num_threads(args.threads)
        run = run_deers if args.only == "deers" else run_transformers
        print(json.dumps(run(folder, prompt, args.new_tokens, args.repeats, args.device)))
        return
    build(folder)
    rows = []
    for framework in ("deers", "transformers"):
        torch_device = "cuda" if args.device.startswith("cuda") else args.device
        out = subprocess.run([sys.executable, __file__, "--only", framework, "--folder", str(folder),
                              "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                              "--repeats", str(args.repeats), "--threads", str(args.threads),
                              "--device", args.device if framework == "deers" else torch_device],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if out.returncode != 0:
            print(f"{framework} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Llama-shaped model, batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy), "
          f"device {args.device}, {args.threads or 'all'} cores each")
    print("| framework | parameters | prefill tokens/s | decode tokens/s | prefill tokens per CPU-s | "
          "decode tokens per CPU-s |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rates = [args.prompt_len / row["one"], (args.new_tokens - 1) / (row["all"] - row["one"]),
                 args.prompt_len / row["one_cpu"], (args.new_tokens - 1) / (row["all_cpu"] - row["one_cpu"])]
        print(f"| {row['framework']} | {row['parameters'] / 1e6:.1f}M | " + " | ".join(f"{r:.1f}" for r in rates) + " |")


if __name__ == "__main__":
    main()
