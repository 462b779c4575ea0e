"""Seeded tiny random checkpoints of every open Qwen text family, in the hub's layout, with their tokenizer.

``python -m toptune.tiny MODEL_TYPE OUT_DIR`` writes one: the embedded default (a tiny Qwen3), the tests'
fixtures and a user's dry run all come from here. Each is written the way its hub repo ships it and read
back through the same ``from_pretrained`` path a real checkpoint takes:

    qwen2, qwen3                  ``*ForCausalLM`` (Qwen2 / 2.5 / 3)
    qwen2_moe, qwen3_moe          ``*ForCausalLM`` with routed experts (+ a shared expert for qwen2_moe)
    qwen3_next                    ``Qwen3NextForCausalLM``: Gated DeltaNet + gated attention, routed + shared experts
    qwen3_5, qwen3_5_moe          ``*ForConditionalGeneration``: a (tiny) vision tower + the language model
                                  under ``model.language_model`` (Qwen3.5 / 3.6 / 3.8)

The shapes are small but keep every feature the forward split must respect: grouped-query attention, Qwen2's q/k/v
biases and sliding-window layers (``layer_types`` mixes full and sliding), a dense MLP block among MoE blocks
(qwen3_moe's ``mlp_only_layers``), hybrid ``layer_types`` (3 of 4 blocks linear attention), M-RoPE.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers as tf

from toptune.model.tokenizer import (
    TOKENIZER_FILES,
    ensure_qwen_tokenizer,
    family_spec,
    tokenizer_family,
)

FAMILIES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe")
"""Model types ``python -m toptune.tiny`` writes (every open Qwen text family)."""
QWEN3_VOCAB_SIZE = 151936
"""Qwen2/2.5/3's embedding rows (151,669 tokens rounded up to a multiple of 128)."""
QWEN3_5_VOCAB_SIZE = 248320
"""Qwen3.5's embedding rows (248,077 tokens rounded up)."""
COMPOSITE = ("qwen3_5", "qwen3_5_moe")
"""Families whose hub checkpoints are vision + language models (the text part lives in ``text_config``)."""


@dataclass(frozen=True)
class TinyQwenSpec:
    """Shape of a seeded random Qwen checkpoint (the embedded default, the tests' fixtures, the bench)."""

    model_type: str = "qwen3"
    """One of ``FAMILIES``."""
    num_layers: int = 8
    """Decoder blocks."""
    hidden_size: int = 128
    """Residual width D."""
    intermediate_size: int = 192
    """MLP width (also the shared expert's and a dense block's in MoE families)."""
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention when < num_heads)."""
    head_dim: int = 16
    """Per-head width (Qwen2 derives it as hidden_size / num_heads)."""
    vocab_size: int | None = None
    """Embedding rows; None = the family's real vocabulary size, so real token ids fit."""
    num_experts: int = 4
    """Routed experts per MoE block."""
    experts_per_token: int = 2
    """Experts each token is routed to."""
    moe_intermediate_size: int = 32
    """Width of one routed expert."""
    sliding_window: int = 16
    """Qwen2's sliding window, on blocks from ``num_layers // 2`` on (a mixed ``layer_types``)."""
    initializer_range: float = 0.1
    """Std of the random block weights. Measured on the bundled data (K=3 of 8): 0.1 reaches test
    accuracy 0.99 in 5 epochs for model seeds 0, 1, 2; 0.02 (a pretrained config's value) leaves
    the random blocks near-identity and nothing is learnt; 0.2-0.3 mixes tokens into per-sentence
    hashes that the top blocks memorise without generalising."""
    embedding_std: float = 0.3
    """Std of the random token embeddings."""
    seed: int = 0
    """Seed of the random weights."""


def vocab_size(spec: TinyQwenSpec) -> int:
    return spec.vocab_size or (QWEN3_5_VOCAB_SIZE if spec.model_type in COMPOSITE else QWEN3_VOCAB_SIZE)


def pad_id(model_type: str) -> int:
    """The family's ``<|endoftext|>`` id (its pad token)."""
    return family_spec(tokenizer_family(model_type)).pad_id


def _text_kwargs(spec: TinyQwenSpec) -> dict:
    """Config fields every family shares."""
    return dict(
        vocab_size=vocab_size(spec),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        initializer_range=spec.initializer_range,
        bos_token_id=pad_id(spec.model_type),
        eos_token_id=pad_id(spec.model_type),
        # Left unset on purpose, as in many Qwen3 hub configs: the loader must set it.
        pad_token_id=None,
    )


def _moe_kwargs(spec: TinyQwenSpec) -> dict:
    return dict(
        num_experts=spec.num_experts,
        num_experts_per_tok=spec.experts_per_token,
        moe_intermediate_size=spec.moe_intermediate_size,
    )


def _linear_attention_kwargs(spec: TinyQwenSpec) -> dict:
    """Gated DeltaNet sizes (qwen3_next, qwen3_5): 2 key heads, 4 value heads of width 16."""
    return dict(
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        head_dim=spec.head_dim,
    )


def _mrope(spec: TinyQwenSpec) -> dict:
    """Qwen3.5's M-RoPE on a quarter of each head (``partial_rotary_factor``): the sections must add up to
    the rotary half-width, ``head_dim // 8``."""
    half = max(spec.head_dim // 8, 1)
    section = [half - 2 * (half // 4), half // 4, half // 4]
    return {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": section,
        "mrope_interleaved": True,
    }


def _vision(spec: TinyQwenSpec) -> dict:
    """A one-block vision tower: present as on the hub, never loaded by toptune."""
    return dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=spec.hidden_size,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
    )


def tiny_config(spec: TinyQwenSpec):
    """The transformers config of ``spec``: the causal LM's, or the composite model's for Qwen3.5."""
    text = _text_kwargs(spec)
    t = spec.model_type
    if t == "qwen3":
        return tf.Qwen3Config(head_dim=spec.head_dim, tie_word_embeddings=True, **text)
    if t == "qwen2":
        return tf.Qwen2Config(
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=spec.sliding_window,
            max_window_layers=spec.num_layers // 2,
            **text,
        )
    if t == "qwen2_moe":
        return tf.Qwen2MoeConfig(shared_expert_intermediate_size=spec.intermediate_size, **_moe_kwargs(spec), **text)
    if t == "qwen3_moe":
        # head_dim: an attribute the model reads, though not among the config class's declared fields
        return tf.Qwen3MoeConfig(  # type: ignore[call-arg]
            head_dim=spec.head_dim, mlp_only_layers=[spec.num_layers - 1], **_moe_kwargs(spec), **text
        )
    if t == "qwen3_next":
        return tf.Qwen3NextConfig(
            shared_expert_intermediate_size=spec.intermediate_size,
            **_moe_kwargs(spec),
            **_linear_attention_kwargs(spec),
            **text,
        )
    if t == "qwen3_5":
        return tf.Qwen3_5Config(
            text_config=dict(rope_parameters=_mrope(spec), **_linear_attention_kwargs(spec), **text),
            vision_config=_vision(spec),
        )
    if t == "qwen3_5_moe":
        text.pop("intermediate_size")
        return tf.Qwen3_5MoeConfig(
            text_config=dict(
                rope_parameters=_mrope(spec),
                shared_expert_intermediate_size=spec.intermediate_size,
                **_moe_kwargs(spec),
                **_linear_attention_kwargs(spec),
                **text,
            ),
            vision_config=_vision(spec),
        )
    raise ValueError(f"model_type={t!r}: expected one of {', '.join(FAMILIES)}")


def build_random(spec: TinyQwenSpec):
    """The random model of ``spec`` (seeded), as its hub repo's architecture: a causal LM, or the
    vision + language model for Qwen3.5."""
    torch.manual_seed(spec.seed)
    config = tiny_config(spec)
    if spec.model_type == "qwen3_5":
        return tf.Qwen3_5ForConditionalGeneration._from_config(config)
    if spec.model_type == "qwen3_5_moe":
        return tf.Qwen3_5MoeForConditionalGeneration._from_config(config)
    return tf.AutoModelForCausalLM.from_config(config)


def write_tiny_qwen(
    out_dir: str | Path, spec: TinyQwenSpec = TinyQwenSpec(), tokenizer_dir: str | Path | None = None
) -> Path:
    """Write a seeded random checkpoint of ``spec`` plus its family's offline Qwen tokenizer to ``out_dir``
    (copied from ``tokenizer_dir`` when given, else built)."""
    out_dir = Path(out_dir)
    model = build_random(spec)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, spec.embedding_std)
    model.save_pretrained(out_dir)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            shutil.copyfile(Path(tokenizer_dir) / name, out_dir / name)
    ensure_qwen_tokenizer(out_dir, family=tokenizer_family(spec.model_type))
    (out_dir / "toptune_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return out_dir


def ensure_tiny_qwen(out_dir: str | Path, spec: TinyQwenSpec = TinyQwenSpec()) -> Path:
    """Write the tiny checkpoint unless one of the same spec is already complete in ``out_dir``."""
    out_dir = Path(out_dir)
    marker = out_dir / "toptune_spec.json"
    if not (
        marker.is_file()
        and json.loads(marker.read_text()) == asdict(spec)
        and (out_dir / "model.safetensors").is_file()
    ):
        write_tiny_qwen(out_dir, spec)
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m toptune.tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("model_type", choices=FAMILIES)
    p.add_argument("out_dir")
    p.add_argument("--layers", type=int, default=8, help="decoder blocks (default 8)")
    p.add_argument("--hidden", type=int, default=64, help="residual width (default 64)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    spec = TinyQwenSpec(
        model_type=a.model_type, num_layers=a.layers, hidden_size=a.hidden, intermediate_size=2 * a.hidden, seed=a.seed
    )
    out = write_tiny_qwen(a.out_dir, spec)
    print(f"wrote a tiny {a.model_type} ({a.layers} blocks, width {a.hidden}, seed {a.seed}) to {out}")
    return out


if __name__ == "__main__":
    main()
