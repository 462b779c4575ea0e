"""Views of a decoder's block list that the model's own forward runs: the forward split for every Qwen family.

A view is a shallow copy of the backbone (``Qwen*Model`` / ``Qwen3_5*TextModel``) that shares every
parameter, buffer and block with it but holds only blocks ``[start, stop)``; the stock ``forward`` then
builds the masks (full, sliding, the linear-attention ones), the rotary / M-RoPE positions and runs the
blocks exactly as for the whole model. Three things make a slice of the list behave like that part of the
whole, each measured on transformers 5.24 (logits identical, LoRA gradients identical, every family):

- the stock loop picks each block's mask by position, ``config.layer_types[i]``: the view gets a config
  copy with ``layer_types[start:stop]`` and ``num_hidden_layers = stop - start`` (else sliding families
  give silently wrong logits, and hybrids crash);
- ``use_cache=False``, passed and set: a forward builds a KV / recurrent cache by default, which in a
  slice indexes blocks by their original ``layer_idx`` (``IndexError``);
- output capture (``output_hidden_states`` …) installs its hooks on the shared blocks once, on the whole
  backbone, before any view is made (``maybe_install_capturing_hooks``), not once per view.

The prefix view skips the final norm (its output enters block ``start`` of the whole model); the top view
keeps it. Views are cached on the backbone per ``(start, stop, norm)``.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from transformers.utils.output_capturing import maybe_install_capturing_hooks

from toptune.model.load import Decoder

_VIEWS = "_toptune_views"


def sliced_config(config, start: int, stop: int):
    """A copy of ``config`` describing blocks ``[start, stop)`` only (``layer_types`` and
    ``num_hidden_layers``, which the stock loop reads by position), with the cache off."""
    out = copy.copy(config)
    out.__dict__ = dict(config.__dict__)  # its own attribute dict: setting fields leaves ``config`` untouched
    types = getattr(config, "layer_types", None)
    out.__dict__["num_hidden_layers"] = stop - start
    if types is not None:
        out.__dict__["layer_types"] = list(types[start:stop])
    out.__dict__["use_cache"] = False
    return out


def block_view(inner: Decoder, start: int, stop: int, final_norm: bool) -> nn.Module:
    """The backbone ``inner`` restricted to blocks ``[start, stop)``; without ``final_norm`` its output is
    the residual stream entering block ``stop``. Shares every weight with ``inner``."""
    views = inner.__dict__.setdefault(_VIEWS, {})
    key = (start, stop, final_norm)
    if key not in views:
        maybe_install_capturing_hooks(inner)
        view = copy.copy(inner)
        view.__dict__ = {k: v for k, v in inner.__dict__.items() if k != _VIEWS}
        view._modules = dict(inner._modules)  # its own module table: replacing entries leaves ``inner`` whole
        view.layers = nn.ModuleList(list(inner.layers)[start:stop])
        if not final_norm:
            view.norm = nn.Identity()
        view.config = sliced_config(inner.config, start, stop)
        views[key] = view
    return views[key]


def run_view(
    view: nn.Module, attention_mask: Tensor | None, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None
) -> Tensor:
    """The view's stock forward: hidden states (B, T, D) after its last block (and norm, if it has one)."""
    out = view(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state
