"""Muon vs AdamW: steps and seconds to the validation loss AdamW reaches at its last step.

    python benchmarks/muon_vs_adamw.py --config small --race-all --out runs/muon_vs_adamw

Every run is examples/tinystories_train.py in a process of its own, one at a time, on the bundled
TinyStories sample (--data sample), with the same seed, so both optimizers see the same batches.
--config headline is the trainer's default GPT; --config small is a 4 x 128 GPT on GPT-2's first
4,096 tokens (see CONFIGS), for a machine where the headline's runs do not fit.

1. Tuning: each optimizer trains --sweep-steps steps (a run of that length, with its own
   warmup and warmdown) at each learning rate of its list; the rate with the lowest final
   validation loss wins. AdamW is tuned first (--lr for every parameter); Muon's runs then keep
   that --lr for the embedding, lm_head and gains (AdamW's part) and sweep --muon-lr.
2. The race: both train --steps steps at their tuned rates on the same schedule, evaluating every
   --eval-every steps on the same validation windows. The target is AdamW's validation loss at its
   last step; for each run the table gives the first evaluation at or below it, and the training
   wall-clock seconds up to that step (the log's step times; evaluations not counted). With
   --race-all every rate of both lists also races at full length, and the target is the best
   AdamW run's: AdamW tuned at the race's own length, where a short sweep favours high rates.
3. Shorter schedules (--muon-steps 450,500): the schedule's warmdown makes the last steps of any
   run gain the most, so "the first evaluation at or below the target" inside a 600-step run
   undercounts what fewer steps can do. Each count given trains the tuned Muon for a whole run of
   that length (its own warmup and warmdown); the table adds a row for each.

On a loaded machine run it as `DEERS_OWN_BLAS_THREADS=0 OPENBLAS_NUM_THREADS=1 nice -n 10 python ...`:
every GEMM then runs on one thread; the backend's default (small GEMMs on OpenBLAS's two
threads, whose workers spin between GEMMs) lost whole time slices per GEMM there, which hit
Muon's 240 small Newton-Schulz GEMMs per step hardest (7.4 vs 0.7 s a step).

A run whose log already ends with its checkpoint line is not repeated (delete <out>/<run>.log to
redo it), so the tuning and the race can run in separate sittings. The table is printed in the
Markdown of docs/performance.md.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "examples" / "tinystories_train.py"
CONFIGS = {  # model and batch flags of the trainer, and the vocabulary (None: GPT-2's 50,257 tokens)
    "headline": ([], None),  # the trainer's defaults: 6 x 192, seq 256, batch 4
    # 4 x 128, seq 128, batch 4, and GPT-2's first 4,096 BPE tokens (+ <|endoftext|>): the hidden
    # matrices, where Muon acts, hold most of the compute instead of the 50,257-row lm_head
    "small": (["--n-layer", "4", "--n-embd", "128", "--seq-len", "128", "--batch-size", "4"], 4096),
}
GPT2_RANKS = ROOT / "deers" / "data" / "gpt2.tiktoken"
LOG = re.compile(r"^step (\d+)/\d+ \| train_loss [\d.]+ \| lr \S+ \| ([\d.]+)s \|")
VAL = re.compile(r"^step (\d+) \| val_loss ([\d.]+) \| val_bpb ([\d.]+)")


def run(name: str, args: argparse.Namespace, steps: int, eval_every: int, extra: list[str]) -> dict:
    """Train once (or reuse a finished log); returns {"val": [(step, loss, bpb)], "seconds": {step: s}}."""
    out = Path(args.out)
    log = out / f"{name}.log"
    if not (log.exists() and f"at step {steps}\n" in log.read_text()):
        command = [sys.executable, str(TRAINER), "--data", "sample", "--steps", str(steps), "--seed", str(args.seed),
                   "--eval-every", str(eval_every), "--log-every", str(eval_every), "--eval-batches",
                   str(args.eval_batches), "--sample-every", str(10 ** 9), "--checkpoint-every", str(10 ** 9),
                   "--out", str(out / name), "--data-dir", str(out / "data"), *CONFIGS[args.config][0], *extra]
        vocab = CONFIGS[args.config][1]
        if vocab is not None:
            command += ["--tokenizer-file", str(truncated_gpt2(out, vocab))]
        print(f"running {name}: {' '.join(command[1:])}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return parse(log.read_text(), eval_every)


def truncated_gpt2(out: Path, ranks: int) -> Path:
    """GPT-2's BPE cut to its first `ranks` tokens (each token's parts come earlier in GPT-2's merge
    order, so the prefix is a complete BPE); the trainer adds <|endoftext|> as token `ranks`."""
    path = out / f"gpt2_first{ranks}.tiktoken"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        lines = GPT2_RANKS.read_text().splitlines()[:ranks]
        path.write_text("\n".join(lines) + "\n")
    return path


def parse(text: str, eval_every: int) -> dict:
    """Validation points and the cumulative training seconds at each logged step."""
    val, seconds, total, last = [], {}, 0.0, 0
    for line in text.splitlines():
        if m := LOG.match(line):
            step, per_step = int(m.group(1)), float(m.group(2))
            total += per_step * (step - last)  # the log gives the mean step time since the last line
            seconds[step], last = total, step
        elif m := VAL.match(line):
            val.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
    return {"val": val, "seconds": seconds}


def first_at_or_below(result: dict, target: float) -> tuple[int, float] | None:
    for step, loss, _ in result["val"]:
        if loss <= target:
            return step, result["seconds"][step]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="headline")
    p.add_argument("--steps", type=int, default=600, help="steps of the race")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=5)
    p.add_argument("--sweep-steps", type=int, default=100)
    p.add_argument("--adamw-lrs", default="1e-3,3e-3,6e-3", help="comma-separated AdamW rates to try")
    p.add_argument("--muon-lrs", default="0.005,0.01,0.02,0.05", help="comma-separated Muon rates to try")
    p.add_argument("--race-all", action="store_true",
                   help="also race every rate of the lists at full length: the target is then the best AdamW "
                        "run's last val_loss (tuning at the race's own length)")
    p.add_argument("--muon-steps", default="",
                   help="comma-separated shorter run lengths for the tuned Muon (each a whole schedule)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="runs/muon_vs_adamw", help="logs, checkpoints and the sample's token files")
    args = p.parse_args()

    def final_loss(result: dict) -> float:
        return result["val"][-1][1]

    sweeps = {"adamw": {}, "muon": {}}
    for lr in args.adamw_lrs.split(","):
        sweeps["adamw"][lr] = final_loss(run(f"sweep_adamw_lr{lr}", args, args.sweep_steps, args.sweep_steps,
                                             ["--optimizer", "adamw", "--lr", lr]))
    adamw_lr = min(sweeps["adamw"], key=sweeps["adamw"].get)
    for lr in args.muon_lrs.split(","):
        sweeps["muon"][lr] = final_loss(run(f"sweep_muon_lr{lr}_adamw{adamw_lr}", args, args.sweep_steps,
                                            args.sweep_steps, ["--optimizer", "muon", "--lr", adamw_lr,
                                                               "--muon-lr", lr]))
    muon_lr = min(sweeps["muon"], key=sweeps["muon"].get)
    print(f"\ntuning ({args.sweep_steps}-step runs, final val_loss):")
    for name, losses in sweeps.items():
        print(f"  {name}: " + ", ".join(f"lr {lr}: {loss:.4f}" for lr, loss in losses.items()))

    adamw_lrs = args.adamw_lrs.split(",") if args.race_all else [adamw_lr]
    muon_lrs = args.muon_lrs.split(",") if args.race_all else [muon_lr]
    adamw = {lr: run(f"race_adamw_lr{lr}", args, args.steps, args.eval_every, ["--optimizer", "adamw", "--lr", lr])
             for lr in adamw_lrs}
    muon = {lr: run(f"race_muon_lr{lr}_adamw{adamw_lr}", args, args.steps, args.eval_every,
                    ["--optimizer", "muon", "--lr", adamw_lr, "--muon-lr", lr]) for lr in muon_lrs}
    shorter = {int(n): run(f"race_muon_lr{muon_lr}_adamw{adamw_lr}_{n}steps", args, int(n), args.eval_every,
                           ["--optimizer", "muon", "--lr", adamw_lr, "--muon-lr", muon_lr])
               for n in args.muon_steps.split(",") if n}
    best = min(adamw, key=lambda lr: final_loss(adamw[lr]))
    # AdamW's losses at a quarter, half and all of the run (on the evaluation grid) are the targets
    marks = [args.eval_every * round(args.steps * f / args.eval_every) for f in (0.25, 0.5, 1.0)]
    targets = {step: loss for step, loss, _ in adamw[best]["val"] if step in marks}
    print(f"\ntargets: the val_loss of AdamW (lr {best}) at steps {', '.join(map(str, targets))}: "
          f"{', '.join(f'{loss:.4f}' for loss in targets.values())}\n")
    header = ["optimizer", "lr", *(f"steps (s) to AdamW's step-{step} loss" for step in targets), "s/step",
              "final val_loss", "final val_bpb"]
    print("| " + " | ".join(header) + " |")
    print("| --- | --- |" + " ---: |" * (len(header) - 2))
    rows = [("AdamW", lr, result) for lr, result in adamw.items()]
    rows += [("Muon + AdamW", f"{lr} (AdamW part {adamw_lr})", result) for lr, result in muon.items()]
    rows += [(f"Muon + AdamW, {n}-step run", f"{muon_lr} (AdamW part {adamw_lr})", result)
             for n, result in shorter.items()]
    for name, lr, result in rows:
        cells = []
        for loss in targets.values():
            reached = first_at_or_below(result, loss)
            cells.append(f"{reached[0]} ({reached[1]:.0f} s)" if reached else "not reached")
        last = max(result["seconds"])  # the run's length (shorter for the --muon-steps rows)
        per_step = result["seconds"][last] / last
        print(f"| {name} | {lr} | {' | '.join(cells)} | {per_step:.3f} | {result['val'][-1][1]:.4f} "
              f"| {result['val'][-1][2]:.4f} |")
    muon_best = min(muon, key=lambda lr: final_loss(muon[lr]))
    print(f"\nvalidation loss every {args.eval_every} steps (step: AdamW lr {best} / Muon lr {muon_best}):")
    for (step, a, _), (_, m, _) in zip(adamw[best]["val"], muon[muon_best]["val"]):
        print(f"  {step}: {a:.4f} / {m:.4f}")


if __name__ == "__main__":
    main()
