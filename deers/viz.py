"""Draw the graph that `root.backward()` would walk, as Graphviz DOT (micrograd's `draw_dot`).

    dot = deers.viz.draw_graph(loss, params=model.named_parameters())     # the DOT text
    deers.viz.draw_graph(loss, "graph.svg", params=model.named_parameters())  # rendered by `dot`

One node per recorded op (its class name, output shape and dtype; views say "view" and are
dashed), one per leaf: a parameter (its dotted name when `params` is given), another leaf that
requires grad, or a constant input (grey: data, targets, Python numbers made 0-d constants).
Edges run from each input to the op that read it, one per input slot, so `x * x` has two.

The DOT is built by hand (no Python package needed). Rendering to .svg/.png/.pdf needs Graphviz's
`dot` program. Large graphs: `max_depth=k` groups the ops by module path — the dotted name of the
parameter an op reads, else of its latest input — cut to k parts, and draws each group as one node
("blocks.0 | 41 ops"); without it, ops with a module path are drawn in one box per module.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .autograd import _FreedOp, topo_sort

RENDERED = ("svg", "png", "pdf")


@dataclass
class GraphNode:
    """One node of the drawn graph: an op's output tensor or a leaf."""

    id: str
    kind: str  # "op", "param", "leaf" or "constant"
    title: str  # op class name, parameter name, "leaf" or "const"
    shape: tuple[int, ...]
    dtype: str
    view: bool = False
    group: str | None = None  # the module path the node belongs to, when known
    inputs: list[str] = field(default_factory=list)  # ids of the input nodes, in input order

    @property
    def label(self) -> str:
        title = f"{self.title} (view)" if self.view else self.title
        return f"{title}\n{self.shape} {self.dtype}"


class GraphvizMissing(RuntimeError):
    """Rendering was asked for but Graphviz's `dot` program is not installed."""


def graph_nodes(root, params: "Iterable | Mapping | None" = None) -> list[GraphNode]:
    """The nodes reachable from `root` through recorded ops, inputs before outputs."""
    if isinstance(root._op, _FreedOp):
        raise RuntimeError("draw_graph: backward already freed this graph; draw it before backward, "
                           "or run backward(retain_graph=True)")
    names = _param_names(params)
    order = topo_sort(root, every_input=True)  # every tensor behind root, inputs first
    index = {id(t): i for i, t in enumerate(order)}
    nodes: list[GraphNode] = []
    param_path: dict[int, str] = {}  # node index -> module path of the parameter it is (or views)
    for i, t in enumerate(order):
        node = GraphNode(f"n{i}", "op", "", tuple(t.shape), t.dtype.name)
        if t._op is None:
            if id(t) in names:
                node.kind, node.title = "param", names[id(t)]
                node.group = names[id(t)].rpartition(".")[0] or None
                param_path[i] = node.group
            elif t.requires_grad:
                node.kind, node.title = "leaf", "leaf"
            else:
                node.kind, node.title = "constant", "const"
        else:
            parents = [index[id(p)] for p in t._inputs]
            node.title = type(t._op).__name__
            node.inputs = [f"n{j}" for j in parents]
            node.view = any(t.data.storage_id() == p.data.storage_id() for p in t._inputs)
            node.group = _op_group(parents, nodes, param_path)
            if node.view and len(parents) == 1 and parents[0] in param_path:  # W.T is still W's module
                param_path[i] = param_path[parents[0]]
        nodes.append(node)
    return nodes


def to_dot(nodes: list[GraphNode], max_depth: int | None = None, title: str = "deers") -> str:
    """DOT text of `nodes`; with max_depth, each module path cut to max_depth parts is one node."""
    if max_depth is not None and max_depth < 1:
        raise ValueError(f"draw_graph: max_depth must be at least 1, got {max_depth}")
    lines = [f"digraph {_quote(title)} {{", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", fillcolor=white];',
             '  edge [color="#555555", arrowsize=0.6];']
    root = nodes[-1].id if nodes else None
    if max_depth is None:
        clusters: dict[str, list[GraphNode]] = {}
        for node in nodes:
            if node.group is not None:
                clusters.setdefault(node.group, []).append(node)
            else:
                lines.append("  " + _node_line(node, node.id == root))
        for number, (path, members) in enumerate(clusters.items()):
            lines.append(f"  subgraph cluster_{number} {{")
            lines.append(f'    label={_quote(path)}; style="rounded,dashed"; color="#999999"; fontsize=10;')
            lines += ["    " + _node_line(node, node.id == root) for node in members]
            lines.append("  }")
        for node in nodes:
            lines += [f"  {source} -> {node.id};" for source in node.inputs]
    else:
        merged = {node.id: _cut(node.group, max_depth) for node in nodes}
        groups: dict[str, list[GraphNode]] = {}
        for node in nodes:
            if merged[node.id] is None:
                lines.append("  " + _node_line(node, node.id == root))
            else:
                groups.setdefault(merged[node.id], []).append(node)
        group_ids = {path: f"g{number}" for number, path in enumerate(groups)}
        for path, members in groups.items():
            ops = sum(1 for m in members if m.kind == "op")
            params = sum(1 for m in members if m.kind == "param")
            label = f"{path}\n{ops} ops, {params} params"
            lines.append(f'  {group_ids[path]} [label={_quote(label)}, fillcolor="#fff3d6", shape=box3d];')
        seen: set[tuple[str, str]] = set()
        for node in nodes:
            target = group_ids.get(merged[node.id], node.id)
            for source_id in node.inputs:
                source = group_ids.get(merged[source_id], source_id)
                if source != target and (source, target) not in seen:
                    seen.add((source, target))
                    lines.append(f"  {source} -> {target};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_graph(root, path: "str | Path | None" = None, params: "Iterable | Mapping | None" = None,
               max_depth: int | None = None) -> str:
    """The graph behind `root` as DOT text; also written to `path` (.dot/.gv as text, .svg/.png/.pdf
    rendered by Graphviz's `dot`).

    params: `model.named_parameters()` (pairs or a mapping name -> tensor) names the leaves.
    max_depth: collapse the ops of each module path cut to this many parts into one node.
    """
    text = to_dot(graph_nodes(root, params), max_depth)
    if path is not None:
        write(text, path)
    return text


def write(text: str, path: "str | Path") -> None:
    """Save DOT text as .dot/.gv, or render it with Graphviz to .svg/.png/.pdf."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt in ("dot", "gv"):
        path.write_text(text)
        return
    if fmt not in RENDERED:
        raise ValueError(f"draw_graph: cannot write {path.name}: use .dot or .gv (text), or "
                         f"{', '.join('.' + f for f in RENDERED)} (rendered by Graphviz)")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing(f"draw_graph: rendering {path.name} needs Graphviz's `dot` program, which is not on "
                              f"PATH; install the graphviz package (apt-get install graphviz, brew install graphviz "
                              f"or conda install graphviz), or save the DOT text with a .dot path")
    done = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=text, text=True, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"draw_graph: dot -T{fmt} failed for {path.name}: {done.stderr.strip()}")


# ---- helpers ------------------------------------------------------------------------------------
def _param_names(params) -> dict[int, str]:
    if params is None:
        return {}
    pairs = params.items() if isinstance(params, Mapping) else params
    return {id(tensor): name for name, tensor in pairs}


def _op_group(parents: list[int], nodes: list[GraphNode], param_path: dict[int, str]) -> str | None:
    """The module path of an op: that of a parameter it reads (directly or through a view), else
    that of its latest input that has one (residual adds, attention: the path the data came from)."""
    for j in parents:
        if j in param_path:
            return param_path[j]
    for j in sorted(parents, reverse=True):
        if nodes[j].group is not None and nodes[j].kind == "op":
            return nodes[j].group
    return None


def _cut(path: str | None, depth: int) -> str | None:
    return None if path is None else ".".join(path.split(".")[:depth])


def _node_line(node: GraphNode, is_root: bool) -> str:
    attrs = [f"label={_quote(node.label)}"]
    if node.kind == "param" or node.kind == "leaf":
        attrs.append('fillcolor="#d6e9ff"')
    elif node.kind == "constant":
        attrs += ['fillcolor="#eeeeee"', 'fontcolor="#666666"']
    if node.view:
        attrs.append('style="rounded,dashed,filled"')
    if is_root:
        attrs += ["peripheries=2", 'fillcolor="#ffe0e0"']
    return f"{node.id} [{', '.join(attrs)}];"


def _quote(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, newlines as DOT's \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
