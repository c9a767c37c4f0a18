"""Fine-tune a pretrained GPT-2, Llama, Qwen2 or Qwen3 model on a text file, and save it back in the
Hugging Face format.

    python examples/finetune.py --model gpt2 --text-file stories.txt --out runs/gpt2-stories
    python examples/finetune.py --model Qwen/Qwen3-0.6B --text-file notes.txt --steps 50 --lr 1e-5 --seq-len 128
    python examples/generate.py --model runs/gpt2-stories --prompt "Once upon a time"

The text is tokenized with the model's own tokenizer; each step trains on --batch-size windows of
--seq-len tokens drawn at random from it (next-token cross-entropy, AdamW, gradients clipped to
norm 1). The model is loaded in f32 whatever the checkpoint stores. --out receives config.json and
model.safetensors (transformers' AutoModelForCausalLM.from_pretrained reads them) plus the
tokenizer's files, so generate.py and transformers both run the result.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import deers
from deers.cli import HelpFormatter, check_device, nonnegative_float, positive_float, positive_int
from deers.models import PretrainedError, UnsupportedConfig, from_pretrained, save_pretrained
from deers.optim import AdamW, clip_grad_norm
from deers.tokenizer import Tokenizer, TokenizerUnavailable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every invalid value is an argparse error before anything is loaded."""
    p = argparse.ArgumentParser(description="Fine-tune a pretrained Hugging Face model with Deers.",
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default="gpt2", metavar="PATH_OR_ID", help="a model folder or a Hugging Face repo id")
    p.add_argument("--text-file", required=True, metavar="PATH", help="the text to train on (UTF-8)")
    p.add_argument("--out", default="runs/finetuned", metavar="FOLDER", help="where the fine-tuned model is saved")
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=4, metavar="B", help="windows per step")
    p.add_argument("--seq-len", type=positive_int, default=256, metavar="T", help="tokens per window")
    p.add_argument("--lr", type=positive_float, default=3e-5, help="AdamW learning rate (constant)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay of the matrices")
    p.add_argument("--log-every", type=positive_int, default=10, metavar="N", help="print the loss every N steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the window sampler")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    args = p.parse_args(argv)
    check_device(p, args.device)
    path = Path(args.text_file)
    if not path.is_file():
        p.error(f"--text-file {args.text_file}: no such file")
    if path.stat().st_size == 0:
        p.error(f"--text-file {args.text_file}: the file is empty")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        model = from_pretrained(args.model, device=args.device)
        folder = model.source_folder
        tokenizer = Tokenizer.from_pretrained(folder if (folder / "tokenizer.json").is_file() else args.model)
    except (PretrainedError, UnsupportedConfig, TokenizerUnavailable) as err:
        raise SystemExit(f"error: {err}") from err
    tokens = np.array(tokenizer.encode_ordinary(Path(args.text_file).read_text(encoding="utf-8")), dtype=np.int64)
    T = min(args.seq_len, model.context_len)
    if len(tokens) < T + 1:
        T = len(tokens) - 1
        if T < 1:
            raise SystemExit(f"error: {args.text_file} holds {len(tokens)} tokens; fine-tuning needs at least 2")
        print(f"--seq-len lowered to {T}: the text has {len(tokens)} tokens", file=sys.stderr)
    print(f"model: {args.model} ({type(model).__name__}, {model.num_parameters():,} parameters) | data: "
          f"{args.text_file}, {len(tokens):,} tokens", flush=True)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]  # norm gains and biases: no weight decay
    opt = AdamW([{"params": matrices, "weight_decay": args.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
                lr=args.lr)
    rng = np.random.default_rng(args.seed)
    losses = []
    model.train()
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        offsets = rng.integers(0, len(tokens) - T, args.batch_size)  # (B,)
        windows = np.stack([tokens[o:o + T + 1] for o in offsets])  # (B, T + 1)
        x = deers.tensor(windows[:, :-1], device=args.device)  # (B, T)
        y = deers.tensor(windows[:, 1:], device=args.device)  # (B, T): the next token of each position
        loss = model.loss(x, y)
        grads = loss.backward()
        clip_grad_norm(model.parameters(), grads, 1.0)
        opt.step(grads)
        losses.append(loss.item())
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            seconds = time.perf_counter() - start
            print(f"step {step}/{args.steps} | loss {losses[-1]:.4f} | {seconds:.3f}s | "
                  f"{args.batch_size * T / seconds:.0f} tok/s", flush=True)
    if not math.isfinite(losses[-1]):
        raise SystemExit(f"error: the loss became {losses[-1]}; try a smaller --lr")
    out = Path(args.out)
    save_pretrained(model, out)
    for name in TOKENIZER_FILES:  # so that generate.py and transformers find the tokenizer beside the model
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    print(f"saved {out} (config.json, model.safetensors and the tokenizer)", flush=True)
    return {"losses": losses, "out": out}


if __name__ == "__main__":
    main()
