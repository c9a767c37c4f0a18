"""Train the GPT of deers.models.gpt on TinyStories (or on any local text file of stories).

    python examples/tinystories_train.py --device cpu
    python examples/tinystories_train.py --text-file stories.txt --steps 300 --n-layer 4 --n-embd 128 --seq-len 128
    python examples/tinystories_train.py --out runs/tinystories --resume      # continue where it stopped

The first run downloads the TinyStories text and tokenizes it with GPT-2's BPE into
<data-dir>/train.bin and val.bin; later runs reuse them. Every --log-every steps it prints

    step 50/12000 | train_loss 9.2451 | lr 5.00e-05 | 1.204s | 4267 tok/s

(train_loss is the mean over those steps, the time is the mean wall time of one step), every
--eval-every steps `step N | val_loss X`, and every --sample-every steps a `sample: ...` line
generated from "Once upon a time". Checkpoints (<out>/ckpt.safetensors, written atomically) hold
the model, the optimizer, the step, every RNG state and the loss history, so --resume continues
with exactly the losses an uninterrupted run would have had. Ctrl-C finishes the current step,
then writes a checkpoint and the loss-curve plot (<out>/loss.png, needs matplotlib).

With --dtype bf16 or f16 the forward and backward run in that dtype on a copy of the model while
the master weights and the AdamW state stay in f32 (f16 also scales the loss to keep small
gradients from underflowing).

With --ddp, run under `mpirun -n N`: each rank takes --batch-size / N rows of every global batch
(all ranks draw the same global batch and keep their shard, so the run trains like one process
with the same --batch-size, and a checkpoint resumes in any number of processes); gradients are
averaged across ranks before each step; rank 0 alone logs, evaluates, samples and saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

import deers
import deers.distributed as dist
from deers import checkpoint
from deers.autograd import Grads
from deers.dataset import TokenBinDataset
from deers.dtype import as_dtype
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, LRSchedule, clip_grad_norm
from deers.tinystories import prepare_tinystories
from deers.tokenizer import Tokenizer

CHECKPOINT_NAME = "ckpt.safetensors"
PLOT_NAME = "loss.png"
# Settings that define a run: on --resume they are taken from the checkpoint, not the command line.
RUN_SETTINGS = ("dtype", "batch_size", "seq_len", "n_layer", "n_head", "n_embd", "mlp_hidden", "lr", "warmup",
                "warmdown", "weight_decay", "grad_clip", "seed", "text_file", "data_dir", "tokenizer_file",
                "val_fraction")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small GPT on TinyStories with Deers.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"],
                   help="compute dtype (master weights and optimizer state stay f32)")
    p.add_argument("--steps", type=int, default=12000, help="number of optimizer steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256, help="context length (also the model's sequence_len)")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--mlp-hidden", type=int, default=768)
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default: min(500, steps // 10))")
    p.add_argument("--warmdown", type=int, default=None,
                   help="final steps over which the lr falls linearly to 0 (default: steps // 5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay of the weight matrices")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: no clipping)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-batches", type=int, default=20, help="validation batches per evaluation")
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--sample-tokens", type=int, default=64, help="tokens generated per sample")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--out", default="runs/tinystories", help="folder for checkpoints and the loss plot")
    p.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--text-file", default=None,
                   help="train on this local text file (stories separated by <|endoftext|>) instead of downloading")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of --text-file's stories held out")
    p.add_argument("--data-dir", default=None,
                   help="where train.bin/val.bin live "
                        "(default: data/tinystories_gpt2, or data/<text file>_<tokenizer>)")
    p.add_argument("--tokenizer-file", default=None,
                   help="a .tiktoken rank file to use instead of GPT-2's BPE (<|endoftext|> gets the next id)")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel over the ranks of `mpirun -n N` (each takes batch-size / N rows)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "eval_batches", "sample_every",
                 "checkpoint_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


# ---- data --------------------------------------------------------------------------------------------
def load_tokenizer(args: argparse.Namespace) -> Tokenizer:
    if args.tokenizer_file:
        return Tokenizer.from_tiktoken_file(args.tokenizer_file)
    return Tokenizer.gpt2()


def load_data(args: argparse.Namespace, tokenizer: Tokenizer) -> tuple[TokenBinDataset, TokenBinDataset]:
    data_dir = args.data_dir
    if data_dir is None:
        data_dir = "data/tinystories_gpt2" if args.text_file is None else \
            f"data/{Path(args.text_file).stem}_{tokenizer.name}"
    train_bin, val_bin = prepare_tinystories(root=data_dir, tokenizer=tokenizer, text_file=args.text_file,
                                             val_fraction=args.val_fraction)
    return TokenBinDataset.load(train_bin, args.seq_len), TokenBinDataset.load(val_bin, args.seq_len)


# ---- mixed precision ---------------------------------------------------------------------------------
class LowPrecisionCopy:
    """A copy of the model in f16/bf16 that runs forward and backward; the f32 master keeps the weights.

    Each step: `sync()` casts the master weights into the copy; after backward, `master_grads`
    casts the copy's gradients to f32 (undoing the loss scale) keyed by the master parameters.
    """

    def __init__(self, master: GPT, dtype: deers.DType, device: str):
        self.model = GPT(master.config, dtype=dtype, device=device)
        self.pairs = list(zip(master.parameters(), self.model.parameters()))

    def sync(self) -> None:
        for master, low in self.pairs:
            low.set_data(master)  # cast f32 -> f16/bf16 into the copy's buffer

    def master_grads(self, grads: Grads, loss_scale: float) -> Grads:
        out = Grads()
        for master, low in self.pairs:
            grad = grads.array(low)
            if grad is not None:
                out.set_array(master, grad.cast(deers.f32) * (1.0 / loss_scale))
        return out


class LossScaler:
    """Dynamic loss scaling for f16: an overflow halves the scale (and skips the step); 500 good steps double it."""

    def __init__(self, scale: float):
        self.scale = scale
        self.good_steps = 0

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps % 500 == 0:
            self.scale *= 2.0


# ---- pieces of the loop -------------------------------------------------------------------------------
def make_optimizer(model: GPT, args: argparse.Namespace) -> AdamW:
    """AdamW with weight decay on the weight matrices only (not on the RMSNorm gains)."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    gains = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": args.weight_decay}, {"params": gains, "weight_decay": 0.0}]
    return AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def evaluate(model: GPT, val: TokenBinDataset, batch_size: int, max_batches: int, device: str) -> float:
    """Mean loss over the first `max_batches` batches of consecutive validation windows (always the same ones)."""
    total, rows = 0.0, 0
    with deers.no_grad():
        for i, (inputs, targets) in enumerate(val.iter_batches(batch_size, device)):
            if i == max_batches:
                break
            loss = model.loss(inputs, targets)
            total += loss.item() * inputs.shape[0]
            rows += inputs.shape[0]
    return total / rows


def sample_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, seed: int, device: str,
                temperature: float = 1.0, top_k: int | None = 40) -> str:
    """Continue `prompt` (after an <|endoftext|>, as stories start in the data), up to the next story's start."""
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode(prompt)
    idx = deers.tensor([prompt_ids], device=device)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    new_ids = out.numpy()[0, len(prompt_ids):].tolist()
    if tokenizer.eot_token in new_ids:
        new_ids = new_ids[:new_ids.index(tokenizer.eot_token)]
    return prompt + tokenizer.decode(new_ids)


def say(text: str) -> None:
    """Print on rank 0 only (every process of a data-parallel run executes the same lines)."""
    if dist.is_main():
        print(text, flush=True)


def plot_losses(history: dict, path: Path) -> None:
    """Train (per step, and its running mean) and validation loss against the step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"note: matplotlib is not installed, so {path} was not written (pip install 'deers[plot]')")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window})")
    if history["val"]:
        steps, losses = zip(*history["val"])
        ax.plot(steps, losses, "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    say(f"wrote {path}")


class StopRequest:
    """The first Ctrl-C stops the loop after the current step (a checkpoint is never torn); a second one aborts."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "StopRequest":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C then raises KeyboardInterrupt as usual
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        say("\ninterrupted: finishing this step, then saving (Ctrl-C again to abort without saving)")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def save(path: Path, model: GPT, optimizer: AdamW, step: int, args: argparse.Namespace, history: dict,
         loss_scale: float) -> None:
    run = {name: getattr(args, name) for name in RUN_SETTINGS}
    checkpoint.save(path, model=model, optimizer=optimizer, step=step,
                    extra={"config": dataclasses.asdict(model.config), "run": run, "history": history,
                           "loss_scale": loss_scale, "tokenizer_file": args.tokenizer_file})


def restore_run_settings(args: argparse.Namespace, path: Path) -> None:
    """Take the settings that define the run from the checkpoint's metadata (see RUN_SETTINGS)."""
    if not path.exists():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    _, metadata = checkpoint.read(path)
    saved = json.loads(metadata["extra"])["run"]
    for name in RUN_SETTINGS:
        setattr(args, name, saved[name])


# ---- the loop ----------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict:
    """Run the training described by `args`; returns the loss history {"train": [[step, loss]], "val": [...]}."""
    out = Path(args.out)
    ckpt_path = out / CHECKPOINT_NAME
    if args.ddp:
        dist.init()
        args.device = dist.device_for_rank(args.device)  # "cuda" -> this rank's GPU
    world = dist.world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} does not split evenly over {world} ranks")
    if args.resume:
        restore_run_settings(args, ckpt_path)
    for name in ("text_file", "tokenizer_file"):  # absolute, so the checkpoint works from any folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    warmup = args.warmup if args.warmup is not None else min(500, args.steps // 10)
    warmdown = args.warmdown if args.warmdown is not None else args.steps // 5
    dtype = as_dtype(args.dtype)

    deers.manual_seed(args.seed)
    tokenizer = load_tokenizer(args)
    with dist.main_first():  # rank 0 downloads and tokenizes; the others then find the files
        train_data, val_data = load_data(args, tokenizer)
    config = GPTConfig(vocab_size=tokenizer.vocab_size(), sequence_len=args.seq_len, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, mlp_hidden_dim=args.mlp_hidden)
    model = GPT(config, device=args.device)  # f32 master weights
    if args.ddp:
        dist.broadcast_parameters(model.parameters())  # the same seed made the same init; make sure
    low = LowPrecisionCopy(model, dtype, args.device) if dtype is not deers.f32 else None
    optimizer = make_optimizer(model, args)
    schedule = LRSchedule(args.lr, args.steps, warmup=warmup, warmdown=warmdown)
    scaler = LossScaler(2.0 ** 12 if dtype is deers.f16 else 1.0)
    history: dict = {"train": [], "val": []}
    step = 0
    if args.resume:
        info = checkpoint.load(ckpt_path, model=model, optimizer=optimizer)  # also restores every RNG state
        step, history, scaler.scale = info["step"], info["extra"]["history"], info["extra"]["loss_scale"]
        say(f"resumed from {ckpt_path} at step {step} (model, data, optimizer, dtype and seed settings "
            f"come from the checkpoint)")
    say(f"model: {model.num_parameters():,} parameters, {config}")
    ranks = f", {args.batch_size // world} rows on each of {world} ranks" if world > 1 else ""
    say(f"data: {len(train_data):,} train tokens, {len(val_data):,} val tokens; "
        f"{args.batch_size} x {args.seq_len} tokens per step{ranks} on {args.device} in {args.dtype}")

    tokens_per_step = args.batch_size * args.seq_len
    interval_losses: list[float] = []
    interval_time = 0.0
    try:
        with StopRequest() as stop:
            while step < args.steps and not dist.any_rank(stop.requested):  # ranks stop at the same step
                started = time.perf_counter()
                lr = schedule(step)
                inputs, targets = train_data.sample_batch(args.batch_size, args.device)  # (B, T) each
                if world > 1:  # every rank drew the same global batch; keep this rank's rows
                    inputs, targets = dist.shard_batch(inputs), dist.shard_batch(targets)  # (B / world, T)
                net = model
                if low is not None:
                    low.sync()
                    net = low.model
                loss = net.loss(inputs, targets)  # fused lm_head + cross-entropy: no (B, T, V) logits
                grads = loss.backward() if scaler.scale == 1.0 else (loss * scaler.scale).backward()
                if low is not None:
                    grads = low.master_grads(grads, scaler.scale)
                if args.ddp:
                    dist.all_reduce_grads(model.parameters(), grads)  # mean over ranks: the global batch's gradient
                norm = clip_grad_norm(model.parameters(), grads, args.grad_clip if args.grad_clip > 0 else math.inf)
                if math.isfinite(norm):
                    optimizer.set_lr(lr)
                    optimizer.step_with_grads(grads)
                elif dtype is deers.f16:
                    say(f"step {step + 1}: gradient overflow at loss scale {scaler.scale:g}, step skipped")
                scaler.update(math.isfinite(norm))
                loss_value = dist.mean_over_ranks(loss.item())  # the global batch's loss
                step += 1
                interval_time += time.perf_counter() - started
                interval_losses.append(loss_value)
                history["train"].append([step, loss_value])

                if step % args.log_every == 0 or step == args.steps:
                    per_step = interval_time / len(interval_losses)
                    say(f"step {step}/{args.steps} | train_loss {sum(interval_losses) / len(interval_losses):.4f} | "
                        f"lr {lr:.2e} | {per_step:.3f}s | {tokens_per_step / per_step:.0f} tok/s")
                    interval_losses, interval_time = [], 0.0
                if not dist.is_main():  # evaluation, samples and checkpoints are rank 0's
                    continue
                if step % args.eval_every == 0 or step == args.steps:
                    val_loss = evaluate(model, val_data, args.batch_size, args.eval_batches, args.device)
                    history["val"].append([step, val_loss])
                    say(f"step {step} | val_loss {val_loss:.4f}")
                if step % args.sample_every == 0 or step == args.steps:
                    text = sample_text(model, tokenizer, args.prompt, args.sample_tokens, args.seed + step, args.device)
                    say("sample: " + " ".join(text.split()))
                if step % args.checkpoint_every == 0 and step < args.steps:
                    save(ckpt_path, model, optimizer, step, args, history, scaler.scale)
    except KeyboardInterrupt:
        say(f"aborted during step {step + 1}; {ckpt_path} keeps the last periodic checkpoint")
        if dist.is_main():
            plot_losses(history, out / PLOT_NAME)
        raise
    if dist.is_main():
        save(ckpt_path, model, optimizer, step, args, history, scaler.scale)
        say(f"saved {ckpt_path} at step {step}")
        plot_losses(history, out / PLOT_NAME)
    return history


def main(argv: list[str] | None = None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
