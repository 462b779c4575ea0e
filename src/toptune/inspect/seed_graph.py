"""The seed's TinyNet, regenerated: cases A / B / C (``requires_grad=False``, ``no_grad`` + ``detach``), their
``grad_fn`` nodes, adjacency list and what each saves for backward."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """The seed's network: bias-free 2 → 2 → 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 1, bias=False)


SEED_CASES = {
    "A": "nothing",
    "B": "fc1.weight.requires_grad=False (input x requires grad)",
    "C": "with torch.no_grad(): relu(fc1(x)); then detach().requires_grad_(True)",
}


def graph_nodes(root) -> list:
    """``grad_fn`` nodes reachable from ``root``, breadth first (the seed's walk)."""
    seen, order, queue = set(), [], deque([root])
    while queue:
        node = queue.popleft()
        if node is None or node in seen:
            continue
        seen.add(node)
        order.append(node)
        queue.extend(child for child, _ in node.next_functions)
    return order


def adjacency(root) -> dict[str, dict]:
    """The seed's adjacency list, with node numbers (BFS order) in place of ``id()``s."""
    nodes = graph_nodes(root)
    index = {n: i for i, n in enumerate(nodes)}
    return {
        str(index[n]): {"name": type(n).__name__, "children": [index[c] for c, _ in n.next_functions if c is not None]}
        for n in nodes
    }


def _kept_in(saved: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """A pack hook that saves each tensor unchanged and records it in ``saved``."""

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    return pack


def seed_table(seed: int = 0) -> dict[str, dict]:
    """Cases A (nothing), B (``fc1.weight.requires_grad=False``), C (``no_grad`` + ``detach``) of the
    seed: node names, adjacency, whether fc1's matmul is in the graph, and what is saved for backward."""
    cases = {}
    for case, applied in SEED_CASES.items():
        torch.manual_seed(seed)
        net = TinyNet()
        x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        if case == "B":
            net.fc1.weight.requires_grad_(False)
        saved: list[Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(_kept_in(saved), lambda t: t):
            if case == "C":
                with torch.no_grad():
                    h = torch.relu(net.fc1(x))  # (1, 2), no graph
                fc1_fn = None
                h = h.detach().requires_grad_(True)
            else:
                z = net.fc1(x)  # (1, 2)
                fc1_fn = z.grad_fn
                h = torch.relu(z)
            out = net.fc2(h)  # (1, 1)
        nodes = graph_nodes(out.grad_fn)
        weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
        acts = list(
            {
                t.untyped_storage().data_ptr(): t
                for t in saved  # each storage once, weights not counted
                if t.untyped_storage().data_ptr() not in weights
            }.values()
        )
        cases[case] = {
            "applied": applied,
            "nodes": [type(n).__name__ for n in nodes],
            "adjacency": adjacency(out.grad_fn),
            "fc1_in_graph": fc1_fn is not None and fc1_fn in nodes,
            "saved_activations": len(acts),
            "saved_activation_bytes": sum(t.numel() * t.element_size() for t in acts),
        }
    return cases


def format_seed_table(table: dict[str, dict]) -> str:
    """The seed's table as text: case, what was applied, the nodes left in the graph."""
    nodes_title = "grad_fn nodes (BFS from the output; …Backward0)"
    lines = [f"{'case':4s} {'fc1 in graph':12s} {'saved acts':10s} {nodes_title:60s} applied"]
    for case, c in table.items():
        nodes = " ".join(n.removesuffix("Backward0") for n in c["nodes"])
        lines.append(f"{case:4s} {str(c['fc1_in_graph']):12s} {c['saved_activations']:10d} {nodes:60s} {c['applied']}")
    return "\n".join(lines)
