"""Exact UTF-8 bytes of token ids, for every tokenizer kind, computed from the ids (contract 3).

Byte-level BPE (GPT-2, Qwen, Llama-3, tiktoken-converted, Tekken) maps each byte to a printable
character; SentencePiece writes spaces as `▁` and bytes outside its pieces as `<0xNN>`. Special
tokens carry no completion bytes (an empty span) and are flagged; added non-special tokens are their
literal text. A token may hold part of a multi-byte character, so spans are over bytes, never chars.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

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
    """Bytes of every id of one tokenizer, which ids are special (no completion bytes, matched by
    name across tokenizers) and which are byte-fallback pieces (`<0xNN>`, never preferred)."""

    pieces: tuple[bytes, ...]
    special: frozenset[int]
    kind: str  # "byte_level" | "sentencepiece"
    special_names: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    byte_fallback: frozenset[int] = frozenset()

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.pieces), dtype=np.int64, count=len(self.pieces))  # (V,)

    def join(self, ids: list[int]) -> bytes:
        """The bytes of `ids`, concatenated."""
        return b"".join(map(self.pieces.__getitem__, ids))

    def spans(self, ids: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
        """The completion's bytes and each token's [start, end) span in them."""
        ends = np.cumsum(self.lengths[np.asarray(ids, dtype=np.int64)]).tolist()
        return self.join(ids), list(zip([0, *ends[:-1]], ends))

    @cached_property
    def by_bytes(self) -> dict[bytes, list[int]]:
        """Ordinary (non-special, non-empty) ids grouped by their bytes, the preferred id first:
        real pieces before byte fallback, then the lowest id."""
        groups: dict[bytes, list[int]] = {}
        for token_id, piece in enumerate(self.pieces):
            if piece and token_id not in self.special:
                groups.setdefault(piece, []).append(token_id)
        for ids in groups.values():
            if len(ids) > 1:
                ids.sort(key=lambda i: (i in self.byte_fallback, i))
        return groups

    @cached_property
    def longest_piece(self) -> int:
        return int(self.lengths.max(initial=0))

    def greedy(self, data: bytes) -> list[int]:
        """Ids covering exactly `data`, longest piece first: an exact (not canonical) tokenisation for
        bytes a tokenizer cannot take as text (a split multi-byte character, normalised text)."""
        ids, start, groups = [], 0, self.by_bytes
        while start < len(data):
            for end in range(min(len(data), start + self.longest_piece), start, -1):
                match = groups.get(data[start:end])
                if match:
                    ids.append(match[0])
                    start = end
                    break
            else:
                raise ValueError(f"the vocabulary has no token for byte {data[start]:#04x}")
        return ids


_TABLES: dict[int, tuple[weakref.ref, int, ByteTable]] = {}


def byte_table(tokenizer) -> ByteTable:
    """The table of `tokenizer`, built once per tokenizer object (and size, should tokens be added)."""
    cached = _TABLES.get(id(tokenizer))
    if cached is None or cached[0]() is not tokenizer or cached[1] != len(tokenizer):
        cached = (weakref.ref(tokenizer), len(tokenizer), _build_table(tokenizer))
        _TABLES[id(tokenizer)] = cached
    return cached[2]


def _build_table(tokenizer) -> ByteTable:
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < size}
    special = {i for i in tokenizer.all_special_ids if i is not None and i < size}
    special |= {i for i, t in added.items() if t.special}
    special |= {i for i, t in enumerate(tokens) if t is None}  # unused ids in a sparse vocabulary
    kind = _kind(tokenizer, tokens, special)
    to_byte = _unicode_to_byte()
    pieces, fallback = [], set()
    for token_id, token in enumerate(tokens):
        if token_id in special:
            pieces.append(b"")
        elif token_id in added:
            pieces.append(added[token_id].content.encode("utf-8"))
        elif kind == "byte_level":
            pieces.append(bytes(to_byte[ch] for ch in token) if all(ch in to_byte for ch in token) else token.encode())
        else:
            match = _BYTE_FALLBACK.match(token)
            if match:
                fallback.add(token_id)
                pieces.append(bytes([int(match.group(1), 16)]))
            else:
                pieces.append(token.replace("▁", " ").encode("utf-8"))
    names = {tokens[i]: i for i in sorted(special) if tokens[i] is not None}
    return ByteTable(tuple(pieces), frozenset(special), kind, names, frozenset(fallback))


def _kind(tokenizer, tokens: list[str | None], special: set[int]) -> str:
    """byte_level or sentencepiece: from the fast tokenizer's decoder, else from the tokens' alphabet."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = backend.decoder if backend is not None else None
    if decoder is not None:
        description = json.dumps(json.loads(decoder.__getstate__()), ensure_ascii=False)
        if '"ByteLevel"' in description:
            return "byte_level"
        if '"ByteFallback"' in description or '"Metaspace"' in description or "▁" in description:
            return "sentencepiece"
    to_byte = _unicode_to_byte()
    ordinary = [t for i, t in enumerate(tokens[:5000]) if i not in special and t is not None]
    return "byte_level" if all(ch in to_byte for t in ordinary for ch in t) else "sentencepiece"
