"""Train the GPT of deers.models.gpt on TinyStories (or on any local text file of stories).

    python examples/tinystories_train.py --device cpu
    python examples/tinystories_train.py --data sample --steps 300                 # no download at all
    python examples/tinystories_train.py --text-file stories.txt --steps 300 --n-layer 4 --n-embd 128 --seq-len 128
    python examples/tinystories_train.py --out runs/tinystories --resume           # continue where it stopped
    python examples/tinystories_train.py --data sample --optimizer muon --grad-accum 4  # Muon, 4 micro-batches a step

Data (--data): by default the first run downloads the full TinyStoriesV2 text (2.2 GB) and
tokenizes it with GPT-2's BPE into <data-dir>/train.bin and val.bin; later runs reuse them. When
the download is impossible (no network), it says so in one line and trains on the TinyStories
sample that ships inside the package (2,316 stories, `--data sample` picks it directly). The
log's `data:` line says which data is in use. Every --log-every steps it prints

    step 50/12000 | train_loss 9.2451 | lr 5.00e-05 | 1.204s | 4267 tok/s

(train_loss is the mean over those steps, the time is the mean wall time of one step; the first
step is logged too, so a run shows at once that it trains), every --eval-every steps
`step N | val_loss X | val_bpb Y` (the loss in nats per token and in bits per byte of text,
which does not depend on the tokenizer), and every --sample-every steps a `sample: ...` line
generated from "Once upon a time".

Optimizer (--optimizer): adamw (the default) updates every parameter with AdamW; muon updates the
hidden weight matrices with Muon (peak lr --muon-lr) and the token embedding, the lm_head and the
norm gains with AdamW (peak lr --lr), as nanochat does. The schedule scales every group's peak
learning rate by the same factor. One step takes --grad-accum micro-batches of --batch-size rows
and sums their gradients (each loss divided by the count), which is the update of one batch of
--grad-accum x --batch-size rows: the `data:` line says the tokens per step.

Checkpoints (<out>/ckpt.safetensors, written atomically, one `saved ...` line each) hold the
model, the optimizer (both, with --optimizer muon), the step, every RNG state and the loss history,
so --resume continues with exactly the losses an uninterrupted run would have had. Ctrl-C finishes
the current step, then writes a checkpoint and the loss-curve plot (<out>/loss.png, needs matplotlib).

Model size: --n-head defaults to --n-embd / 32 (heads of 32, as in the default 6 x 32 = 192) and
--mlp-hidden to 4 x --n-embd, so changing the width alone gives a consistent model.

With --dtype bf16 or f16 the forward and backward run in that dtype on a copy of the model while
the master weights and the optimizer state stay in f32 (f16 also scales the loss to keep small
gradients from underflowing).

With --ddp, run under `mpirun -n N`: each rank takes --batch-size / N rows of every global batch
(all ranks draw the same global batch and keep their shard, so the run trains like one process
with the same --batch-size, and a checkpoint resumes in any number of processes); gradients are
averaged across ranks before each step; rank 0 alone logs, evaluates, samples and saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

import deers
import deers.distributed as dist
from deers import checkpoint
from deers.autograd import Grads
from deers.checkpoint import CheckpointError
from deers.cli import (
    HelpFormatter,
    check_device,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    top_p_value,
)
from deers.dataset import TokenBinDataset, TokenFileError
from deers.dashboard import loss_curve
from deers.diagnostics import Diagnostics
from deers.download import DownloadError
from deers.dtype import as_dtype
from deers.errors import BackendUnavailable
from deers.models.gpt import GPT, GPTConfig
from deers.optim import AdamW, LossScaler, LowPrecisionCopy, LRSchedule, Optimizer, clip_grad_norm, muon_with_adamw
from deers.tinystories import StoryFileError, bits_per_byte, prepare_sample, prepare_tinystories, token_byte_lengths
from deers.tokenizer import Tokenizer, TokenizerUnavailable

CHECKPOINT_NAME = "ckpt.safetensors"
PLOT_NAME = "loss.png"
DIAGNOSTICS_NAME = "diagnostics.png"
DEFAULT_STEPS = 12000
HEAD_SIZE = 32  # --n-head defaults to n_embd / HEAD_SIZE (6 heads for the default width 192)
MLP_RATIO = 4  # --mlp-hidden defaults to MLP_RATIO * n_embd
# Settings that define a run: on --resume they are taken from the checkpoint, not the command line
# (--steps too, unless it is given: see RESUME_HELP).
RUN_SETTINGS = ("data", "dtype", "batch_size", "seq_len", "n_layer", "n_head", "n_embd", "mlp_hidden", "lr",
                "warmup", "warmdown", "weight_decay", "grad_clip", "seed", "text_file", "data_dir", "tokenizer_file",
                "val_fraction", "optimizer", "muon_lr", "grad_accum")
# Errors a user can meet (no network, a bad file, a missing package): printed as one message, no traceback.
USER_ERRORS = (DownloadError, TokenizerUnavailable, StoryFileError, TokenFileError, CheckpointError,
               BackendUnavailable, dist.DistributedUnavailable)

RESUME_HELP = """\
resuming and extending a run:
  --resume continues <out>/ckpt.safetensors with the run's own settings (data, model, optimizer,
  dtype, seed, warmup, warmdown) up to the run's own total number of steps, on the learning-rate
  schedule it started with: an interrupted run ends exactly as an uninterrupted one would have.
  --resume --steps N extends (or shortens) the run to N steps in total. From the checkpoint's step
  on, the learning rate then follows the schedule of an N-step run: linear warmup, the peak --lr,
  and a linear warmdown to 0 over the last --warmdown steps, where a warmup or warmdown the run left
  at its default is recomputed for N. A run that had already decayed to lr 0 therefore climbs back
  to the peak and decays again over its new last steps.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every invalid value is an argparse error before any work starts."""
    p = argparse.ArgumentParser(description="Train a small GPT on TinyStories with Deers.",
                                formatter_class=HelpFormatter, epilog=RESUME_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"],
                   help="compute dtype (master weights and optimizer state stay f32)")
    p.add_argument("--data", choices=["auto", "tinystories", "sample"], default=None,
                   help="auto (the default): the full TinyStoriesV2 text, downloaded once, or the bundled "
                        "sample when it cannot be downloaded; tinystories: the download or an error; sample: "
                        "the 2,316-story TinyStories sample inside the package, no network")
    p.add_argument("--text-file", default=None, metavar="PATH",
                   help="train on this local text file (stories separated by <|endoftext|> lines) instead")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help=f"optimizer steps in total (default: {DEFAULT_STEPS}; with --resume the run's own, "
                        f"see below)")
    p.add_argument("--batch-size", type=positive_int, default=4, metavar="B",
                   help="rows per micro-batch (with --ddp: over all ranks together)")
    p.add_argument("--grad-accum", type=positive_int, default=1, metavar="K",
                   help="micro-batches per optimizer step (a step sees K x B rows)")
    p.add_argument("--seq-len", type=positive_int, default=256, metavar="T",
                   help="context length (also the model's sequence_len)")
    p.add_argument("--n-layer", type=positive_int, default=6, metavar="N", help="transformer blocks")
    p.add_argument("--n-embd", type=positive_int, default=192, metavar="D", help="model width")
    p.add_argument("--n-head", type=positive_int, default=None, metavar="N",
                   help=f"attention heads; must divide --n-embd into heads of an even size "
                        f"(default: n_embd / {HEAD_SIZE})")
    p.add_argument("--mlp-hidden", type=positive_int, default=None, metavar="H",
                   help=f"hidden size of each MLP (default: {MLP_RATIO} x n_embd)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                   help="adamw: AdamW for every parameter; muon: Muon for the hidden matrices, AdamW for the rest")
    p.add_argument("--lr", type=positive_float, default=5e-4, metavar="X",
                   help="peak learning rate of AdamW (with --optimizer muon: of the embedding, lm_head and gains)")
    p.add_argument("--muon-lr", type=positive_float, default=0.02, metavar="X",
                   help="peak learning rate of Muon (with --optimizer muon)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, metavar="N",
                   help="linear warmup steps (default: min(500, steps // 10))")
    p.add_argument("--warmdown", type=nonnegative_int, default=None, metavar="N",
                   help="final steps over which the lr falls linearly to 0 (default: steps // 5)")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.1, metavar="X",
                   help="weight decay of the weight matrices (AdamW's, and Muon's for the hidden ones)")
    p.add_argument("--grad-clip", type=nonnegative_float, default=1.0, metavar="X",
                   help="max global gradient norm (0: no clipping)")
    p.add_argument("--log-every", type=positive_int, default=50, metavar="N", help="steps per log line")
    p.add_argument("--eval-every", type=positive_int, default=500, metavar="N", help="steps between validation losses")
    p.add_argument("--eval-batches", type=positive_int, default=20, metavar="N",
                   help="validation batches per evaluation")
    p.add_argument("--sample-every", type=positive_int, default=1000, metavar="N", help="steps between samples")
    p.add_argument("--sample-tokens", type=positive_int, default=64, metavar="N", help="tokens generated per sample")
    p.add_argument("--top-p", type=top_p_value, default=None, metavar="P",
                   help="samples draw from the smallest set of tokens whose probability reaches P (after top-k 40)")
    p.add_argument("--prompt", default="Once upon a time", help="start of every sample")
    p.add_argument("--checkpoint-every", type=positive_int, default=1000, metavar="N",
                   help="steps between checkpoints (and one at the end)")
    p.add_argument("--out", default="runs/tinystories", metavar="DIR", help="folder for checkpoints and the loss plot")
    p.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME} (see below)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the initialization, the batches and the samples")
    p.add_argument("--val-fraction", type=fraction, default=0.05, metavar="X",
                   help="share of the stories held out for validation (--text-file and --data sample)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where train.bin/val.bin live (default: data/tinystories_gpt2 for the download, "
                        "data/tinystories_sample_<tokenizer> for the sample, data/<text file>_<tokenizer>)")
    p.add_argument("--tokenizer-file", default=None, metavar="PATH",
                   help="a .tiktoken rank file to use instead of GPT-2's BPE (<|endoftext|> gets the next id)")
    p.add_argument("--profile", type=positive_int, default=None, metavar="N",
                   help="print the per-op time table of step N (deers.profiler, see docs/inside.md)")
    p.add_argument("--diagnostics", type=positive_int, default=None, metavar="N",
                   help="every N steps print per-layer statistics (weight RMS, gradient norm, update/weight, "
                        "block output RMS, attention entropy; worst layers first) and write <out>/diagnostics.png "
                        "and .json at the end (deers.diagnostics; docs/inside.md)")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel over the ranks of `mpirun -n N` (each takes batch-size / N rows)")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need several values, files or installed packages; fills in the dependent defaults."""
    check_device(p, args.device)
    try:
        as_dtype(args.dtype)
    except TypeError as err:  # bf16 without ml_dtypes
        p.error(f"--dtype {args.dtype}: {err}")
    for flag, path in (("--text-file", args.text_file), ("--tokenizer-file", args.tokenizer_file)):
        if path is not None and not Path(path).is_file():
            p.error(f"{flag} {path}: no such file")
        if path is not None and Path(path).stat().st_size == 0:
            p.error(f"{flag} {path}: the file is empty")
    if args.text_file is not None and args.data is not None:
        p.error(f"--text-file and --data {args.data} both choose the data: give one of them")
    if args.data is None:
        args.data = "file" if args.text_file is not None else "auto"

    if args.n_head is None:
        if args.n_embd % HEAD_SIZE:
            p.error(f"--n-embd {args.n_embd} is not a multiple of {HEAD_SIZE}, the default head size: "
                    f"give --n-head, a divisor of {args.n_embd} that leaves an even head size")
        args.n_head = args.n_embd // HEAD_SIZE
    if args.n_embd % args.n_head or (args.n_embd // args.n_head) % 2:
        p.error(f"--n-head {args.n_head} must divide --n-embd {args.n_embd} into heads of an even size "
                f"(RoPE rotates pairs of channels)")
    if args.mlp_hidden is None:
        args.mlp_hidden = MLP_RATIO * args.n_embd
    if not args.resume:  # on --resume the schedule is the checkpoint's (checked in train)
        args.steps = args.steps or DEFAULT_STEPS
        warmup, warmdown = schedule_lengths(args)
        if warmup + warmdown > args.steps:
            p.error(f"--warmup {warmup} + --warmdown {warmdown} exceed --steps {args.steps}")
    if args.profile is not None and args.steps is not None and args.profile > args.steps:
        p.error(f"--profile {args.profile}: the run has only {args.steps} steps")


def schedule_lengths(args: argparse.Namespace) -> tuple[int, int]:
    """(warmup, warmdown) in steps: as given, or their defaults for args.steps."""
    warmup = args.warmup if args.warmup is not None else min(500, args.steps // 10)
    warmdown = args.warmdown if args.warmdown is not None else args.steps // 5
    return warmup, warmdown


def require_packages() -> None:
    """The trainer needs tiktoken (the tokenizer) and safetensors (checkpoints): say so before any work."""
    for name in ("tiktoken", "safetensors"):
        if importlib.util.find_spec(name) is None:
            raise SystemExit(f"error: the trainer needs the {name} package: pip install -e '.[train]' "
                             f"(or pip install 'deers[train]')")


# ---- data --------------------------------------------------------------------------------------------
def load_tokenizer(args: argparse.Namespace) -> Tokenizer:
    if args.tokenizer_file:
        return Tokenizer.from_tiktoken_file(args.tokenizer_file)
    return Tokenizer.gpt2()


def load_data(args: argparse.Namespace, tokenizer: Tokenizer) -> tuple[TokenBinDataset, TokenBinDataset, str]:
    """(train, val, what they are) for args.data; an "auto" that cannot download becomes "sample" (in args too)."""
    if args.data == "auto":
        try:
            found = _prepare(args, tokenizer, "tinystories")
            args.data = "tinystories"
        except DownloadError as err:
            reason = err.reasons[0] if err.reasons else str(err).splitlines()[0]
            say(f"could not download TinyStoriesV2 ({reason}); training on the TinyStories sample inside the "
                f"package instead (--data sample skips the download)")
            args.data = "sample"
            found = _prepare(args, tokenizer, "sample")
    else:
        found = _prepare(args, tokenizer, args.data)
    (train_bin, val_bin), what = found
    return TokenBinDataset.load(train_bin, args.seq_len), TokenBinDataset.load(val_bin, args.seq_len), what


def _prepare(args: argparse.Namespace, tokenizer: Tokenizer, source: str) -> tuple[tuple[Path, Path], str]:
    """Token files for one source ("tinystories", "sample" or "file") and a description for the log."""
    if source == "tinystories":
        root = args.data_dir or "data/tinystories_gpt2"
        return prepare_tinystories(root=root, tokenizer=tokenizer), f"TinyStoriesV2 in {root}"
    if source == "sample":
        root = args.data_dir or f"data/tinystories_sample_{tokenizer.name}"
        files = prepare_sample(root=root, tokenizer=tokenizer, val_fraction=args.val_fraction)
        return files, f"the TinyStories sample inside the package (2,316 stories) in {root}"
    root = args.data_dir or f"data/{Path(args.text_file).stem}_{tokenizer.name}"
    files = prepare_tinystories(root=root, tokenizer=tokenizer, text_file=args.text_file,
                                val_fraction=args.val_fraction)
    return files, f"{args.text_file} in {root}"


# ---- pieces of the loop -------------------------------------------------------------------------------
def make_optimizers(model: GPT, args: argparse.Namespace) -> list[Optimizer]:
    """[AdamW] or [Muon, AdamW] (--optimizer), weight decay on the weight matrices only (not on the
    RMSNorm gains). Every group remembers its peak lr as "initial_lr", which `set_lr` scales."""
    if args.optimizer == "muon":
        optimizers = list(muon_with_adamw(model, lr=args.muon_lr, adamw_lr=args.lr, weight_decay=args.weight_decay,
                                          adamw_weight_decay=args.weight_decay, betas=(0.9, 0.95), eps=1e-8))
    else:
        matrices = [p for p in model.parameters() if p.ndim >= 2]
        gains = [p for p in model.parameters() if p.ndim < 2]
        groups = [{"params": matrices, "weight_decay": args.weight_decay}, {"params": gains, "weight_decay": 0.0}]
        optimizers = [AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def set_lr(optimizers: list[Optimizer], factor: float) -> None:
    """Every group's lr = its peak ("initial_lr") x the schedule's factor, as PyTorch's LR schedulers do."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor


def train_step(net: GPT, batches: list[tuple], loss_scale: float) -> tuple[float, Grads]:
    """Forward and backward over the micro-batches of one step; returns (mean loss, summed gradients).

    Each micro-batch's loss is divided by their number before its backward, so the summed
    gradients are those of the mean loss over all rows: the gradient of one big batch.
    """
    total, losses = None, []
    for inputs, targets in batches:
        loss = net.loss(inputs, targets)  # fused lm_head + cross-entropy: no (B, T, V) logits
        factor = loss_scale / len(batches)
        grads = loss.backward() if factor == 1.0 else (loss * factor).backward()
        total = grads if total is None else total.add(grads)
        losses.append(loss.item())
    return sum(losses) / len(losses), total


def micro_batches(train_data: TokenBinDataset, args: argparse.Namespace, world: int) -> list[tuple]:
    """The step's --grad-accum micro-batches: one draw of K x B rows, cut into K batches of B rows (so
    --grad-accum K --batch-size B sees the rows of --batch-size K*B), then this rank's share of each."""
    B, K = args.batch_size, args.grad_accum
    inputs, targets = train_data.sample_batch(K * B, args.device)  # (K*B, T) each
    batches = [(inputs, targets)] if K == 1 else \
        [(inputs[k * B:(k + 1) * B], targets[k * B:(k + 1) * B]) for k in range(K)]  # K x (B, T)
    if world > 1:  # every rank drew the same global batch; keep this rank's rows
        batches = [(dist.shard_batch(x), dist.shard_batch(y)) for x, y in batches]  # K x (B / world, T)
    return batches


def evaluate(model: GPT, val: TokenBinDataset, batch_size: int, max_batches: int, device: str,
             token_bytes: np.ndarray | None = None) -> tuple[float, float | None]:
    """(mean loss, bits per byte) over the first `max_batches` batches of consecutive validation
    windows (always the same ones); bits per byte needs `token_bytes` (`token_byte_lengths`)."""
    total, rows, tokens, text_bytes = 0.0, 0, 0, 0
    with deers.no_grad():
        for i, (inputs, targets) in enumerate(val.iter_batches(batch_size, device)):
            if i == max_batches:
                break
            loss = model.loss(inputs, targets)
            total += loss.item() * inputs.shape[0]
            rows += inputs.shape[0]
            if token_bytes is not None:
                ids = targets.numpy()  # (B, T)
                tokens += ids.size
                text_bytes += int(token_bytes[ids].sum())
    mean = total / rows
    return mean, (bits_per_byte(mean, tokens, text_bytes) if token_bytes is not None else None)


def sample_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, seed: int, device: str,
                temperature: float = 1.0, top_k: int | None = 40, top_p: float | None = None) -> str:
    """Continue `prompt` (after an <|endoftext|>, as stories start in the data), up to the next story's start."""
    prompt_ids = [tokenizer.eot_token] + tokenizer.encode(prompt)
    idx = deers.tensor([prompt_ids], device=device)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    new_ids = out.numpy()[0, len(prompt_ids):].tolist()
    if tokenizer.eot_token in new_ids:
        new_ids = new_ids[:new_ids.index(tokenizer.eot_token)]
    return prompt + tokenizer.decode(new_ids)


def say(text: str) -> None:
    """Print on rank 0 only (every process of a data-parallel run executes the same lines)."""
    if dist.is_main():
        print(text, flush=True)


def plot_losses(history: dict, path: Path) -> None:
    """The loss curves as a PNG (deers.dashboard.loss_curve), or a note when matplotlib is missing."""
    try:
        say(f"wrote {loss_curve(history, path)}")
    except ImportError:
        say(f"note: matplotlib is not installed, so {path} was not written (pip install 'deers[plot]')")


def plot_diagnostics(diag: Diagnostics, path: Path) -> None:
    """The per-layer numbers of the recorded steps as JSON, and their dashboard (deers.dashboard) as a PNG."""
    checkpoint.atomic_write(str(path.with_suffix(".json")), json.dumps(diag.history()).encode())
    try:
        from deers.dashboard import diagnostics_dashboard

        say(f"wrote {diagnostics_dashboard(diag.history(), path, title=f'{len(diag.records)} recorded steps')}")
    except ImportError as err:
        say(f"note: {path} was not written ({err})")


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


def save(path: Path, model: GPT, optimizers: list[Optimizer], step: int, args: argparse.Namespace, history: dict,
         loss_scale: float) -> None:
    run = {name: getattr(args, name) for name in RUN_SETTINGS + ("steps",)}
    checkpoint.save(path, model=model, optimizer=optimizers if len(optimizers) > 1 else optimizers[0], step=step,
                    extra={"config": dataclasses.asdict(model.config), "run": run, "history": history,
                           "loss_scale": loss_scale, "tokenizer_file": args.tokenizer_file})
    say(f"saved {path} at step {step}")


def restore_run_settings(args: argparse.Namespace, path: Path) -> tuple[int, int]:
    """Take the settings that define the run from the checkpoint (see RUN_SETTINGS and RESUME_HELP).

    Returns (the checkpoint's step, the run's total steps); args.steps becomes the run's total
    unless --steps was given.
    """
    if not path.exists():
        raise SystemExit(f"error: --resume: no checkpoint at {path} (train without --resume first, or point --out "
                         f"at the run's folder)")
    try:
        _, metadata = checkpoint.read(path)
        saved = json.loads(metadata["extra"])["run"]
        step = int(metadata["step"])
    except (KeyError, TypeError, ValueError) as err:  # CheckpointError is a ValueError
        raise SystemExit(f"error: --resume: {path} is not a checkpoint of this trainer ({err})") from err
    for name in RUN_SETTINGS:
        setattr(args, name, saved.get(name, getattr(args, name)))
    if args.text_file:  # a checkpoint from before "data" was saved
        args.data = "file"
    run_steps = int(saved.get("steps", DEFAULT_STEPS))  # checkpoints from before "steps" was saved ran the default
    if args.steps is None:
        args.steps = run_steps
    return step, run_steps


# ---- the loop ----------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict:
    """Run the training described by `args`; returns the loss history {"train": [[step, loss]], "val": [...]}."""
    out = Path(args.out)
    ckpt_path = out / CHECKPOINT_NAME
    if args.ddp:
        dist.init()
        args.device = dist.device_for_rank(args.device)  # "cuda" -> this rank's GPU
    world = dist.world_size()
    start_step, run_steps = restore_run_settings(args, ckpt_path) if args.resume else (0, args.steps)
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split evenly over {world} ranks")
    if args.steps < start_step:
        raise SystemExit(f"error: --resume --steps {args.steps}: the checkpoint is already at step {start_step}")
    if args.steps == start_step:
        say(f"{ckpt_path} has finished its {run_steps} steps; to train on, extend the run with "
            f"--resume --steps N (N > {start_step}; the learning-rate schedule is in --help)")
        return {"train": [], "val": []}
    for name in ("text_file", "tokenizer_file"):  # absolute, so the checkpoint works from any folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    warmup, warmdown = schedule_lengths(args)
    if warmup + warmdown > args.steps:
        raise SystemExit(f"error: --resume --steps {args.steps}: the run's warmup {warmup} + warmdown {warmdown} "
                         f"do not fit; give --steps of at least {warmup + warmdown}")
    if args.profile is not None and not start_step < args.profile <= args.steps:
        raise SystemExit(f"error: --profile {args.profile}: this run does steps {start_step + 1} to {args.steps}")
    schedule = LRSchedule(1.0, args.steps, warmup=warmup, warmdown=warmdown)  # a factor of each group's peak lr
    dtype = as_dtype(args.dtype)

    deers.manual_seed(args.seed)
    tokenizer = load_tokenizer(args)
    with dist.main_first():  # rank 0 downloads and tokenizes first; the others then find its files
        if dist.is_main():
            train_data, val_data, data_text = load_data(args, tokenizer)
    if world > 1:  # the others follow rank 0's choice (an "auto" that fell back is "sample" everywhere)
        args.data = dist.broadcast_object(args.data)
        if not dist.is_main():
            train_data, val_data, data_text = load_data(args, tokenizer)
    config = GPTConfig(vocab_size=tokenizer.vocab_size(), sequence_len=args.seq_len, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, mlp_hidden_dim=args.mlp_hidden)
    model = GPT(config, device=args.device)  # f32 master weights
    if args.ddp:
        dist.broadcast_parameters(model.parameters())  # the same seed made the same init; make sure
    low = LowPrecisionCopy(model, GPT(model.config, dtype=dtype, device=args.device)) if dtype is not deers.f32 else None
    optimizers = make_optimizers(model, args)
    token_bytes = token_byte_lengths(tokenizer) if dist.is_main() else None
    scaler = LossScaler(2.0 ** 12 if dtype is deers.f16 else 1.0)
    history: dict = {"train": [], "val": []}
    step = 0
    if args.resume:
        # also restores every RNG state
        info = checkpoint.load(ckpt_path, model=model, optimizer=optimizers if len(optimizers) > 1 else optimizers[0])
        step, history, scaler.scale = info["step"], info["extra"]["history"], info["extra"]["loss_scale"]
        say(f"resumed from {ckpt_path} at step {step} of {run_steps} (model, data, optimizer, dtype and seed "
            f"settings come from the checkpoint)")
        if args.steps != run_steps:
            say(f"{'extending' if args.steps > run_steps else 'shortening'} the run from {run_steps} to "
                f"{args.steps} steps: the learning rate follows the schedule of a run of {args.steps} steps "
                f"(warmup {warmup}, warmdown {warmdown}), {args.lr * schedule(step):.2e} at step {step + 1}")
    say(f"model: {model.num_parameters():,} parameters, {config}")
    tokens_per_step = args.grad_accum * args.batch_size * args.seq_len
    ranks = f", {args.batch_size // world} rows on each of {world} ranks" if world > 1 else ""
    accum = f" in {args.grad_accum} micro-batches of {args.batch_size} x {args.seq_len}" if args.grad_accum > 1 else \
        f" ({args.batch_size} x {args.seq_len})"
    say(f"data: {data_text}: {len(train_data):,} train tokens, {len(val_data):,} val tokens; "
        f"{tokens_per_step:,} tokens per step{accum}{ranks} on {args.device} in {args.dtype}")
    say(f"optimizer: {', '.join(repr(optimizer) for optimizer in optimizers)}")

    diag = Diagnostics(model, low.model if low is not None else model) if args.diagnostics else None
    first_step = step + 1  # logged whatever --log-every says, so a run shows at once that it trains
    interval_losses: list[float] = []
    interval_time = 0.0
    try:
        with StopRequest() as stop:
            while step < args.steps and not dist.any_rank(stop.requested):  # ranks stop at the same step
                started = time.perf_counter()
                profile = deers.profiler.profile().start() if step + 1 == args.profile else None
                factor = schedule(step)
                lr = args.lr * factor
                batches = micro_batches(train_data, args, world)
                net = model
                if low is not None:
                    low.sync()
                    net = low.model
                recording = diag is not None and (step + 1) % args.diagnostics == 0
                record = diag.begin(step + 1, batches[0][0][0:1]) if recording else None  # hooks only on these steps
                loss_value, grads = train_step(net, batches, scaler.scale)
                if low is not None:
                    grads = low.master_grads(grads, scaler.scale)
                if args.ddp:
                    dist.all_reduce_grads(model.parameters(), grads)  # mean over ranks: the global batch's gradient
                if record is not None:
                    record.gradients(grads)  # before clipping
                norm = float(clip_grad_norm(model.parameters(), grads, args.grad_clip if args.grad_clip > 0 else math.inf))
                if math.isfinite(norm):
                    set_lr(optimizers, factor)
                    for optimizer in optimizers:
                        optimizer.step_with_grads(grads)
                elif dtype is deers.f16:
                    say(f"step {step + 1}: gradient overflow at loss scale {scaler.scale:g}, step skipped")
                scaler.update(math.isfinite(norm))
                if record is not None:
                    diag.end(record)
                    say(diag.table())
                loss_value = dist.mean_over_ranks(loss_value)  # the global batch's loss
                step += 1
                if profile is not None:
                    say(f"profile of step {step} (deers.profiler):\n{profile.stop().table()}")
                interval_time += time.perf_counter() - started
                interval_losses.append(loss_value)
                history["train"].append([step, loss_value])

                if step % args.log_every == 0 or step == args.steps or step == first_step:  # the first at once
                    per_step = interval_time / len(interval_losses)
                    say(f"step {step}/{args.steps} | train_loss {sum(interval_losses) / len(interval_losses):.4f} | "
                        f"lr {lr:.2e} | {per_step:.3f}s | {tokens_per_step / per_step:.0f} tok/s")
                    interval_losses, interval_time = [], 0.0
                if not dist.is_main():  # evaluation, samples and checkpoints are rank 0's
                    continue
                if step % args.eval_every == 0 or step == args.steps:
                    val_loss, val_bpb = evaluate(model, val_data, args.batch_size, args.eval_batches, args.device,
                                                 token_bytes)
                    history["val"].append([step, val_loss])
                    history.setdefault("val_bpb", []).append([step, val_bpb])
                    say(f"step {step} | val_loss {val_loss:.4f} | val_bpb {val_bpb:.4f}")
                if step % args.sample_every == 0 or step == args.steps:
                    text = sample_text(model, tokenizer, args.prompt, args.sample_tokens, args.seed + step, args.device,
                                       top_p=args.top_p)
                    say("sample: " + " ".join(text.split()))
                if step % args.checkpoint_every == 0 and step < args.steps:
                    save(ckpt_path, model, optimizers, step, args, history, scaler.scale)
    except KeyboardInterrupt:
        say(f"aborted during step {step + 1}; {ckpt_path} keeps the last periodic checkpoint")
        if dist.is_main():
            plot_losses(history, out / PLOT_NAME)
        raise
    if dist.is_main():
        save(ckpt_path, model, optimizers, step, args, history, scaler.scale)
        plot_losses(history, out / PLOT_NAME)
        if diag is not None and diag.records:
            plot_diagnostics(diag, out / DIAGNOSTICS_NAME)
    return history


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    require_packages()
    try:
        return train(args)
    except USER_ERRORS as err:  # no network, a bad file, a missing package: a message, not a traceback
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
