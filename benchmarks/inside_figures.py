"""Make the pictures and the table of docs/inside.md from the real examples.

    python benchmarks/inside_figures.py --out docs/images

1. mnist_mlp_graph.svg (and .dot): the graph of one loss of examples/mnist_train.py's MLP, drawn
   by deers.viz.draw_graph (the .svg needs Graphviz's `dot`; without it only the .dot is written).
2. gpt_graph_blocks.svg: a GPT's graph collapsed to one node per module with max_depth=2.
3. The profile table of one GPT training step (forward, backward, clip, AdamW) of a
   benchmarks/common.py config, printed (docs/inside.md shows it).
4. gpt_memory.png: the live bytes after every op of that step, forward then backward.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import deers  # noqa: E402
from deers import loss as losses  # noqa: E402
from deers.models.gpt import GPT, GPTConfig  # noqa: E402
from deers.optim import AdamW, clip_grad_norm  # noqa: E402

from common import CONFIGS  # noqa: E402


def mnist_model():
    spec = importlib.util.spec_from_file_location("mnist_train", REPO / "examples" / "mnist_train.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.make_model("cpu")


def draw(root, out: Path, name: str, **options) -> None:
    (out / f"{name}.dot").write_text(deers.viz.draw_graph(root, **options))
    if shutil.which("dot") is None:
        print(f"Graphviz's dot is not installed: wrote {name}.dot only")
        return
    deers.viz.draw_graph(root, out / f"{name}.svg", **options)
    print(f"wrote {out / name}.svg")


def mnist_graph(out: Path) -> None:
    deers.manual_seed(0)
    model = mnist_model()
    images = deers.randn(32, 784)  # a batch of normalised images (B, 784); the graph does not depend on values
    labels = deers.randint(0, 10, (32,))
    loss = losses.cross_entropy(model(images), labels)
    draw(loss, out, "mnist_mlp_graph", params=model.named_parameters())


def gpt_step(config: str, out: Path, device: str) -> None:
    vocab, seq, n_layer, n_head, n_embd, mlp, batch = CONFIGS[config]
    deers.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, sequence_len=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                          mlp_hidden_dim=mlp), device=device)
    params = model.parameters()
    opt = AdamW(params, lr=5e-4, weight_decay=0.1)
    idx = deers.randint(0, vocab, (batch, seq), device=device)
    targets = deers.randint(0, vocab, (batch, seq), device=device)

    draw(model.loss(idx, targets), out, "gpt_graph_blocks", params=model.named_parameters(), max_depth=2)

    def step() -> None:
        loss = model.loss(idx, targets)
        grads = loss.backward()
        clip_grad_norm(params, grads, 1.0)
        opt.step_with_grads(grads)
        loss.item()

    step()  # the first step makes the optimizer's moments; profile a steady one
    with deers.profiler.profile() as prof:
        step()
    print(f"profile of one {config} step on {device} (batch {batch} x {seq}):")
    print(prof.table())
    memory_plot(prof.events(), out / "gpt_memory.png", f"{config} GPT step on {device}")


def memory_plot(events, path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no memory plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = np.array([e.live_bytes for e in events]) / 2 ** 20
    backward = np.array([e.phase == "backward" for e in events])
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=110)
    steps = np.arange(len(events))
    ax.fill_between(steps, live, where=~backward, step="post", color="#4c8bd6", alpha=0.8, label="forward")
    ax.fill_between(steps, live, where=backward, step="post", color="#e08a3c", alpha=0.8, label="backward")
    ax.set_xlabel("op (in the order they ran)")
    ax.set_ylabel("live MiB")
    ax.set_title(f"deers.memory through one {title}", fontsize=10)
    ax.set_xlim(0, len(events))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images"))
    p.add_argument("--config", default="headline", choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mnist_graph(out)
    gpt_step(args.config, out, args.device)


if __name__ == "__main__":
    main()
