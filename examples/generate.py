"""Generate text with a pretrained GPT-2, Llama, Qwen2 or Qwen3 model from Hugging Face, streaming it.

    python examples/generate.py --model gpt2 --prompt "The meaning of life is"
    python examples/generate.py --model Qwen/Qwen3-0.6B --prompt "Deer live in" --temperature 0.7 --top-p 0.9
    python examples/generate.py --model path/to/folder --max-new-tokens 64 --temperature 0

--model takes a local folder (config.json, model.safetensors or its shards, tokenizer.json) or a
repo id, downloaded once into the Hugging Face cache (needs `pip install 'deers[hf]'` and the
network). The text appears token by token as it is generated; stderr ends with the speed of the
prefill (the prompt, in one forward pass) and of the decode (one token per step, with the KV cache).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import deers
from deers.cli import HelpFormatter, check_device, nonnegative_float, nonnegative_int, positive_int
from deers.models import PretrainedError, UnsupportedConfig, from_pretrained
from deers.models.shared import Timing, stream
from deers.tokenizer import Tokenizer, TokenizerUnavailable


def top_p_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every invalid value is an argparse error before anything is loaded."""
    p = argparse.ArgumentParser(description="Stream text from a pretrained Hugging Face model run by Deers.",
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default="gpt2", metavar="PATH_OR_ID", help="a model folder or a Hugging Face repo id")
    p.add_argument("--prompt", default="Once upon a time", help="text the generation continues")
    p.add_argument("--max-new-tokens", type=positive_int, default=128, metavar="N", help="tokens to generate")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, metavar="X",
                   help="softmax temperature; 0 picks the most likely token every time")
    p.add_argument("--top-k", type=nonnegative_int, default=0, metavar="K",
                   help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=top_p_value, default=1.0, metavar="P",
                   help="sample among the most likely tokens whose probabilities sum to p (1: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default=None, choices=["f32", "bf16", "f16", "auto"],
                   help="compute dtype (default f32; auto: the one config.json names)")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the end-of-sequence token")
    args = p.parse_args(argv)
    check_device(p, args.device)
    return args


def end_of_sequence(folder: Path | None, tokenizer: Tokenizer) -> "int | list[int] | None":
    """The ids that end a generation: generation_config.json's eos_token_id, else the tokenizer's."""
    path = folder / "generation_config.json" if folder is not None else None
    if path is not None and path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return eos
    return tokenizer.eot_token


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    try:
        model = from_pretrained(args.model, device=args.device, dtype=args.dtype)
        tokenizer = Tokenizer.from_pretrained(model.source_folder if (model.source_folder / "tokenizer.json").is_file()
                                              else args.model)
    except (PretrainedError, UnsupportedConfig, TokenizerUnavailable) as err:
        raise SystemExit(f"error: {err}") from err
    print(f"model: {args.model} ({type(model).__name__}, {model.num_parameters():,} parameters, "
          f"{model.parameters()[0].dtype.name} on {args.device})", file=sys.stderr)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise SystemExit("error: the prompt encodes to no tokens; give a longer --prompt")
    eos = None if args.keep_going else end_of_sequence(model.source_folder, tokenizer)
    timing = Timing()
    new_ids: list[int] = []
    shown = ""
    print(args.prompt, end="", flush=True)
    for next_ids in stream(model, deers.tensor([prompt_ids], device=args.device), args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                           seed=args.seed, eos_token_id=eos, timing=timing):
        new_ids.append(int(next_ids[0]))
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):  # a character cut between tokens waits for its next byte
            print(text[len(shown):], end="", flush=True)
            shown = text
    print(tokenizer.decode(new_ids)[len(shown):], flush=True)
    prefill = timing.prefill_tokens / timing.prefill_s if timing.prefill_s else float("nan")
    decode = timing.decode_tokens / timing.decode_s if timing.decode_s else float("nan")
    print(f"prefill: {timing.prefill_tokens} tokens at {prefill:.1f} tokens/s | decode: {timing.decode_tokens} "
          f"tokens at {decode:.1f} tokens/s", file=sys.stderr)
    return args.prompt + tokenizer.decode(new_ids)


if __name__ == "__main__":
    main()
