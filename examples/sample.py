"""Generate text from a GPT checkpoint written by examples/tinystories_train.py.

    python examples/sample.py --checkpoint runs/tinystories --prompt "Once upon a time"
    python examples/sample.py --checkpoint runs/tinystories/ckpt.safetensors --temperature 0.8 --seed 1 --num-samples 3

--checkpoint takes a checkpoint file or a run folder (the trainer's --out, also accepted as
--out here) and says on stderr which file it loaded. The model's size comes from the
checkpoint's metadata; the tokenizer is GPT-2's unless the run used a --tokenizer-file (recorded
in the checkpoint) or one is given here.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import deers
from deers import checkpoint
from deers.checkpoint import CheckpointError
from deers.cli import (
    HelpFormatter,
    check_device,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    top_p_value,
)
from deers.models.gpt import GPT, GPTConfig
from deers.tokenizer import Tokenizer, TokenizerUnavailable

CHECKPOINT_NAME = "ckpt.safetensors"  # what examples/tinystories_train.py writes into its --out folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every invalid value is an argparse error before anything is loaded."""
    p = argparse.ArgumentParser(description="Sample text from a Deers GPT checkpoint.", formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", "--out", dest="checkpoint", default="runs/tinystories", metavar="PATH",
                   help=f"a checkpoint file, or a run folder (the trainer's --out) holding {CHECKPOINT_NAME}")
    p.add_argument("--prompt", default="Once upon a time", help="text the samples continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=200, metavar="N", help="tokens generated per sample")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, metavar="X",
                   help="softmax temperature; 0 picks the most likely token every time")
    p.add_argument("--top-k", type=nonnegative_int, default=40, metavar="K",
                   help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=top_p_value, default=None, metavar="P",
                   help="sample among the most likely tokens whose probabilities add up to P (after --top-k)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample (the next ones use seed + 1, ...)")
    p.add_argument("--num-samples", type=positive_int, default=1, metavar="N", help="how many samples to print")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    p.add_argument("--tokenizer-file", default=None, metavar="PATH",
                   help="a .tiktoken rank file (default: the one the run used, else GPT-2's)")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the end of the first story")
    args = p.parse_args(argv)
    check_device(p, args.device)
    if args.tokenizer_file is not None and not Path(args.tokenizer_file).is_file():
        p.error(f"--tokenizer-file {args.tokenizer_file}: no such file")
    return args


def find_checkpoint(path: "str | Path") -> Path:
    """The checkpoint file itself, or the one inside a run folder; SystemExit with a message when there is none."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        others = sorted(path.glob("*.safetensors"))
        if len(others) == 1:
            return others[0]
        listed = f"; it holds {', '.join(p.name for p in others)}: pass one of them" if others else ""
        raise SystemExit(f"error: no {CHECKPOINT_NAME} in the folder {path}{listed}")
    raise SystemExit(f"error: no checkpoint at {path} (train one with: python examples/tinystories_train.py "
                     f"--out {path})")


def load_model(path: "str | Path", device: str) -> tuple[GPT, dict, str]:
    """A GPT built from the config in the checkpoint's metadata, with the checkpoint's weights;
    also the metadata's "extra" dict and the training step it was saved at."""
    _, metadata = checkpoint.read(path)
    try:
        extra = json.loads(metadata["extra"])
        config = GPTConfig(**extra["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a GPT checkpoint of examples/tinystories_train.py "
                              f"(its metadata has no model config: {err})") from err
    model = GPT(config, device=device)
    checkpoint.load(path, model=model, restore_rng=False)
    return model, extra, metadata.get("step", "?")


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    if importlib.util.find_spec("safetensors") is None:
        raise SystemExit("error: sample.py needs the safetensors package (to read checkpoints): "
                         "pip install -e '.[train]' (or pip install 'deers[train]')")
    path = find_checkpoint(args.checkpoint)
    try:
        model, extra, step = load_model(path, args.device)
        tokenizer_file = args.tokenizer_file or extra.get("tokenizer_file")
        if tokenizer_file and not Path(tokenizer_file).is_file():
            raise SystemExit(f"error: the run's tokenizer file {tokenizer_file} is gone; pass --tokenizer-file PATH")
        tokenizer = Tokenizer.from_tiktoken_file(tokenizer_file) if tokenizer_file else Tokenizer.gpt2()
    except (CheckpointError, TokenizerUnavailable) as err:
        raise SystemExit(f"error: {err}") from err
    print(f"checkpoint: {path} (step {step}, {model.num_parameters():,} parameters)", file=sys.stderr, flush=True)
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode(args.prompt)  # stories start after <|endoftext|>
    idx = deers.tensor([prompt_ids], device=args.device)  # (1, T)
    texts = []
    for i in range(args.num_samples):
        out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                             top_p=args.top_p,
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
