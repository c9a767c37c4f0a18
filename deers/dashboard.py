"""Pictures of a model learning (matplotlib, the `plot` extra), each written as a PNG: the loss
curve, the dashboard of what deers.diagnostics measures, attention maps and the logit lens.

    diagnostics_dashboard(diag.history(), "diagnostics.png")
    attention_figure(attention_maps(model, idx), tokens, "attention.png")
    logit_lens_figure(logit_lens(model, idx, tokenizer), tokens, "lens.png")
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import atomic_write


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"deers.dashboard needs matplotlib: pip install 'deers[plot]' ({exc})") from exc
    return plt


def _save(fig: Any, path: "str | Path") -> Path:
    """Write the figure as a PNG atomically (checkpoint.atomic_write), then close it."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        _pyplot().close(fig)
    atomic_write(str(path), buffer.getvalue())
    return path


def _group(name: str) -> str:
    """The layer a parameter belongs to: its block ("blocks.3") or its top-level module ("lm_head")."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return parts[0]


def _by_group(table: dict[str, float], combine) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for name, value in table.items():
        groups.setdefault(_group(name), []).append(value)
    return {group: combine(values) for group, values in groups.items()}


def loss_curve(history: dict, path: "str | Path") -> Path:
    """Train loss (per step, and its running mean) and validation loss against the step:
    history is {"train": [[step, loss], ...], "val": [[step, loss], ...]}, as the trainer keeps it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        window = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window})")
    if history["val"]:
        steps, losses = zip(*[row[:2] for row in history["val"]])
        ax.plot(steps, losses, "o-", color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def diagnostics_dashboard(history: Sequence[dict], path: "str | Path", title: str = "") -> Path:
    """Four panels over the recorded steps, one line per layer: block output RMS, gradient norm,
    the largest update-to-weight ratio, and the lowest head entropy. The layer that leaves the
    others first is the one to look at."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    steps = [row["step"] for row in history]
    panels = [
        (axes[0, 0], "block output RMS", lambda row: row["activation_rms"]),
        (axes[0, 1], "gradient norm (per layer)",
         lambda row: _by_group(row["grad_norm"], lambda v: sum(x * x for x in v) ** 0.5)),
        (axes[1, 0], "update / weight (largest in the layer)", lambda row: _by_group(row["update_ratio"], max)),
        (axes[1, 1], "attention entropy, nats (lowest head)",
         lambda row: {f"layer {i}": min(heads) for i, heads in enumerate(row["head_entropy"])}),
    ]
    for ax, label, values_of in panels:
        series: dict[str, list[float]] = {}
        for row in history:
            for name, value in values_of(row).items():
                series.setdefault(name, []).append(value)
        log = "entropy" not in label
        for name, values in series.items():
            if log:  # a zero (no update at lr 0) has no place on a log axis: a gap, not a cliff
                values = [v if v > 0 else float("nan") for v in values]
            ax.plot(steps[:len(values)], values, label=name, linewidth=1.2)
        ax.set_title(label)
        ax.set_xlabel("step")
        if series and log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def attention_figure(maps: Sequence[Any], tokens: Sequence[str], path: "str | Path", row: int = 0) -> Path:
    """A grid of attention maps, one row per layer and one column per head, for batch row `row`:
    query positions down, key positions across, labelled with the tokens."""
    plt = _pyplot()
    layers = [m.numpy()[row] for m in maps]  # each (nh, T, S)
    n_layer, n_head = len(layers), layers[0].shape[0]
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.2 * n_head, 2.2 * n_layer), squeeze=False)
    for i, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[i, h]
            ax.imshow(layer[h], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {i}", fontsize=8)
    if len(tokens) <= 24:  # tokens on the last row's first map, where they stay readable
        ax = axes[-1, 0]
        ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def logit_lens_figure(layers: Sequence[Sequence[Sequence[tuple[Any, float]]]], tokens: Sequence[str],
                      path: "str | Path") -> Path:
    """The logit lens as a table: one row per layer (embeddings at the top), one column per input
    position, each cell the top-1 next-token guess, coloured by its probability."""
    plt = _pyplot()
    n_layer, T = len(layers), len(layers[0])
    probs = [[cell[0][1] for cell in layer] for layer in layers]
    fig, ax = plt.subplots(figsize=(1.1 * T + 1.5, 0.45 * n_layer + 1.2))
    ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, layer in enumerate(layers):
        for t, cell in enumerate(layer):
            ax.text(t, i, repr(str(cell[0][0]))[1:-1][:10], ha="center", va="center", fontsize=7,
                    color="white" if cell[0][1] > 0.6 else "black")  # readable on the dark cells
    ax.set_xticks(range(T), [repr(str(tok))[1:-1] for tok in tokens], rotation=45, fontsize=7)
    ax.set_yticks(range(n_layer), ["embed"] + [f"block {i}" for i in range(n_layer - 1)], fontsize=7)
    ax.set_title("logit lens: each layer's top next-token guess (colour: its probability)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
