"""Exact UTF-8 bytes of token ids, for every tokenizer kind, computed from the ids (contract 3).

Byte-level BPE (GPT-2, Qwen, Llama-3, tiktoken-converted) maps each byte to a printable
character; SentencePiece writes spaces as `▁` and unknown bytes as `<0xNN>`. Special tokens
carry no completion bytes (an empty span) and are flagged. A token may hold part of a multi-byte
character, so spans are over bytes, never over decoded characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable-character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


@dataclass(frozen=True)
class ByteTable:
    """Bytes of every id of one tokenizer, and which ids are special (no completion bytes)."""

    pieces: tuple[bytes, ...]
    special: frozenset[int]
    kind: str  # "byte_level" | "sentencepiece"

    def spans(self, ids: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
        """The completion's bytes and each token's [start, end) span in them."""
        spans, start = [], 0
        for token_id in ids:
            end = start + len(self.pieces[token_id])
            spans.append((start, end))
            start = end
        return b"".join(self.pieces[i] for i in ids), spans


_TABLES: dict[tuple[int, int], ByteTable] = {}


def byte_table(tokenizer) -> ByteTable:
    """The table of `tokenizer`, built once per tokenizer object (and size, should tokens be added)."""
    key = (id(tokenizer), len(tokenizer))
    if key not in _TABLES:
        _TABLES[key] = _build_table(tokenizer)
    return _TABLES[key]


def _build_table(tokenizer) -> ByteTable:
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = frozenset(tokenizer.all_special_ids) | frozenset(
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    )
    to_byte = _unicode_to_byte()
    ordinary = [t for i, t in enumerate(tokens) if i not in special and t is not None]
    byte_level = all(ch in to_byte for t in ordinary[:2000] for ch in t)
    pieces = []
    for token_id, token in enumerate(tokens):
        if token is None or token_id in special:
            pieces.append(b"")
        elif byte_level:
            pieces.append(bytes(to_byte[ch] for ch in token))
        else:
            pieces.append(_sentencepiece_bytes(token))
    return ByteTable(tuple(pieces), special, "byte_level" if byte_level else "sentencepiece")


def _sentencepiece_bytes(token: str) -> bytes:
    match = _BYTE_FALLBACK.match(token)
    if match:
        return bytes([int(match.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")
