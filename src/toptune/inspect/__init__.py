"""What the autograd graph keeps, per block and per prefix mode — measured, not asserted.

The seed teaches three tools — ``requires_grad=False``, ``torch.no_grad()``, ``detach()`` — and
claims that only no_grad + detach take a frozen prefix out of the graph. This module measures it:

- :func:`seed_table` (``seed_graph``) regenerates the seed's TinyNet cases A / B / C (node names and adjacency list
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

Rooms: ``seed_graph`` (the seed's table), ``measure`` (one step charged per block), ``estimate`` (the
analytic estimate and which block kinds it covers), ``modes`` (one classifier per mode), ``report`` (table,
figures, metrics).
"""

from toptune.inspect.estimate import (
    BlockShape,
    block_saved_bytes,
    estimate_report,
    estimate_top_k,
    shape_of,
)
from toptune.inspect.measure import (
    StepMeasure,
    block_keys,
    block_of,
    measure_step,
    prefix_keys,
)
from toptune.inspect.modes import (
    MODES,
    cache_batch,
    inspect_modes,
    precomputed_prefix,
)
from toptune.inspect.report import (
    block_diagram_figure,
    format_table,
    metrics_of,
    saved_bytes_figure,
)
from toptune.inspect.seed_graph import format_seed_table, seed_table

__all__ = [
    "MODES",
    "BlockShape",
    "StepMeasure",
    "seed_table",
    "format_seed_table",
    "inspect_modes",
    "measure_step",
    "estimate_top_k",
    "estimate_report",
    "block_saved_bytes",
    "shape_of",
    "block_keys",
    "block_of",
    "prefix_keys",
    "format_table",
    "saved_bytes_figure",
    "block_diagram_figure",
    "metrics_of",
    "cache_batch",
    "precomputed_prefix",
]
