"""Look inside a trained GPT: its attention maps and the logit lens on a prompt, as PNGs and text.

    python examples/inspect_model.py --checkpoint runs/tinystories --prompt "Once upon a time there was a"

Writes <out>/attention.png (one map per layer and head: which earlier tokens each position reads)
and <out>/logit_lens.png (each layer's best guess of the next token, as if it were the last
layer), and prints the logit lens as text. --checkpoint takes what examples/sample.py takes.
See docs/inside.md for how to read them.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import deers
from deers.checkpoint import CheckpointError
from deers.cli import HelpFormatter, check_device, positive_int
from deers.diagnostics import attention_maps, logit_lens
from deers.tokenizer import Tokenizer, TokenizerUnavailable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sample.py beside this file reads checkpoints
from sample import find_checkpoint, load_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is loaded."""
    p = argparse.ArgumentParser(description="Attention maps and the logit lens of a Deers GPT checkpoint.",
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default="runs/tinystories", metavar="PATH",
                   help="a checkpoint file, or a run folder (the trainer's --out)")
    p.add_argument("--prompt", default="Once upon a time there was a little", help="the text to look at")
    p.add_argument("--top", type=positive_int, default=3, metavar="K", help="guesses per layer and position (text)")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the PNGs (default: the checkpoint's folder)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    p.add_argument("--tokenizer-file", default=None, metavar="PATH",
                   help="a .tiktoken rank file (default: the one the run used, else GPT-2's)")
    args = p.parse_args(argv)
    check_device(p, args.device)
    if not args.prompt:
        p.error("--prompt must not be empty")
    return args


def main(argv: list[str] | None = None) -> list:
    args = parse_args(argv)
    if importlib.util.find_spec("safetensors") is None:
        raise SystemExit("error: inspect_model.py needs safetensors to read checkpoints: pip install 'deers[train]'")
    path = find_checkpoint(args.checkpoint)
    try:
        model, extra, step = load_model(path, args.device)
        tokenizer_file = args.tokenizer_file or extra.get("tokenizer_file")
        tokenizer = Tokenizer.from_tiktoken_file(tokenizer_file) if tokenizer_file else Tokenizer.gpt2()
    except (CheckpointError, TokenizerUnavailable, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    ids = tokenizer.encode(args.prompt)[-model.config.sequence_len:]
    tokens = [tokenizer.decode([i]) for i in ids]
    idx = deers.tensor([ids], device=args.device)  # (1, T)
    print(f"checkpoint: {path} (step {step}); prompt of {len(ids)} tokens", file=sys.stderr)

    layers = logit_lens(model, idx, tokenizer, top=args.top)
    names = ["embed"] + [f"block {i}" for i in range(len(layers) - 1)]
    for t, token in enumerate(tokens):
        guesses = " | ".join(f"{name}: {cell[t][0][0]!r} {cell[t][0][1]:.2f}" for name, cell in zip(names, layers))
        print(f"after {token!r:>12} -> {guesses}")
    out = Path(args.out) if args.out else path.parent
    try:
        from deers.dashboard import attention_figure, logit_lens_figure

        print(f"wrote {attention_figure(attention_maps(model, idx), tokens, out / 'attention.png')}")
        print(f"wrote {logit_lens_figure(layers, tokens, out / 'logit_lens.png')}")
    except ImportError as err:
        print(f"note: no pictures ({err})")
    return layers


if __name__ == "__main__":
    main()
