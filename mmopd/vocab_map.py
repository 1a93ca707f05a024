"""The tokens two vocabularies share: student id ↔ teacher id with identical canonical bytes.

Tokens are compared as bytes, not strings (X-Token shows string matching fails on numerals and on
`▁` versus `Ġ` spaces); special tokens have no bytes and are matched by name, and the two end-of-turn
tokens are paired explicitly. The map is one-to-one, so identical tokenizers give the identity.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from mmopd.byte_table import ByteTable, byte_table


@dataclass(frozen=True)
class VocabMap:
    """Pairs of ids with the same bytes (or the same special-token name), sorted by student id."""

    student_ids: torch.Tensor  # (S,) long
    teacher_ids: torch.Tensor  # (S,) long
    student_first_byte: torch.Tensor | None = None  # (V_s,) long: first byte of each id, 256 if it has none
    teacher_first_byte: torch.Tensor | None = None  # (V_t,) long

    def __len__(self) -> int:
        return len(self.student_ids)


_MAPS: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, VocabMap]] = {}


def vocab_map(student_tokenizer, teacher_tokenizer) -> VocabMap:
    """The shared vocabulary of two tokenizers, computed once per pair of tokenizer objects."""
    key = (id(student_tokenizer), id(teacher_tokenizer))
    cached = _MAPS.get(key)
    if cached is None or cached[0]() is not student_tokenizer or cached[1]() is not teacher_tokenizer:
        pairs = shared_ids(
            byte_table(student_tokenizer),
            byte_table(teacher_tokenizer),
            (student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id),
        )
        pairs.sort()
        ids = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)  # (S, 2)
        shared = VocabMap(
            ids[:, 0], ids[:, 1], first_bytes(byte_table(student_tokenizer)), first_bytes(byte_table(teacher_tokenizer))
        )
        cached = (weakref.ref(student_tokenizer), weakref.ref(teacher_tokenizer), shared)
        _MAPS[key] = cached
    return cached[2]


def first_bytes(table: ByteTable) -> torch.Tensor:
    """(V,) the first byte of every id's bytes, 256 for ids without bytes (specials)."""
    return torch.tensor([piece[0] if piece else 256 for piece in table.pieces], dtype=torch.long)


def shared_ids(
    student: ByteTable, teacher: ByteTable, end_tokens: tuple[int | None, int | None]
) -> list[tuple[int, int]]:
    """(student id, teacher id) pairs: ordinary ids with equal bytes, paired in order of preference
    (real pieces before `<0xNN>` byte fallback, then lowest id); specials with equal names; the two
    end-of-turn tokens with each other when their names differ."""
    pairs = []
    teacher_groups = teacher.by_bytes
    for piece, student_ids in student.by_bytes.items():
        pairs += zip(student_ids, teacher_groups.get(piece, ()))
    pairs += [
        (i, teacher.special_names[name]) for name, i in student.special_names.items() if name in teacher.special_names
    ]
    student_end, teacher_end = end_tokens
    paired_students, paired_teachers = {s for s, _ in pairs}, {t for _, t in pairs}
    if (
        student_end is not None
        and teacher_end is not None
        and student_end not in paired_students
        and teacher_end not in paired_teachers
    ):
        pairs.append((student_end, teacher_end))
    return pairs
