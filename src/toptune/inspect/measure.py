"""One forward + backward of the real classifier, charged per block: bytes saved for backward
(``saved_tensors_hooks``), ``grad_fn`` nodes, step time and, on CUDA, peak memory.

"The block running" is tracked two ways, so both the stock forward (modules) and the cached epochs' fast
path (functions over the blocks' parameters) are charged right: a forward pre-hook on each block's
modules sets it on entry, and any torch function called with a block's parameter sets it to that
block. Ops between two blocks are charged to the block entered last. Any block kind is measured the
same way: attention, Gated DeltaNet (linear attention), dense MLP or routed experts.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


def block_of(name: str) -> str | None:
    """Block key of a module name inside a Qwen classifier (PEFT-wrapped or not)."""
    if m := re.search(r"(?:^|\.)layers\.(\d+)(?:\.|$)", name):
        return f"layer.{m.group(1)}"
    if re.search(r"(?:^|\.)(embed_tokens|rotary_emb)$", name):
        return "embed"
    if re.search(r"(?:^|\.)model\.norm$", name) or name == "norm":
        return "norm"
    if re.search(r"(?:^|\.)score(?:\.|$)", name):
        return "score"
    return None


def block_keys(num_layers: int) -> list[str]:
    return ["embed", *(f"layer.{i}" for i in range(num_layers)), "norm", "score"]


def prefix_keys(report: dict) -> list[str]:
    """The frozen prefix's block keys of a report (``layer.0`` … below the lowest trainable block)."""
    return [f"layer.{i}" for i in range(min(report["model"]["trainable_layers"]))]


def _param_blocks(model: nn.Module) -> dict[int, str]:
    """``id(parameter)`` → block key."""
    out: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        key = block_of(name.rpartition(".")[0])
        if key is not None:
            out.setdefault(id(p), key)
    return out


class _BlockTracker(TorchFunctionMode):
    """Keeps ``current[0]`` on the running block (a call with a block's parameter switches to it) and
    records, for each ``grad_fn`` created, the block that created it."""

    def __init__(self, current: list[str], param_block: dict[int, str]):
        super().__init__()
        self.current, self.param_block = current, param_block
        self.owner: dict[torch.autograd.graph.Node, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            if isinstance(a, nn.Parameter) and id(a) in self.param_block:
                self.current[0] = self.param_block[id(a)]
                break
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.grad_fn is not None and t.grad_fn not in self.owner:
                self.owner[t.grad_fn] = self.current[0]
        return out


@dataclass
class StepMeasure:
    """One forward + backward, charged per block."""

    saved_bytes_by_block: dict[str, int]
    nodes_by_block: dict[str, int]
    step_seconds: float
    """Median wall time of the timed runs."""
    cuda_peak_bytes: int | None
    """``max_memory_allocated`` over one timed forward + backward (weights included); None off CUDA."""
    cuda_step_bytes: int | None
    """The same peak minus what was allocated before the step (what the step itself adds)."""

    @property
    def saved_bytes_total(self) -> int:
        return sum(self.saved_bytes_by_block.values())


def measure_step(model: nn.Module, step: Callable[[], Tensor], num_layers: int, repeats: int = 1) -> StepMeasure:
    """Run ``step()`` (forward, returns the loss) and its backward under the hooks; then ``repeats``
    more times without them, timed (and on CUDA, the peak memory of the first of those)."""
    current = ["other"]
    handles = []
    for name, module in model.named_modules():
        key = block_of(name)
        if key is not None:
            handles.append(module.register_forward_pre_hook(lambda m, a, key=key: current.__setitem__(0, key)))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = dict.fromkeys(block_keys(num_layers), 0)
    # Holding each storage keeps its address from being reused by a later tensor during the step.
    seen: dict[int, torch.UntypedStorage] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage
            saved[current[0]] = saved.get(current[0], 0) + storage.nbytes()
        return t

    tracker = _BlockTracker(current, _param_blocks(model))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), tracker:
            loss = step()
        loss.backward(retain_graph=True)
    finally:
        for h in handles:
            h.remove()
    param_block = {
        p.untyped_storage().data_ptr(): block_of(n.rpartition(".")[0]) or "other" for n, p in model.named_parameters()
    }
    by_block = dict.fromkeys(block_keys(num_layers), 0)
    for key in node_owners(loss.grad_fn, tracker.owner, param_block).values():
        by_block[key] = by_block.get(key, 0) + 1
    seen.clear()
    del loss
    model.zero_grad(set_to_none=True)

    cuda = next(model.parameters()).is_cuda
    times, peak, step_bytes = [], None, None
    for i in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step().backward()
        if cuda:
            torch.cuda.synchronize()
            if i == 0:
                peak = torch.cuda.max_memory_allocated()
                step_bytes = peak - before
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    keep = lambda d: {k: v for k, v in d.items() if v or k != "other"}  # noqa: E731
    return StepMeasure(keep(saved), keep(by_block), statistics.median(times), peak, step_bytes)


def node_owners(root, recorded: dict, param_block: dict[int, str]) -> dict:
    """Block of every node reachable from ``root``: a parameter's ``AccumulateGrad`` belongs to the
    parameter's block; a node recorded at creation to its block; any other node (made inside a
    composite op or an ``autograd.Function``) to the block of the node that reached it first."""
    owners = {root: recorded.get(root, "other")}
    queue = deque([root])
    while queue:
        node = queue.popleft()
        for child, _ in node.next_functions:
            if child is None or child in owners:
                continue
            var = getattr(child, "variable", None)
            if var is not None:
                owners[child] = param_block.get(var.untyped_storage().data_ptr(), "other")
            else:
                owners[child] = recorded.get(child, owners[node])
            queue.append(child)
    return owners
