"""Alignment: chunks partition both token lists and cover identical bytes; byte spans come from the ids;
the vocabulary map pairs ids with equal bytes and is the identity for identical tokenizers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmopd.align import (
    AlignmentError,
    align,
    byte_table,
    concat_alignments,
    tokenize_exact,
    vocab_map,
)
from mmopd.tokenizers import NAMED, load_tokenizer

TEXTS = [
    "a red circle",
    "数字 12345 and 3.14159",
    "emoji 🗼🎉 and accents: café, naïve",
    "tabs\tand\nnewlines  double  spaces",
    "日本語のテキスト",
    "def f(x):\n    return {'a': [1, 2]}  # ok\n\n\n",
    "   leading spaces, trailing spaces   ",
    "literal <|im_end|> and </s> and <s> in text",
]


@pytest.fixture(scope="module")
def qwen():
    return load_tokenizer("qwen2")


def check_alignment(student, teacher, student_ids, teacher_ids):
    """The invariants every alignment must satisfy; returns the alignment."""
    student_table, teacher_table = byte_table(student), byte_table(teacher)
    alignment = align(student_ids, teacher_ids, student_table, teacher_table)
    data = student_table.join(student_ids)
    assert alignment.coverage == 1.0
    for chunk, ids, table in (
        (alignment.student_chunk, student_ids, student_table),
        (alignment.teacher_chunk, teacher_ids, teacher_table),
    ):
        assert chunk.dtype == torch.long and chunk.shape == (len(ids),)
        # A partition in text order: every chunk has at least one token, ids never go back.
        assert chunk.unique().tolist() == list(range(alignment.num_chunks))
        assert bool((chunk[1:] >= chunk[:-1]).all())
        for k, (start, end) in enumerate(alignment.chunk_bytes):
            assert table.join([i for i, c in zip(ids, chunk.tolist()) if c == k]) == data[start:end]
    starts = [start for start, _ in alignment.chunk_bytes]
    ends = [end for _, end in alignment.chunk_bytes]
    assert starts[:1] == [0] * bool(starts) and starts[1:] == ends[:-1] and ends[-1:] == [len(data)] * bool(ends)
    counts_s = torch.bincount(alignment.student_chunk, minlength=alignment.num_chunks)
    counts_t = torch.bincount(alignment.teacher_chunk, minlength=alignment.num_chunks)
    assert torch.equal(alignment.one_to_one, (counts_s == 1) & (counts_t == 1))
    return alignment


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_spans_cover_the_exact_bytes(tokenizer, qwen, text):
    for tok in (tokenizer, qwen):
        ids = encode(tok, text)
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
    assert eos in table.special and table.special_names["<|im_end|>"] == eos
    assert table.kind == "byte_level"


def test_real_qwen_vocabulary_is_the_full_size(qwen):
    assert len(qwen) == 151_643 + 8 + 3  # ranks, Qwen2-VL special tokens, Qwen2-Audio tokens
    assert qwen.decode(qwen("hello world")["input_ids"]) == "hello world"


@pytest.mark.parametrize("text", TEXTS)
def test_alignment_partitions_both_sides_over_identical_bytes(tokenizer, qwen, text):
    for student, teacher in ((tokenizer, qwen), (qwen, tokenizer), (qwen, qwen)):
        student_ids = encode(student, text)
        teacher_ids = tokenize_exact(teacher, text.encode())
        assert teacher_ids == encode(teacher, text)  # valid text: the teacher's own tokenisation
        alignment = check_alignment(student, teacher, student_ids, teacher_ids)
        if student is teacher:
            assert bool(alignment.one_to_one.all()) and alignment.num_chunks == len(student_ids)


def test_end_of_turn_is_its_own_final_one_to_one_chunk(tokenizer, qwen):
    student_ids = encode(tokenizer, "a red circle") + [tokenizer.eos_token_id]
    teacher_ids = encode(qwen, "a red circle") + [qwen.eos_token_id]
    alignment = check_alignment(tokenizer, qwen, student_ids, teacher_ids)
    assert alignment.student_chunk[-1] == alignment.teacher_chunk[-1] == alignment.num_chunks - 1
    assert alignment.chunk_bytes[-1] == (12, 12) and bool(alignment.one_to_one[-1])
    # A byte-less token on one side only (a sampled special that is no stop) joins the last chunk.
    unpaired = align(student_ids, teacher_ids[:-1], byte_table(tokenizer), byte_table(qwen))
    assert unpaired.student_chunk[-1] == unpaired.student_chunk[-2] == unpaired.num_chunks - 1
    assert unpaired.chunk_bytes[-1][1] == 12 and not bool(unpaired.one_to_one[-1])
    with pytest.raises(AlignmentError, match="no bytes to align"):
        align([tokenizer.eos_token_id], [], byte_table(tokenizer), byte_table(qwen))


def test_mismatched_bytes_raise(tokenizer, qwen):
    with pytest.raises(AlignmentError, match="first difference at byte 6"):
        align(encode(tokenizer, "a red circle"), encode(qwen, "a red square"), byte_table(tokenizer), byte_table(qwen))
    with pytest.raises(AlignmentError, match="12 vs 11"):
        align(encode(tokenizer, "a red circle"), encode(qwen, "a red circl"), byte_table(tokenizer), byte_table(qwen))


def test_non_canonical_student_tokenisations_still_align(tokenizer, qwen):
    text = "a red circle, 数字 🗼 12345"
    data = text.encode()
    qwen_table = byte_table(qwen)
    byte_by_byte = [qwen_table.by_bytes[bytes([b])][0] for b in data]  # a valid but unnatural sampling
    assert byte_by_byte != encode(qwen, text)
    alignment = check_alignment(qwen, tokenizer, byte_by_byte, tokenize_exact(tokenizer, data))
    assert alignment.num_chunks <= len(tokenize_exact(tokenizer, data))


def test_tokenize_exact_covers_a_cut_multibyte_character(tokenizer, qwen):
    for cut in range(1, 4):  # 🗼 is four bytes; a length-truncated completion may stop inside it
        data = "tower 🗼".encode()[: 6 + cut]
        for tok in (tokenizer, qwen):
            assert byte_table(tok).join(tokenize_exact(tok, data)) == data
    # Invalid UTF-8 in the middle (a sampled lone continuation byte) is covered too.
    assert byte_table(qwen).join(tokenize_exact(qwen, b"a\x97b \xbc")) == b"a\x97b \xbc"


def test_tokenize_exact_never_emits_special_tokens_for_their_text(qwen):
    ids = tokenize_exact(qwen, b"stop <|im_end|> here")
    assert qwen.eos_token_id not in ids
    assert byte_table(qwen).join(ids) == b"stop <|im_end|> here"


def test_concat_offsets_chunk_ids_for_one_segment_sum(tokenizer, qwen):
    parts = []
    for text in TEXTS[:3]:
        parts.append(check_alignment(tokenizer, qwen, encode(tokenizer, text), encode(qwen, text)))
    batch = concat_alignments(parts)
    assert batch.num_chunks == sum(a.num_chunks for a in parts)
    assert torch.equal(batch.student_chunk[: len(parts[0].student_chunk)], parts[0].student_chunk)
    second = batch.teacher_chunk[
        len(parts[0].teacher_chunk) : len(parts[0].teacher_chunk) + len(parts[1].teacher_chunk)
    ]
    assert torch.equal(second, parts[1].teacher_chunk + parts[0].num_chunks)
    assert bool((batch.student_chunk[1:] >= batch.student_chunk[:-1]).all())
    assert batch.chunk_bytes[parts[0].num_chunks][0] == parts[0].chunk_bytes[-1][1]


def test_vocab_map_is_the_identity_for_identical_tokenizers(tokenizer, qwen):
    for tok in (tokenizer, qwen):
        shared = vocab_map(tok, tok)
        assert torch.equal(shared.student_ids, torch.arange(len(tok)))
        assert torch.equal(shared.teacher_ids, torch.arange(len(tok)))
        assert vocab_map(tok, tok) is shared  # cached per pair


def test_vocab_map_pairs_equal_bytes_one_to_one(tokenizer, qwen):
    shared = vocab_map(tokenizer, qwen)
    student_table, teacher_table = byte_table(tokenizer), byte_table(qwen)
    assert len(set(shared.teacher_ids.tolist())) == len(shared)  # one-to-one
    for s, t in zip(shared.student_ids.tolist(), shared.teacher_ids.tolist()):
        if s in student_table.special:
            assert tokenizer.convert_ids_to_tokens(s) == qwen.convert_ids_to_tokens(t)
        else:
            assert student_table.pieces[s] == teacher_table.pieces[t]
    # Unpaired: only the small BPE's merge intermediates that Qwen lacks (e.g. 'rcle').
    unpaired = set(range(len(tokenizer))) - set(shared.student_ids.tolist())
    assert unpaired and all(student_table.pieces[i] not in teacher_table.by_bytes for i in unpaired)
    assert not unpaired & student_table.special


# Every pair of real tokenizers (and the task's tiny BPE), over text that stresses each kind.
MIXED = [
    "The answer is 42. 数字 12345, 3.14159 and 1,000,000!",
    "emoji 🗼🎉👨‍👩‍👧 flags 🇫🇷 and accents: café, naïve, Ångström",
    "日本語のテキスト、中文文本。한국어 텍스트",
    "def f(x):\n    return {'a': [1, 2]}  # ok\n\n\n\tindented\r\n",
    "   runs   of    spaces\n\n\n\nand newlines   ",
    " 🗼",
]
CUT = "tower 🗼 and 数".encode()[:-1]  # a completion truncated inside a character


def pair_names():
    return [(s, t) for s in ["bpe", *sorted(NAMED)] for t in ["bpe", *sorted(NAMED)]]


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    return {"bpe": tokenizer, **{name: load_tokenizer(name) for name in NAMED}}


@pytest.mark.parametrize(("student_name", "teacher_name"), pair_names())
def test_every_pair_aligns_with_full_coverage(tokenizers, student_name, teacher_name):
    student, teacher = tokenizers[student_name], tokenizers[teacher_name]
    for data in [text.encode() for text in MIXED] + [CUT]:
        student_ids = tokenize_exact(student, data) + [student.eos_token_id]
        teacher_ids = tokenize_exact(teacher, data) + [teacher.eos_token_id]
        assert byte_table(student).join(student_ids) == byte_table(teacher).join(teacher_ids) == data
        alignment = check_alignment(student, teacher, student_ids, teacher_ids)
        assert bool(alignment.one_to_one[-1])  # end of turn ↔ end of turn
        if student_name == teacher_name:
            assert alignment.num_chunks == len(student_ids) and bool(alignment.one_to_one.all())


@pytest.mark.parametrize("name", sorted(NAMED))
def test_vocab_map_identity_and_bytes_for_named_tokenizers(tokenizers, name):
    tok = tokenizers[name]
    identity = vocab_map(tok, tok)
    assert torch.equal(identity.student_ids, torch.arange(len(tok)))
    assert torch.equal(identity.teacher_ids, torch.arange(len(tok)))
    other = tokenizers["qwen2" if name != "qwen2" else "cl100k"]
    shared = vocab_map(tok, other)
    student_table, teacher_table = byte_table(tok), byte_table(other)
    assert len(set(shared.teacher_ids.tolist())) == len(shared) > 1000
    pairs = zip(shared.student_ids.tolist(), shared.teacher_ids.tolist())
    assert all(student_table.pieces[s] == teacher_table.pieces[t] for s, t in pairs if s not in student_table.special)
    # End of turn maps to end of turn, whatever the names.
    assert shared.teacher_ids[shared.student_ids == tok.eos_token_id].tolist() == [other.eos_token_id]


def test_numerals_map_by_bytes_not_strings(tokenizers):
    # SentencePiece writes " 1" as "▁1"-style pieces, byte-level BPE as "Ġ1": strings differ, bytes match.
    v3, qwen = tokenizers["mistral-v3"], tokenizers["qwen2"]
    shared = vocab_map(v3, qwen)
    space = v3.convert_tokens_to_ids("▁")
    assert shared.teacher_ids[shared.student_ids == space].tolist() == [qwen.convert_tokens_to_ids("Ġ")]
    digit = v3.convert_tokens_to_ids("7")
    assert shared.teacher_ids[shared.student_ids == digit].tolist() == [qwen.convert_tokens_to_ids("7")]
    fallback = v3.convert_tokens_to_ids("<0x20>")
    assert fallback not in shared.student_ids.tolist()  # the real "▁" piece is preferred over <0x20>


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    pair=st.sampled_from([("mistral-v1", "tekken"), ("tekken", "qwen2"), ("bpe", "mistral-v3"), ("cl100k", "bpe")]),
)
def test_any_segmentation_of_any_bytes_aligns(tokenizers, text, cuts, pair):
    """A student may sample any ids: segment random bytes at random offsets, tokenise each segment."""
    student, teacher = tokenizers[pair[0]], tokenizers[pair[1]]
    data = text.encode()
    data = data[: cuts[0] % (len(data) + 1)] if cuts else data  # maybe cut inside a character
    offsets = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    student_ids = [i for a, b in zip(offsets, offsets[1:]) for i in tokenize_exact(student, data[a:b])]
    teacher_ids = tokenize_exact(teacher, data)
    assert byte_table(teacher).join(teacher_ids) == data
    check_alignment(student, teacher, student_ids, teacher_ids)


def test_tokenize_exact_keeps_text_a_normaliser_would_change(tokenizers):
    # SentencePiece reads a literal "▁" as a space; the exact tokenisation must keep its three bytes.
    v1 = tokenizers["mistral-v1"]
    data = "a ▁ b and more".encode()
    ids = tokenize_exact(v1, data)
    assert byte_table(v1).join(ids) == data
    assert ids[-2:] == tokenize_exact(v1, b" and more")[-2:]  # words the normaliser left alone keep their ids
