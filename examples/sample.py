"""Generate text from a GPT checkpoint written by examples/tinystories_train.py.

    python examples/sample.py --checkpoint runs/tinystories/ckpt.safetensors --prompt "Once upon a time"
    python examples/sample.py --checkpoint ckpt.safetensors --temperature 0.8 --top-k 40 --seed 1 --num-samples 3

The model's size comes from the checkpoint's metadata; the tokenizer is GPT-2's unless the run
used a --tokenizer-file (recorded in the checkpoint) or one is given here.
"""
from __future__ import annotations

import argparse
import json

import deers
from deers import checkpoint
from deers.models.gpt import GPT, GPTConfig
from deers.tokenizer import Tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sample text from a Deers GPT checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/tinystories/ckpt.safetensors")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token every time")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokenizer-file", default=None, help="a .tiktoken rank file (default: the one the run used)")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the end of the first story")
    return p.parse_args(argv)


def load_model(path: str, device: str) -> tuple[GPT, dict]:
    """A GPT built from the config in the checkpoint's metadata, with the checkpoint's weights."""
    _, metadata = checkpoint.read(path)
    extra = json.loads(metadata["extra"])
    model = GPT(GPTConfig(**extra["config"]), device=device)
    checkpoint.load(path, model=model, restore_rng=False)
    return model, extra


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    model, extra = load_model(args.checkpoint, args.device)
    tokenizer_file = args.tokenizer_file or extra.get("tokenizer_file")
    tokenizer = Tokenizer.from_tiktoken_file(tokenizer_file) if tokenizer_file else Tokenizer.gpt2()
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode(args.prompt)  # stories start after <|endoftext|>
    idx = deers.tensor([prompt_ids], device=args.device)  # (1, T)
    texts = []
    for i in range(args.num_samples):
        out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                             seed=args.seed + i)
        new_ids = out.numpy()[0, len(prompt_ids):].tolist()
        if not args.keep_going and tokenizer.eot_token in new_ids:
            new_ids = new_ids[:new_ids.index(tokenizer.eot_token)]
        text = args.prompt + tokenizer.decode(new_ids)
        texts.append(text)
        if args.num_samples > 1:
            print(f"--- sample {i + 1} (seed {args.seed + i})")
        print(text, flush=True)
    return texts


if __name__ == "__main__":
    main()
