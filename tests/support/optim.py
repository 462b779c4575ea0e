"""How far apart two equivalent training runs may end, given the optimiser.

Two runs that compute the same thing in another order (the cache's stored states vs the live prefix, two
processes' all-reduced gradients vs one process's batch) get gradients that differ in the last bits.

- Plain SGD steps by ``lr·g``: the weights differ by ``Σ lr_t·δg_t``, as little as the gradients do.
- AdamW steps by ``lr_t·m̂/(√v̂+ε)``, about ``lr_t`` in size whatever ``g`` is: where an element's gradient
  is near zero, a last-bit difference can flip its sign and move the two runs' element apart by up to
  twice the largest step, every step (seen: 1.6e-5 in one element of a LoRA B on an AMD EPYC after 10 steps).
  Such elements are few; the rest agree as tightly as under SGD.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BETAS = (0.9, 0.999)
"""torch.optim.AdamW's defaults (the library does not change them)."""


def adamw_step_ratio(steps: int, betas: tuple[float, float] = BETAS) -> float:
    """The largest ``|m̂_t|/√v̂_t`` over the first ``steps`` steps, for any gradients (ε only lowers it).

    ``m_t = (1-β1) Σ_k β1^k g_{t-k}``, ``v_t = (1-β2) Σ_k β2^k g_{t-k}²``; by Cauchy-Schwarz
    ``|m_t| ≤ (1-β1) √(Σ_k (β1²/β2)^k) √(v_t/(1-β2))``, then the bias corrections ``1-β1^t``, ``1-β2^t``.
    Exactly 1 at step 1 (``g/|g|``); about 1.04 by step 10, 1.6 by step 50."""
    b1, b2 = betas
    gamma = b1 * b1 / b2
    return max(
        (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt((1 - gamma**t) / (1 - gamma))
        for t in range(1, steps + 1)
    )


def adamw_apart_bound(lrs: list[float]) -> float:
    """The most one element of two AdamW runs' weights can differ after steps at learning rates ``lrs``
    (weight decay 0): each step moves each run's element by at most ``lr_t·adamw_step_ratio``, in
    opposite directions at worst."""
    return 2 * adamw_step_ratio(len(lrs)) * sum(lrs)


def assert_adamw_runs_alike(a: dict, b: dict, lrs: list[float], atol: float = 1e-5, share: float = 1e-3) -> None:
    """``a`` and ``b`` (name → array or tensor) trained by AdamW at learning rates ``lrs`` from the same
    start on gradients equal to the last bits: no element further apart than the optimiser allows, and
    all but ``share`` of the elements within ``atol`` (the sign flips near zero are rare)."""
    assert a.keys() == b.keys()
    bound = adamw_apart_bound(lrs)
    diffs = np.concatenate(
        [np.abs(np.asarray(torch.as_tensor(a[k]) - torch.as_tensor(b[k]), dtype=np.float64)).ravel() for k in sorted(a)]
    )
    worst = max(sorted(a), key=lambda k: float((torch.as_tensor(a[k]) - torch.as_tensor(b[k])).abs().max()))
    assert diffs.max() <= bound, f"{worst}: {diffs.max():.3g} apart, more than AdamW's {bound:.3g} allows"
    off = int((diffs > atol).sum())
    assert off <= share * diffs.size, f"{off} of {diffs.size} elements more than {atol} apart (worst: {worst})"
