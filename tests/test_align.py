"""Byte spans come from the ids, and concatenate to the exact UTF-8 bytes of the text."""

from __future__ import annotations

import pytest

from mmopd.align import byte_table
from mmopd.models import qwen_tokenizer

TEXTS = [
    "a red circle",
    "数字 12345 and 3.14159",
    "emoji 🗼🎉 and accents: café, naïve",
    "tabs\tand\nnewlines  double  spaces",
    "日本語のテキスト",
]


@pytest.fixture(scope="module")
def qwen():
    return qwen_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe_spans_cover_the_exact_bytes(tokenizer, qwen, text):
    for tok in (tokenizer, qwen):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        data, spans = byte_table(tok).spans(ids)
        assert data == text.encode("utf-8")
        assert spans[0][0] == 0 and spans[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(end > start for start, end in spans)


def test_split_multibyte_characters_have_partial_byte_spans(tokenizer):
    # The task BPE never saw CJK or emoji, so those characters are split into single bytes.
    ids = tokenizer("🗼", add_special_tokens=False)["input_ids"]
    data, spans = byte_table(tokenizer).spans(ids)
    assert data == "🗼".encode()
    assert len(ids) == 4 and [end - start for start, end in spans] == [1, 1, 1, 1]


def test_special_tokens_carry_no_bytes_and_are_flagged(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer("red", add_special_tokens=False)["input_ids"] + [eos]
    table = byte_table(tokenizer)
    data, spans = table.spans(ids)
    assert data == b"red"
    assert spans[-1][0] == spans[-1][1] == 3
    assert eos in table.special
    assert table.kind == "byte_level"


def test_real_qwen_vocabulary_is_the_full_size(qwen):
    assert len(qwen) == 151_643 + 8 + 3  # ranks, Qwen2-VL special tokens, Qwen2-Audio tokens
    assert qwen.decode(qwen("hello world")["input_ids"]) == "hello world"
