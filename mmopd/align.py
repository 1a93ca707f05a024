"""Cross-tokenizer alignment on bytes: the student's sampled ids and the teacher's ids for the same
completion bytes are merged at the byte offsets where both sides end a token (contract 3).

Each chunk (1:1, 1:n, n:1 or n:m tokens) covers identical bytes on both sides; every token gets a chunk
id, so losses are segment sums over tensors. Unlike TRL's GOLD (string matching of decoded tokens in
per-token Python loops) the merge is one vectorised pass over byte boundaries, exact for any tokenizer
kind (byte-level BPE, SentencePiece byte fallback, tokens that split a character).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from mmopd.byte_table import ByteTable, byte_table
from mmopd.vocab_map import VocabMap, vocab_map

__all__ = [
    "Alignment",
    "AlignmentError",
    "ByteTable",
    "VocabMap",
    "align",
    "byte_table",
    "concat_alignments",
    "tokenize_exact",
    "vocab_map",
]


class AlignmentError(ValueError):
    """The two sides do not cover identical bytes (or cannot be tokenised exactly); the sample is dropped."""


@dataclass(frozen=True)
class Alignment:
    """Chunks shared by a student and a teacher tokenisation of the same bytes. Tokens without bytes
    (a special token mid-completion) join the chunk before them; trailing ones (end of turn) on both
    sides form their own final chunk."""

    student_chunk: torch.Tensor  # (Ns,) long, non-decreasing chunk id of each student token
    teacher_chunk: torch.Tensor  # (Nt,) long, likewise for the teacher's tokens
    num_chunks: int
    chunk_bytes: list[tuple[int, int]]  # (K,) [start, end) of each chunk in the completion bytes
    one_to_one: torch.Tensor  # (K,) bool: one student and one teacher token in the chunk
    coverage: float  # aligned bytes / completion bytes


def align(
    student_ids: list[int], teacher_ids: list[int], student_table: ByteTable, teacher_table: ByteTable
) -> Alignment:
    """Merge the token-end byte boundaries of both sides into chunks; AlignmentError if their bytes differ."""
    student_bytes, teacher_bytes = student_table.join(student_ids), teacher_table.join(teacher_ids)
    if student_bytes != teacher_bytes:
        raise AlignmentError(_difference(student_bytes, teacher_bytes))
    student_lengths = student_table.lengths[np.asarray(student_ids, dtype=np.int64)]  # (Ns,)
    teacher_lengths = teacher_table.lengths[np.asarray(teacher_ids, dtype=np.int64)]  # (Nt,)
    student_tail, teacher_tail = _trailing_empty(student_lengths), _trailing_empty(teacher_lengths)
    total = len(student_bytes)
    if bool(student_tail) != bool(teacher_tail):
        # A byte-less token that ends one side only (a special token the student sampled that is no stop
        # token) joins the last chunk: the teacher's likelihood of that chunk then judges it. Dropping the
        # sample instead would leave the sampling of such tokens unpenalised.
        if total == 0:
            side = "student" if student_tail else "teacher"
            raise AlignmentError(f"only the {side} has tokens, and they have no bytes to align")
        student_tail = teacher_tail = 0
    student_ends = np.cumsum(student_lengths[: len(student_ids) - student_tail])  # (Ns - tail,)
    teacher_ends = np.cumsum(teacher_lengths[: len(teacher_ids) - teacher_tail])
    # Mark each side's token ends on a byte line; a chunk ends where both sides end a token.
    common = np.zeros(total + 1, dtype=bool)  # (total + 1,)
    common[student_ends] = True
    teacher_marks = np.zeros(total + 1, dtype=bool)
    teacher_marks[teacher_ends] = True
    common &= teacher_marks
    common[0] = False
    chunk_of_end = np.cumsum(common) - common  # common boundaries strictly before each offset
    boundaries = np.flatnonzero(common).tolist()
    num_chunks = len(boundaries)
    chunk_bytes = list(zip([0, *boundaries[:-1]], boundaries))
    student_chunk, teacher_chunk = chunk_of_end[student_ends], chunk_of_end[teacher_ends]
    if student_tail:
        student_chunk = np.concatenate([student_chunk, np.full(student_tail, num_chunks)])
        teacher_chunk = np.concatenate([teacher_chunk, np.full(teacher_tail, num_chunks)])
        chunk_bytes.append((total, total))
        num_chunks += 1
    one_to_one = (np.bincount(student_chunk, minlength=num_chunks) == 1) & (
        np.bincount(teacher_chunk, minlength=num_chunks) == 1
    )
    return Alignment(
        torch.from_numpy(student_chunk.astype(np.int64)),
        torch.from_numpy(teacher_chunk.astype(np.int64)),
        num_chunks,
        chunk_bytes,
        torch.from_numpy(one_to_one),
        1.0,
    )


def _trailing_empty(lengths: np.ndarray) -> int:
    nonempty = np.flatnonzero(lengths)
    return len(lengths) - (int(nonempty[-1]) + 1 if len(nonempty) else 0)


def _difference(student_bytes: bytes, teacher_bytes: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(student_bytes, teacher_bytes)) if a != b),
        min(len(student_bytes), len(teacher_bytes)),
    )
    return (
        f"student and teacher cover different bytes ({len(student_bytes)} vs {len(teacher_bytes)}); first difference "
        f"at byte {at}: student {student_bytes[at : at + 12]!r}, teacher {teacher_bytes[at : at + 12]!r}"
    )


def concat_alignments(alignments: list[Alignment]) -> Alignment:
    """One alignment for a micro-batch: chunk ids offset per sample, so one segment sum covers all
    samples. Byte ranges are offsets into the samples' completion bytes laid end to end."""
    chunk_offset, byte_offset, student, teacher, chunk_bytes = 0, 0, [], [], []
    for alignment in alignments:
        student.append(alignment.student_chunk + chunk_offset)
        teacher.append(alignment.teacher_chunk + chunk_offset)
        chunk_bytes += [(start + byte_offset, end + byte_offset) for start, end in alignment.chunk_bytes]
        chunk_offset += alignment.num_chunks
        byte_offset += alignment.chunk_bytes[-1][1] if alignment.chunk_bytes else 0
    empty = torch.zeros(0, dtype=torch.long)
    return Alignment(
        torch.cat(student) if student else empty,
        torch.cat(teacher) if teacher else empty,
        chunk_offset,
        chunk_bytes,
        torch.cat([a.one_to_one for a in alignments]) if alignments else torch.zeros(0, dtype=torch.bool),
        min((a.coverage for a in alignments), default=1.0),
    )


_WORDS = re.compile(r"\s*\S+|\s+")


def tokenize_exact(tokenizer, data: bytes) -> list[int]:
    """The tokenizer's ids whose bytes concatenate to exactly `data`: its own tokenisation wherever that
    reproduces the bytes, without SentencePiece's dummy-prefix space; bytes that are not valid UTF-8
    (a character cut by truncation) become byte pieces, and words a normaliser would change are
    covered by the longest matching pieces."""
    table = byte_table(tokenizer)
    ids: list[int] = []
    try:
        for text, raw in _utf8_runs(data):
            ids += table.greedy(raw) if text is None else _encode_text(tokenizer, table, text)
    except ValueError as error:
        raise AlignmentError(f"cannot tokenise {data[:40]!r} exactly: {error}") from error
    return ids


def _utf8_runs(data: bytes):
    """(text, None) for each run of valid UTF-8 and (None, bytes) for each invalid run, in order."""
    start = 0
    while start < len(data):
        try:
            yield data[start:].decode("utf-8"), None
            return
        except UnicodeDecodeError as error:
            if error.start:
                yield data[start : start + error.start].decode("utf-8"), None
            yield None, data[start + error.start : start + error.end]
            start += error.end


def _encode_text(tokenizer, table: ByteTable, text: str) -> list[int]:
    ids = _encode_word(tokenizer, table, text, fallback=False)
    if ids is not None:
        return ids
    # A normaliser changed the text: keep the tokenizer's own ids for each word it left alone.
    return [i for word in _WORDS.findall(text) for i in _encode_word(tokenizer, table, word, fallback=True)]


def _encode_word(tokenizer, table: ByteTable, text: str, fallback: bool) -> list[int] | None:
    target = text.encode("utf-8")
    ids = _encode(tokenizer, text)
    produced = table.join(ids)
    if produced == target:
        return ids
    if produced == b" " + target and table.pieces[ids[0]][:1] == b" ":  # SentencePiece's dummy prefix
        return table.greedy(table.pieces[ids[0]][1:]) + ids[1:]
    return table.greedy(target) if fallback else None


def chunk_last_positions(chunk: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(K,) index of each chunk's last token: where the (non-decreasing, gap-free) chunk id changes."""
    last = torch.ones(len(chunk), dtype=torch.bool, device=chunk.device)  # (N,)
    last[:-1] = chunk[1:] != chunk[:-1]
    positions = last.nonzero().squeeze(1)
    if len(positions) != num_chunks:
        raise ValueError(f"{num_chunks} chunks expected, the chunk ids hold {len(positions)}")
    return positions


def chunk_prefix_logprobs(
    token_logprobs: torch.Tensor, chunk: torch.Tensor, last: torch.Tensor, num_chunks: int
) -> torch.Tensor:
    """(K,) log-probability of each chunk's tokens before its last one (a segment sum): by the chain rule,
    the chunk's distribution is this plus the full log-distribution at its last position."""
    totals = torch.zeros(num_chunks, dtype=token_logprobs.dtype, device=token_logprobs.device)
    return totals.index_add_(0, chunk, token_logprobs) - token_logprobs[last]


def _encode(tokenizer, text: str) -> list[int]:
    """The tokenizer's ids for `text`, special-token strings read as text; through the Rust backend
    where there is one (the Python wrapper costs more than the encoding on short completions)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    previous, backend.encode_special_tokens = backend.encode_special_tokens, True
    try:
        return backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = previous
