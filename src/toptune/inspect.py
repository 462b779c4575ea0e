"""What the autograd graph keeps, per block and per prefix mode — measured, not asserted.

The seed teaches three tools — ``requires_grad=False``, ``torch.no_grad()``, ``detach()`` — and
claims that only no_grad + detach take a frozen prefix out of the graph. This module measures it:

- :func:`seed_table` regenerates the seed's TinyNet cases A / B / C (node names and adjacency list
  from ``grad_fn.next_functions``, and what each case saves for backward);
- :func:`inspect_modes` runs one forward + backward of the real classifier on a real batch per mode
  (``MODES``) and charges to each block (``embed``, ``layer.<i>``, ``norm``, ``score``):

  * **saved bytes** — every tensor autograd saves for backward passes through the ``pack`` hook of
    ``torch.autograd.graph.saved_tensors_hooks`` and is charged to the block running at that moment.
    A tensor counts as its whole storage (``untyped_storage().nbytes()``), each storage once (q, k
    and v's LoRA save one normalised input; the last block's rows share one buffer), and storages of
    parameters are not counted: the weights sit in memory whatever autograd does, so only
    activations (and, on CUDA under bf16 autocast, the bf16 weight copies backward needs) count;
  * **autograd nodes** reachable from the loss, each charged to the block whose op created it;
  * trainable / frozen parameter counts, the step's wall time (informative) and, on CUDA,
    ``max_memory_allocated``;

- :func:`estimate_top_k` predicts the top K blocks' saved bytes from shapes alone (batch, length,
  hidden, heads, head_dim, intermediate, LoRA rank, dtype), so a run can be planned before the GPU
  is rented; the report puts measured / estimated beside each other.

"The block running" is tracked two ways, so both the stock forward (modules) and the cache's fused
blocks (functions over the blocks' parameters) are charged right: a forward pre-hook on each block's
modules sets it on entry, and any torch function called with a block's parameter sets it to that
block. Ops between two blocks are charged to the block entered last.
"""

from __future__ import annotations

import dataclasses
import gc
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from toptune.config import ConfigError, LoraSettings, ModelConfig  # noqa: E402
from toptune.model import backbone  # noqa: E402

MODES = ("full", "lora_all", "topk_autograd", "topk_autograd_input_grads", "topk_no_grad", "topk_cached")
MODE_HELP = {
    "full": "every parameter trainable, stock forward",
    "lora_all": "LoRA on every block, stock forward",
    "topk_autograd": "LoRA on the top K blocks, stock forward",
    "topk_autograd_input_grads": "LoRA on the top K, stock forward, enable_input_require_grads() (as gradient checkpointing sets)",
    "topk_no_grad": "LoRA on the top K, prefix under no_grad + detach (toptune's default)",
    "topk_cached": "LoRA on the top K, fed from stored prefix output (toptune's cache mode: fused blocks, last block at the pooled token)",
}
METHOD = {
    "saved_bytes": "saved_tensors_hooks pack: untyped_storage().nbytes() of each saved tensor, each storage once",
    "parameters_counted": False,
    "parameters_note": "storages of parameters (weights saved for backward) are not counted: they stay in memory "
                       "whatever autograd does; only activations count (on CUDA under bf16 autocast also the bf16 "
                       "weight copies that backward keeps)",
    "block_attribution": "forward pre-hooks on the blocks' modules, and torch functions called with a block's parameter, "
                         "set the running block; a saved tensor / a new grad_fn is charged to it",
    "autograd_nodes": "grad_fn nodes reachable from the loss (AccumulateGrad included), each charged to the block whose op "
                      "created it (AccumulateGrad: its parameter's block)",
    "prefix": "blocks layer.0 … layer.<first-1>, below the lowest trainable block",
}


@dataclass
class InspectConfig:
    """What ``kedro run --pipeline inspect`` measures (parameters ``inspect.*``)."""

    batch_size: int = 8
    """Examples in the measured batch: the first N of ``split``, padded as training pads them."""
    split: str = "train"
    """Tokenised split the batch comes from."""
    modes: list[str] = dataclasses.field(default_factory=list)
    """Modes to measure (subset of ``MODES``); empty = all."""
    timing_repeats: int = 3
    """Timed forward + backward runs per mode after the measured one; the median is reported."""

    def __post_init__(self) -> None:
        self.modes = list(self.modes or [])
        bad = sorted(set(self.modes) - set(MODES))
        for ok, message in ((self.batch_size >= 1, f"inspect.batch_size={self.batch_size} must be >= 1"),
                            (self.timing_repeats >= 1, f"inspect.timing_repeats={self.timing_repeats} must be >= 1"),
                            (not bad, f"inspect.modes: unknown mode {bad[0] if bad else ''!r}; known: {', '.join(MODES)}")):
            if not ok:
                raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# The seed's TinyNet table


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
    return {str(index[n]): {"name": type(n).__name__, "children": [index[c] for c, _ in n.next_functions if c is not None]}
            for n in nodes}


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
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
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
        acts = list({t.untyped_storage().data_ptr(): t for t in saved  # each storage once, weights not counted
                     if t.untyped_storage().data_ptr() not in weights}.values())
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
    lines = [f"{'case':4s} {'fc1 in graph':12s} {'saved acts':10s} {'grad_fn nodes (BFS from the output; …Backward0)':60s} applied"]
    for case, c in table.items():
        nodes = " ".join(n.removesuffix("Backward0") for n in c["nodes"])
        lines.append(f"{case:4s} {str(c['fc1_in_graph']):12s} {c['saved_activations']:10d} {nodes:60s} {c['applied']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Per-block measurement on the real model


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
    out = {}
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
        self.current, self.param_block, self.owner = current, param_block, {}

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
    param_block = {p.untyped_storage().data_ptr(): block_of(n.rpartition(".")[0]) or "other"
                   for n, p in model.named_parameters()}
    by_block = dict.fromkeys(block_keys(num_layers), 0)
    for key in node_owners(loss.grad_fn, tracker.owner, param_block).values():
        by_block[key] = by_block.get(key, 0) + 1
    del loss, seen
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


# ---------------------------------------------------------------------------------------------
# Analytic estimate


@dataclass(frozen=True)
class BlockShape:
    """What the estimate needs to know of a model and a batch."""

    batch: int
    """B, examples in the batch."""
    length: int
    """T, padded tokens per example."""
    hidden: int
    """D."""
    heads: int
    """Query heads H."""
    kv_heads: int
    """Key/value heads."""
    head_dim: int
    """Per-head width."""
    intermediate: int
    """MLP width I."""
    lora_r: int
    """LoRA rank on every projection (0 = no adapters)."""
    qk_norm: bool
    """Qwen3's per-head q/k RMSNorm (Qwen2 has none)."""
    padded: bool = True
    """The batch has padding, so sdpa gets (and keeps) a float mask."""
    dtype_bytes: int = 4
    """Bytes per activation element (4 fp32, 2 bf16)."""


def block_saved_bytes(s: BlockShape, query_tokens: int | None = None, input_requires_grad: bool = True) -> int:
    """Expected bytes one trainable decoder block saves for backward (LoRA on q/k/v/o/gate/up/down,
    frozen base weights, sdpa attention), read off the op list of ``Qwen{2,3}DecoderLayer``
    (N = B·T tokens, e = bytes per element; RMSNorm works in fp32):

    - ``input_layernorm`` keeps its fp32 input (N·D) and per-token rsqrt (N) — only when the block's
      input requires grad: the first block after a no_grad prefix or a cache gets a plain tensor;
    - LoRA keeps ``lora_A``'s input (q/k/v share the normalised x: one N·D) and each rank-r middle
      (N·r per projection); frozen base linears keep only their weight, a parameter, not counted;
    - Qwen3's q/k norms keep q (N·H·hd) and k (N·Hkv·hd), fp32, plus an rsqrt per head;
    - sdpa keeps q, k, v, its output (which ``o_proj``'s LoRA reuses) and the per-row log-sum-exp
      (B·H·T, fp32); with padding also its float mask (B·T·T). k and v are kept repeated to H heads
      when transformers repeats them (a padded batch, T queries); at their Hkv heads when it lets sdpa
      do grouped-query attention (no mask) or packs the query heads instead (one query per example);
    - ``post_attention_layernorm`` as above; the MLP keeps the norm output once (gate/up share it),
      gate and up outputs, SiLU's output and the product fed to ``down_proj``: 4·N·I.

    ``query_tokens``: when only that many tokens per example need the block's output (the last block
    in the pooled path: 1), the query side — q, attention output, ``o_proj``, norm, MLP — shrinks to
    those rows; keys and values still cover all T tokens.
    """
    b, t, d, e, r = s.batch, s.length, s.hidden, s.dtype_bytes, s.lora_r
    n = b * t  # tokens whose keys / values are needed
    q = b * (query_tokens or t)  # tokens whose outputs are needed
    dq, dkv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    fp32 = 4
    total = (n * d * fp32 + n * fp32) if input_requires_grad else 0   # input_layernorm
    total += (n * d * e if r else 0) + (q + 2 * n) * r * e             # lora_A input (shared), q/k/v middles
    if s.qk_norm:
        total += q * dq * fp32 + q * s.heads * fp32                    # q_norm
        total += n * dkv * fp32 + n * s.kv_heads * fp32                # k_norm
    one_query = query_tokens == 1
    kv = dq if (s.padded and not one_query) else dkv                   # k / v width sdpa keeps
    total += (q * dq + 2 * n * kv) * e                                 # sdpa: q, k, v
    total += q * dq * e + q * s.heads * fp32                           # sdpa: output, log-sum-exp
    if s.padded:
        total += q * t * e                                             # sdpa: float mask rows
    elif one_query:
        total += q * t                                                 # the pooled row's bool mask
    total += q * r * e                                                 # o_proj middle
    total += q * d * fp32 + q * fp32                                   # post_attention_layernorm
    total += (q * d * e if r else 0) + 3 * q * r * e                   # MLP lora_A input, 3 middles
    total += 4 * q * s.intermediate * e                                # gate, up, SiLU(gate), product
    return int(total)


def estimate_top_k(s: BlockShape, k: int, pooled_last_block: bool) -> int:
    """Expected saved bytes of the top K blocks when they are fed a plain tensor (no_grad prefix or
    cache): the first of them keeps no input, the last one works on the pooled rows only when
    ``pooled_last_block`` (the cache's path); rotary cos/sin (2·T·hd, fp32) are kept once, shared."""
    if k <= 0:
        return 0
    rope = 2 * s.length * s.head_dim * 4
    if k == 1:
        return rope + block_saved_bytes(s, 1 if pooled_last_block else None, input_requires_grad=False)
    first = block_saved_bytes(s, input_requires_grad=False)
    last = block_saved_bytes(s, 1 if pooled_last_block else None)
    return rope + first + (k - 2) * block_saved_bytes(s) + last


def shape_of(model: nn.Module, batch: int, length: int, lora_r: int, padded: bool = True) -> BlockShape:
    """The ``BlockShape`` of a Qwen classifier for a batch of ``batch`` × ``length`` tokens."""
    c = backbone(model).config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    dtype = next(model.parameters()).dtype
    return BlockShape(batch, length, c.hidden_size, heads, c.num_key_value_heads, head_dim, c.intermediate_size,
                      lora_r, c.model_type == "qwen3", padded, 2 if dtype in (torch.bfloat16, torch.float16) else 4)


def estimate_report(report: dict, shape: BlockShape) -> dict:
    """Analytic top-K saved bytes beside the measured ones, for the no_grad and cached modes."""
    k = len(report["model"]["trainable_layers"])
    top = [f"layer.{i}" for i in report["model"]["trainable_layers"]]
    out: dict = {"shape": dataclasses.asdict(shape), "blocks": top}
    # no_grad runs the last block over every token; the cache runs it at the pooled rows only.
    for mode, pooled in (("topk_no_grad", False), ("topk_cached", True)):
        m = report["modes"].get(mode, {})
        if "saved_bytes_by_block" in m:
            expected = estimate_top_k(shape, k, pooled_last_block=pooled)
            measured = sum(m["saved_bytes_by_block"].get(b, 0) for b in top)
            out[mode] = {"top_k_expected_bytes": expected, "top_k_measured_bytes": measured,
                         "measured_over_estimated": measured / expected, "pooled_last_block": pooled}
    return out


# ---------------------------------------------------------------------------------------------
# The modes


StoredBatch = Callable[[object], "tuple[dict[str, Tensor] | None, str]"]
"""Given the top-K classifier: the measured batch as the cache stores it (``hidden`` (B, T, D),
``attention_mask``, ``pooled``, ``labels``), or None when there is no usable store; and a note
(where it came from, or why there is none)."""


@dataclass
class _Setup:
    model: nn.Module
    layers: list[int]
    forward: str
    """``autograd`` / ``no_grad`` / ``cache``."""
    clf: object | None = None


def _mode_setup(mode: str, model_cfg: ModelConfig, lora: LoraSettings, id2label: dict[int, str], seed: int,
                device: str, tokenizer) -> _Setup:
    """A fresh classifier set up as ``mode`` asks."""
    from toptune.model import load_classifier
    from toptune.recipe import build_classifier, resolve_model_path
    from toptune.train import resolve_device

    if mode == "full":
        dtype = torch.bfloat16 if model_cfg.dtype == "bfloat16" else torch.float32
        model = load_classifier(resolve_model_path(model_cfg.name_or_path), id2label, tokenizer.pad_token_id,
                                seed=seed, dtype=dtype).to(resolve_device(device))
        model.requires_grad_(True)
        return _Setup(model, list(range(model.config.num_hidden_layers)), "autograd")
    if mode == "lora_all":
        from transformers import AutoConfig

        n = AutoConfig.from_pretrained(resolve_model_path(model_cfg.name_or_path)).num_hidden_layers
        clf = build_classifier(dataclasses.replace(model_cfg, trainable_layers=list(range(n))), lora, id2label, seed,
                               device, tokenizer)
        return _Setup(clf.model, clf.layers, "autograd", clf)
    clf = build_classifier(model_cfg, lora, id2label, seed, device, tokenizer)
    if mode == "topk_autograd_input_grads":
        clf.model.enable_input_require_grads()
    forward = {"topk_autograd": "autograd", "topk_autograd_input_grads": "autograd", "topk_no_grad": "no_grad",
               "topk_cached": "cache"}[mode]
    return _Setup(clf.model, clf.layers, forward, clf)


def precomputed_prefix(model: nn.Module, batch: dict[str, Tensor], first: int) -> dict[str, Tensor]:
    """What the cache stores for ``batch``: the prefix's output, computed once in eval mode without a
    graph, with the pooling positions — a plain tensor, as a cached epoch reads it."""
    from toptune.prefix import pool_index, run_prefix

    was_training = model.training
    model.eval()
    hidden = run_prefix(model, batch["input_ids"], batch["attention_mask"], first)  # (B, T, D)
    model.train(was_training)
    return {"hidden": hidden, "attention_mask": batch["attention_mask"], "labels": batch["labels"],
            "pooled": pool_index(batch["input_ids"], backbone(model).config.pad_token_id)}


def _step_fn(setup: _Setup, batch: dict[str, Tensor], device: torch.device) -> Callable[[], Tensor]:
    """The training step's forward (as ``toptune.train.train`` runs it): logits under the device's
    autocast, cross-entropy in fp32."""
    from toptune.prefix import forward_logits
    from toptune.train import autocast

    first = min(setup.layers)
    if setup.forward == "cache":
        from toptune.cache import cached_logits

        logits_fn = cached_logits(setup.model, first)
    else:
        logits_fn = lambda b: forward_logits(setup.model, b["input_ids"], b["attention_mask"], first, setup.forward)  # noqa: E731

    def step() -> Tensor:
        with autocast(device):
            logits = logits_fn(batch)  # (B, C)
        return nn.functional.cross_entropy(logits.float(), batch["labels"])

    return step


def inspect_modes(model_cfg: ModelConfig, lora: LoraSettings, id2label: dict[int, str], batch: dict[str, Tensor],
                  seed: int = 0, device: str = "auto", modes: tuple[str, ...] | list[str] | None = None,
                  stored: StoredBatch | None = None, repeats: int = 1, tokenizer=None) -> dict:
    """Measure every mode on ``batch`` (``input_ids``, ``attention_mask``, ``labels``); the report dict.

    ``topk_cached`` is fed by ``stored`` (the real prefix cache) when it returns a batch, else by
    :func:`precomputed_prefix` — the same values; the report says which in ``fed_from``.
    """
    from toptune.recipe import resolve_model_path
    from toptune.tokenizer import load_tokenizer

    unknown = sorted(set(modes or ()) - set(MODES))
    if unknown:
        raise ValueError(f"inspect.modes: unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")
    tokenizer = tokenizer or load_tokenizer(resolve_model_path(model_cfg.name_or_path))
    report: dict = {"model": {}, "batch": {}, "method": METHOD, "modes": {}}
    for mode in [m for m in MODES if m in (modes or MODES)]:
        try:
            report["modes"][mode] = _measure_mode(mode, model_cfg, lora, id2label, batch, seed, device, stored,
                                                  repeats, tokenizer, report)
        except torch.OutOfMemoryError as e:  # e.g. `full` on a big model: say so, measure the others
            report["modes"][mode] = {"skipped": f"out of memory: {str(e).splitlines()[0]}"}
        gc.collect()  # the next mode's CUDA numbers must not see this one's model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    prefix = prefix_keys(report) if report["model"] else []
    for m in report["modes"].values():
        if "saved_bytes_by_block" in m:
            m["prefix_saved_bytes"] = sum(m["saved_bytes_by_block"].get(k, 0) for k in prefix)
    report["batch"] = {"batch_size": int(batch["input_ids"].shape[0]), "length": int(batch["input_ids"].shape[1]),
                       "real_tokens": int(batch["attention_mask"].sum()), "padded": bool((batch["attention_mask"] == 0).any())}
    if report["model"]:
        report["estimate"] = estimate_report(report, report["model"].pop("_shape"))
        report["ratios"] = ratios(report)
    return report


def _measure_mode(mode: str, model_cfg: ModelConfig, lora: LoraSettings, id2label: dict[int, str],
                  batch: dict[str, Tensor], seed: int, device: str, stored: StoredBatch | None, repeats: int,
                  tokenizer, report: dict) -> dict:
    """One mode's entry of the report (and, for the first mode measured, ``report["model"]``)."""
    from toptune.adapters import param_counts

    setup = _mode_setup(mode, model_cfg, lora, id2label, seed, device, tokenizer)
    dev = next(setup.model.parameters()).device
    b = {k: v.to(dev) for k, v in batch.items()}
    num_layers = len(backbone(setup.model).layers)
    extra = {}
    if setup.forward == "cache":
        got, note = stored(setup.clf) if stored is not None else (None, "no prefix cache given")
        if got is None:
            b = precomputed_prefix(setup.model, b, min(setup.layers))
            note = f"prefix output computed once under no_grad here, as the cache stores it ({note})"
        else:
            b = {k: v.to(dev) for k, v in got.items()}
        extra["fed_from"] = note
    setup.model.train()
    m = measure_step(setup.model, _step_fn(setup, b, dev), num_layers, repeats)
    counts = param_counts(setup.model)
    if not report["model"]:
        inner = backbone(setup.model)
        top = model_cfg.layer_indices(num_layers)
        report["model"] = {"name_or_path": model_cfg.name_or_path, "model_type": inner.config.model_type,
                           "num_layers": num_layers, "trainable_layers": top, "first_trainable_layer": min(top),
                           "hidden_size": inner.config.hidden_size, "lora_r": lora.r,
                           "dtype": str(next(setup.model.parameters()).dtype).removeprefix("torch."),
                           "device": str(dev), "autocast": "bfloat16" if dev.type == "cuda" else None,
                           "_shape": shape_of(setup.model, batch["input_ids"].shape[0], batch["input_ids"].shape[1],
                                              lora.r, padded=bool((batch["attention_mask"] == 0).any()))}
    return {
        "description": MODE_HELP[mode],
        "saved_bytes_total": m.saved_bytes_total,
        "saved_bytes_by_block": m.saved_bytes_by_block,
        "prefix_saved_bytes": None,  # filled in once the split is known
        "autograd_nodes": sum(m.nodes_by_block.values()),
        "autograd_nodes_by_block": m.nodes_by_block,
        "trainable_params": counts["trainable_params"],
        "frozen_params": counts["frozen_params"],
        "step_seconds": m.step_seconds,
        "cuda_peak_bytes": m.cuda_peak_bytes,
        "cuda_step_bytes": m.cuda_step_bytes,
        **({"cuda_note": "not measured on CPU"} if m.cuda_peak_bytes is None else {}),
        **extra,
    }


def ratios(report: dict) -> dict:
    """The relations the product promises: no_grad vs LoRA-everywhere against K/L, and the prefix's share."""
    modes = report["modes"]
    k, n = len(report["model"]["trainable_layers"]), report["model"]["num_layers"]
    out: dict = {"k_over_l": k / n}
    if all("saved_bytes_total" in modes.get(m, {}) for m in ("topk_no_grad", "lora_all")):
        out["topk_no_grad_over_lora_all"] = modes["topk_no_grad"]["saved_bytes_total"] / modes["lora_all"]["saved_bytes_total"]
    if all("saved_bytes_total" in modes.get(m, {}) for m in ("topk_no_grad", "topk_autograd_input_grads")):
        out["topk_no_grad_over_input_grads"] = (modes["topk_no_grad"]["saved_bytes_total"]
                                                / modes["topk_autograd_input_grads"]["saved_bytes_total"])
    return out


def cache_batch(data: dict, training, split: str, n: int) -> StoredBatch:
    """A ``stored`` source reading the first ``n`` examples of ``split`` from the real prefix cache at
    ``training.cache_dir``, when it exists and its fingerprint matches this model, split and data."""

    def get(clf):
        from toptune.cache import CacheInvalid, fingerprint, load_cache

        try:
            cache = load_cache(training.cache_dir, fingerprint(clf, data, training))
        except CacheInvalid as e:
            return None, f"prefix cache not used: {e}"
        b = cache.split(split, data[split], clf.pad_token_id).batch(np.arange(n), clf.device)
        return b, f"prefix cache at {training.cache_dir} (fingerprint matches)"

    return get


# ---------------------------------------------------------------------------------------------
# Report helpers


def mib(n: int | float) -> float:
    return n / 2**20


def human(n: int) -> str:
    """Bytes as ``B`` / ``KiB`` / ``MiB`` / ``GiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def format_table(report: dict) -> str:
    """A readable per-mode table (MiB saved, prefix share, nodes, parameters), ratio and estimate."""
    modes = report["modes"]
    lines = [f"{'mode':26s} {'saved MiB':>9s} {'prefix MiB':>10s} {'nodes':>6s} {'prefix nodes':>12s} "
             f"{'trainable':>10s} {'frozen':>10s} {'step s':>7s} {'cuda peak MiB':>13s}"]
    prefix = prefix_keys(report) if report.get("model") else []
    for name, m in modes.items():
        if "skipped" in m:
            lines.append(f"{name:26s} skipped: {m['skipped']}")
            continue
        pre_nodes = sum(m["autograd_nodes_by_block"].get(b, 0) for b in prefix)
        peak = "not measured" if m["cuda_peak_bytes"] is None else f"{mib(m['cuda_peak_bytes']):.1f}"
        lines.append(f"{name:26s} {mib(m['saved_bytes_total']):9.2f} {mib(m['prefix_saved_bytes']):10.2f} "
                     f"{m['autograd_nodes']:6d} {pre_nodes:12d} {m['trainable_params']:10d} {m['frozen_params']:10d} "
                     f"{m['step_seconds']:7.3f} {peak:>13s}")
    r = report.get("ratios", {})
    if "topk_no_grad_over_lora_all" in r:
        lines.append(f"topk_no_grad / lora_all saved bytes = {r['topk_no_grad_over_lora_all']:.3f} "
                     f"(K/L = {r['k_over_l']:.3f})")
    for mode, e in report.get("estimate", {}).items():
        if isinstance(e, dict) and "measured_over_estimated" in e:
            lines.append(f"{mode}: top-K blocks measured {mib(e['top_k_measured_bytes']):.2f} MiB, estimated "
                         f"{mib(e['top_k_expected_bytes']):.2f} MiB (measured/estimated {e['measured_over_estimated']:.3f})")
    if "fed_from" in modes.get("topk_cached", {}):
        lines.append(f"topk_cached fed from: {modes['topk_cached']['fed_from']}")
    return "\n".join(lines)


def _measured(report: dict) -> dict[str, dict]:
    return {k: v for k, v in report["modes"].items() if "saved_bytes_by_block" in v}


def saved_bytes_figure(report: dict) -> Figure:
    """Left: saved MiB per block, one bar per mode. Right: each mode's total, split into frozen prefix /
    top-K blocks / the rest, with the analytic estimate of the top K where there is one."""
    modes = _measured(report)
    blocks = block_keys(report["model"]["num_layers"])
    first = report["model"]["first_trainable_layer"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(10, 0.8 * len(blocks) + 5), 5.0),
                                  gridspec_kw={"width_ratios": [max(3, len(blocks) / 3), 1.6]})
    width = 0.8 / max(len(modes), 1)
    for i, (name, m) in enumerate(modes.items()):
        ax.bar([j + i * width for j in range(len(blocks))], [mib(m["saved_bytes_by_block"].get(b, 0)) for b in blocks],
               width, label=name, color=f"C{i}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(blocks))], blocks, rotation=45, ha="right")
    if first > 0:
        ax.axvspan(0.6, first + 0.6, color="grey", alpha=0.12, label="frozen prefix")
    ax.set_ylabel("MiB saved for backward")
    ax.set_title(f"per block (batch {report['batch']['batch_size']}×{report['batch']['length']} tokens)", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    prefix, top = set(prefix_keys(report)), {f"layer.{i}" for i in report["model"]["trainable_layers"]}
    names = list(modes)
    parts = {"frozen prefix": lambda b: b in prefix, "top-K blocks": lambda b: b in top,
             "embed / other blocks / norm / score": lambda b: b not in prefix and b not in top}
    bottom = np.zeros(len(names))
    for (label, pick), color in zip(parts.items(), ("#9e9e9e", "#1f77b4", "#ffbb78")):
        vals = np.array([mib(sum(v for b, v in modes[n]["saved_bytes_by_block"].items() if pick(b))) for n in names])
        ax2.bar(range(len(names)), vals, bottom=bottom, color=color, label=label)
        bottom += vals
    for i, n in enumerate(names):
        e = report.get("estimate", {}).get(n)
        if e:
            ax2.plot([i - 0.4, i + 0.4], [mib(e["top_k_expected_bytes"])] * 2, color="k", lw=1.5,
                     label="estimate (top K)" if "estimate (top K)" not in ax2.get_legend_handles_labels()[1] else None)
    ax2.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax2.set_ylabel("MiB")
    ax2.set_title("total per mode", fontsize=10)
    ax2.set_ylim(0, max(bottom.max(), 1e-9) * 1.55)  # headroom for the legend
    ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle("activations saved for backward")
    fig.tight_layout()
    return fig


ROLE_COLORS = {"trained in full": "#d62728", "LoRA": "#ff7f0e", "head": "#e377c2", "frozen": "#c6dbef",
               "cached (not run)": "#e0e0e0"}


def block_role(report: dict, mode: str, block: str) -> str:
    """``trained in full`` / ``LoRA`` / ``head`` / ``frozen`` / ``cached (not run)`` of ``block`` in ``mode``."""
    if mode == "full":
        return "trained in full"
    if block == "score":
        return "head"
    layers = list(range(report["model"]["num_layers"])) if mode == "lora_all" else report["model"]["trainable_layers"]
    if block.startswith("layer.") and int(block.split(".")[1]) in layers:
        return "LoRA"
    if mode == "topk_cached" and (block == "embed" or block in prefix_keys(report)):
        return "cached (not run)"
    return "frozen"


def block_diagram_figure(report: dict) -> Figure:
    """The model as a column of blocks per mode: role (colour) and whether the block is in the graph
    (nodes or saved bytes charged to it; hatched and outlined when in the graph)."""
    modes = _measured(report)
    rows = list(reversed(block_keys(report["model"]["num_layers"])))  # score on top, embed at the bottom
    fig, ax = plt.subplots(figsize=(1.9 * len(modes) + 2.2, 0.42 * len(rows) + 1.8))
    for x, (name, m) in enumerate(modes.items()):
        for y, b in enumerate(reversed(rows)):
            role = block_role(report, name, b)
            in_graph = m["saved_bytes_by_block"].get(b, 0) > 0 or m["autograd_nodes_by_block"].get(b, 0) > 0
            ax.add_patch(plt.Rectangle((x * 1.9, y), 1.75, 0.85, facecolor=ROLE_COLORS[role],
                                       edgecolor="k" if in_graph else "none", hatch="//" if in_graph else None,
                                       linewidth=1.2))
            ax.text(x * 1.9 + 0.875, y + 0.42, human(m["saved_bytes_by_block"].get(b, 0)) if in_graph else "—",
                    ha="center", va="center", fontsize=7, bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "lw": 0}
                    if in_graph else None)
        ax.text(x * 1.9 + 0.875, len(rows) + 0.15, name.replace("topk_", "top-K\n").replace("_", " "),
                ha="center", va="bottom", fontsize=8)
    for y, b in enumerate(reversed(rows)):
        ax.text(-0.15, y + 0.42, b, ha="right", va="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, label=r) for r, c in ROLE_COLORS.items()]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="k", hatch="//",
                                 label="in the graph (bytes saved)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, fontsize=7, frameon=False)
    ax.set_xlim(-1.4, 1.9 * len(modes))
    ax.set_ylim(-0.2, len(rows) + 1.1)
    ax.axis("off")
    ax.set_title("block roles and graph membership per mode", fontsize=10)
    fig.tight_layout()
    return fig


def metrics_of(report: dict) -> dict[str, float]:
    """Flat totals for MLflow: ``<mode>.saved_bytes``, ``<mode>.autograd_nodes``, ``<mode>.prefix_saved_bytes``, …"""
    out: dict[str, float] = {}
    for name, m in report["modes"].items():
        if "saved_bytes_total" not in m:
            continue
        out.update({f"{name}.saved_bytes": m["saved_bytes_total"], f"{name}.prefix_saved_bytes": m["prefix_saved_bytes"],
                    f"{name}.autograd_nodes": m["autograd_nodes"], f"{name}.step_seconds": m["step_seconds"]})
        if m["cuda_peak_bytes"] is not None:
            out[f"{name}.cuda_peak_bytes"] = m["cuda_peak_bytes"]
    for mode, e in report.get("estimate", {}).items():
        if isinstance(e, dict) and "measured_over_estimated" in e:
            out[f"{mode}.measured_over_estimated"] = e["measured_over_estimated"]
    out.update({f"ratio.{k}": v for k, v in report.get("ratios", {}).items()})
    return out


__all__ = ["MODES", "InspectConfig", "BlockShape", "seed_table", "format_seed_table", "inspect_modes", "measure_step",
           "estimate_top_k", "block_saved_bytes", "shape_of", "format_table", "saved_bytes_figure",
           "block_diagram_figure", "metrics_of", "cache_batch", "precomputed_prefix"]
