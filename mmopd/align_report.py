"""`mmopd align`: how a student's tokens and a teacher's tokens of the same text line up, as JSON or
a readable table; a way to inspect any tokenizer pair (named or a local directory) before training.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmopd.align import AlignmentError, align, byte_table, tokenize_exact, vocab_map
from mmopd.tokenizers import load_tokenizer


def alignment_report(student, teacher, data: bytes, student_ids: list[int] | None = None) -> dict:
    """The alignment of `student_ids` (default: the student's tokenisation of `data`) with the teacher's
    exact tokenisation of the same bytes. Student ids that end in special tokens (end of turn) are
    matched by the teacher's end token. Chunk entries hold positions in the two token lists."""
    student_table, teacher_table = byte_table(student), byte_table(teacher)
    if student_ids is None:
        student_ids = tokenize_exact(student, data)
    else:
        bad = [i for i in student_ids if not 0 <= i < len(student_table.pieces)]
        if bad:
            raise ValueError(f"student ids out of range 0..{len(student_table.pieces) - 1}: {bad[:5]}")
        if student_table.join(student_ids) != data:
            raise AlignmentError(f"the student ids are not the text's bytes: {student_table.join(student_ids)[:60]!r}")
    teacher_ids = tokenize_exact(teacher, data)
    if student_ids and student_ids[-1] in student_table.special:
        teacher_ids.append(teacher.eos_token_id)
    alignment = align(student_ids, teacher_ids, student_table, teacher_table)
    chunks = [{"student": [], "teacher": [], "bytes": list(span)} for span in alignment.chunk_bytes]
    for position, chunk in enumerate(alignment.student_chunk.tolist()):
        chunks[chunk]["student"].append(position)
    for position, chunk in enumerate(alignment.teacher_chunk.tolist()):
        chunks[chunk]["teacher"].append(position)
    return {
        "coverage": alignment.coverage,
        "one_to_one": float(alignment.one_to_one.float().mean()) if alignment.num_chunks else 1.0,
        "shared_vocab": len(vocab_map(student, teacher)),
        "student_tokens": len(student_ids),
        "teacher_tokens": len(teacher_ids),
        "student_ids": student_ids,
        "teacher_ids": teacher_ids,
        "chunks": chunks,
    }


def format_report(report: dict, student, teacher) -> str:
    """One line per chunk: its bytes, its shape (1:1, 2:1, ...) and both sides' token pieces."""
    student_table, teacher_table = byte_table(student), byte_table(teacher)
    lines = [f"{'bytes':>11}  {'n:m':>5}  {'student':<36}  teacher"]
    for chunk in report["chunks"]:
        student_ids = [report["student_ids"][i] for i in chunk["student"]]
        teacher_ids = [report["teacher_ids"][i] for i in chunk["teacher"]]
        start, end = chunk["bytes"]
        shape = f"{len(student_ids)}:{len(teacher_ids)}"
        lines.append(
            f"{start:>5}-{end:<5}  {shape:>5}  {_pieces(student, student_table, student_ids):<36}  "
            f"{_pieces(teacher, teacher_table, teacher_ids)}"
        )
    lines.append(
        f"coverage {report['coverage']:.0%}, {report['one_to_one']:.0%} of {len(report['chunks'])} chunks 1:1, "
        f"{report['student_tokens']} student / {report['teacher_tokens']} teacher tokens, "
        f"{report['shared_vocab']:,} shared vocabulary entries"
    )
    return "\n".join(lines)


def _pieces(tokenizer, table, ids: list[int]) -> str:
    """Special tokens by name, whole characters as text, parts of a character as bytes."""
    names = tokenizer.convert_ids_to_tokens(ids)
    return " ".join(name if i in table.special else _piece(table.pieces[i]) for i, name in zip(ids, names))


def _piece(piece: bytes) -> str:
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


def run(args: argparse.Namespace) -> int:
    """The `mmopd align` command: 0 on success; 2 with a message on stderr for bad input."""
    try:
        data = _completion_bytes(args)
        student_ids = None
        if args.student_ids is not None:
            try:
                student_ids = [int(part) for part in args.student_ids.split(",") if part.strip()]
            except ValueError as error:
                raise ValueError(f"--student-ids must be comma-separated integers: {error}") from error
        student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
        report = alignment_report(student, teacher, data, student_ids)
    except (AlignmentError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report, student, teacher))
    return 0


def _completion_bytes(args: argparse.Namespace) -> bytes:
    if args.text is not None:
        return args.text.encode("utf-8")
    data = args.file.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{args.file} is not valid UTF-8 (byte {error.start}: {error.reason})") from error
    return data
