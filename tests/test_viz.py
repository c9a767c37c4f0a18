"""deers.viz.draw_graph: the DOT of the graph backward walks — nodes, edges, names, views, collapsing."""
from __future__ import annotations

import re
import shutil

import pytest

import deers
from deers import viz
from deers.models.gpt import GPT, GPTConfig
from deers.nn import Linear, ReLU, Sequential

NODE = re.compile(r'^\s*(n\d+|g\d+) \[label="([^"]*)"', re.M)
EDGE = re.compile(r"^\s*(\w+) -> (\w+);", re.M)


def nodes_of(dot: str) -> dict[str, str]:
    """node id -> its label with DOT's \\n as a newline."""
    return {node: label.replace("\\n", "\n") for node, label in NODE.findall(dot)}


def edges_of(dot: str) -> list[tuple[str, str]]:
    return EDGE.findall(dot)


def labelled_edges(dot: str) -> list[tuple[str, str]]:
    """Edges as (source label, target label): independent of the node numbering."""
    labels = nodes_of(dot)
    return sorted((labels[a], labels[b]) for a, b in edges_of(dot))


def tiny_gpt() -> GPT:
    deers.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, sequence_len=8, n_layer=2, n_head=2, n_embd=16, mlp_hidden_dim=32))


def test_small_expression_has_exactly_its_nodes_and_edges():
    x = deers.randn(4, 3)
    w = deers.Var(deers.randn(3, 2))
    y = (x @ w).relu().sum()
    dot = viz.draw_graph(y, params={"w": w})
    assert dot.startswith('digraph "deers" {') and dot.rstrip().endswith("}")
    assert sorted(nodes_of(dot).values()) == sorted([
        "const\n(4, 3) f32", "w\n(3, 2) f32", "MatMul\n(4, 2) f32", "Relu\n(4, 2) f32", "Sum\n() f32"])
    assert labelled_edges(dot) == sorted([
        ("const\n(4, 3) f32", "MatMul\n(4, 2) f32"), ("w\n(3, 2) f32", "MatMul\n(4, 2) f32"),
        ("MatMul\n(4, 2) f32", "Relu\n(4, 2) f32"), ("Relu\n(4, 2) f32", "Sum\n() f32")])


def test_unnamed_leaves_show_their_shape_and_a_reused_input_has_one_edge_per_use():
    a = deers.randn(2, 2).attach()
    y = a * a
    dot = viz.draw_graph(y)
    assert sorted(nodes_of(dot).values()) == ["Mul\n(2, 2) f32", "leaf\n(2, 2) f32"]
    assert labelled_edges(dot) == [("leaf\n(2, 2) f32", "Mul\n(2, 2) f32")] * 2


def test_views_are_marked_and_copies_are_not():
    w = deers.Var(deers.randn(3, 2))
    y = (w.T.compact() * 2.0).sum()
    labels = list(nodes_of(viz.draw_graph(y)).values())
    assert "Permute (view)\n(2, 3) f32" in labels
    assert "Compact\n(2, 3) f32" in labels  # a copy of a transposed layout is not a view
    assert "const\n(2, 3) f32" in labels  # the Python number 2.0: a 0-d constant, broadcast


def test_leaf_names_come_from_the_model_parameters():
    deers.manual_seed(0)
    model = Sequential(Linear(6, 5), ReLU(), Linear(5, 3))
    x = deers.randn(4, 6)
    loss = deers.loss.cross_entropy(model(x), deers.tensor([0, 1, 2, 0]))
    labels = set(nodes_of(viz.draw_graph(loss, params=model.named_parameters())).values())
    for name, param in model.named_parameters():
        assert f"{name}\n{tuple(param.shape)} f32" in labels
    unnamed = set(nodes_of(viz.draw_graph(loss)).values())
    assert "leaf\n(5, 6) f32" in unnamed and not any(label.startswith("0.weight") for label in unnamed)


def test_ops_are_boxed_by_module_path_and_max_depth_collapses_the_blocks():
    model = tiny_gpt()
    idx = deers.randint(0, 64, (2, 8))
    loss = model.loss(idx, idx)
    params = model.named_parameters()
    full = viz.draw_graph(loss, params=params)
    assert 'label="blocks.0.attn.qkv"' in full and 'label="blocks.1.mlp.fc"' in full  # one box per module
    collapsed = viz.draw_graph(loss, params=params, max_depth=2)
    labels = list(nodes_of(collapsed).values())
    for group in ("wte", "blocks.0", "blocks.1", "norm_f"):
        assert sum(label.startswith(group + "\n") for label in labels) == 1, group
    assert len(labels) < len(nodes_of(full)) / 4
    edges = edges_of(collapsed)
    assert len(edges) == len(set(edges))  # merged edges are drawn once
    ids = {label.split("\n")[0]: node for node, label in nodes_of(collapsed).items()}
    assert (ids["blocks.0"], ids["blocks.1"]) in edges and (ids["blocks.1"], ids["blocks.0"]) not in edges
    with pytest.raises(ValueError, match="max_depth"):
        viz.draw_graph(loss, params=params, max_depth=0)


def test_a_freed_graph_cannot_be_drawn():
    w = deers.Var(deers.randn(3))
    y = (w * w).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed"):
        viz.draw_graph(y)


def test_writes_dot_text_and_refuses_unknown_suffixes(tmp_path):
    w = deers.Var(deers.randn(3))
    y = w.exp().sum()
    text = viz.draw_graph(y, tmp_path / "graph.dot")
    assert (tmp_path / "graph.dot").read_text() == text
    with pytest.raises(ValueError, match=r"\.dot"):
        viz.draw_graph(y, tmp_path / "graph.jpeg")


def test_rendering_without_graphviz_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    y = deers.Var(deers.randn(3)).sum()
    with pytest.raises(viz.GraphvizMissing, match="graphviz"):
        viz.draw_graph(y, tmp_path / "graph.svg")
    assert not (tmp_path / "graph.svg").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's `dot` program is not installed")
def test_renders_svg_and_png_with_graphviz(tmp_path):
    w = deers.Var(deers.randn(3, 3))
    y = (w @ w.T).relu().sum()
    viz.draw_graph(y, tmp_path / "graph.svg", params={"w": w})
    svg = (tmp_path / "graph.svg").read_text()
    assert "<svg" in svg and "MatMul" in svg and "Permute (view)" in svg
    viz.draw_graph(y, tmp_path / "graph.png")
    assert (tmp_path / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
