"""Check that training does not leak: RSS after warm-up stays flat over many steps.

    python benchmarks/rss_flat.py --config tiny --steps 300

Prints the resident memory every 50 steps and the growth from step 50 to the end (the graph of
each step must be freed after its backward; optimizer state is allocated in the first step).
"""
from __future__ import annotations

import argparse

import numpy as np

from common import CONFIGS
from gpt_step import DeersRunner, batches, gpt_config


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    config = gpt_config(args.config)
    runner = DeersRunner(config, "cpu", "f32")
    samples = {}
    for step, (idx, targets) in enumerate(batches(config, CONFIGS[args.config][-1], args.steps, 0), start=1):
        runner.step(*runner.batch(idx, targets))
        if step % 50 == 0:
            samples[step] = rss_mb()
            print(f"step {step}: RSS {samples[step]:.1f} MB", flush=True)
    first, last = min(samples), max(samples)
    growth = samples[last] - samples[first]
    print(f"growth from step {first} to step {last}: {growth:+.1f} MB "
          f"({growth / max(last - first, 1) * 1024:+.1f} KB/step)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
