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

    def seconds(n: int) -> float:
        start = time.perf_counter()
        model.generate(idx, n, temperature=0).numpy()
        return time.perf_counter() - start

    seconds(8)  # warm-up
    return {"framework": "deers", "parameters": model.num_parameters(),
            "one": min(seconds(1) for _ in range(repeats)), "all": min(seconds(new_tokens) for _ in range(repeats))}


def run_transformers(folder: Path, prompt, new_tokens: int, repeats: int, device: str) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().to(device)
    idx = torch.tensor([prompt], device=device)

    def seconds(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0).cpu()
        return time.perf_counter() - start

    seconds(8)  # warm-up
    return {"framework": f"transformers {transformers.__version__} (torch {torch.__version__}, "
                         f"{torch.get_num_threads()} threads)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "one": min(seconds(1) for _ in range(repeats)), "all": min(seconds(new_tokens) for _ in range(repeats))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "deers-bench-llama-100m"),
                   help="where the model is built (400 MB) and read")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=["deers", "transformers"], help="run one framework in this process (internal)")
    args = p.parse_args()
    folder = Path(args.folder)
    prompt = [(7 * i + 3) % SHAPE["vocab_size"] for i in range(args.prompt_len)]
    if args.only:
        run = run_deers if args.only == "deers" else run_transformers
        print(json.dumps(run(folder, prompt, args.new_tokens, args.repeats, args.device)))
        return
    build(folder)
    rows = []
    for framework in ("deers", "transformers"):
        torch_device = "cuda" if args.device.startswith("cuda") else args.device
        out = subprocess.run([sys.executable, __file__, "--only", framework, "--folder", str(folder),
                              "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
                              "--repeats", str(args.repeats),
                              "--device", args.device if framework == "deers" else torch_device],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if out.returncode != 0:
            print(f"{framework} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Llama-shaped model, batch 1, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens (greedy), "
          f"device {args.device}")
    print(f"| framework | parameters | prefill tokens/s | decode tokens/s |\n| --- | --- | --- | --- |")
    for row in rows:
        prefill = args.prompt_len / row["one"]
        decode = (args.new_tokens - 1) / (row["all"] - row["one"])
        print(f"| {row['framework']} | {row['parameters'] / 1e6:.1f}M | {prefill:.0f} | {decode:.1f} |")


if __name__ == "__main__":
    main()
