"""`mmopd bench align`: throughput of cross-tokenizer alignment and loss-input preparation, mmopd
against TRL's GOLD (`trl.experimental.gold`), on the same completions and tokenizer pairs in one run.

Both sides start from the student's sampled ids and per-token log-distributions of both models and
end with what a chunk-level loss consumes: each chunk's chain-rule log-distribution for student and
teacher (TRL: `_merge_probabilities_with_alignment_groups`, "bayesian"). Timings are wall-clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace

import torch

from mmopd.align import (
    align,
    byte_table,
    chunk_last_positions,
    chunk_prefix_logprobs,
    concat_alignments,
    tokenize_exact,
)
from mmopd.tokenizers import load_tokenizer

# Byte-level pairs only: TRL's extended ULD refuses other tokenizers.
PAIRS = [("qwen2", "cl100k"), ("tekken", "qwen2"), ("cl100k", "tekken")]
TEXTS = [
    "The image shows a red circle in the upper left corner. Its radius is about 12 pixels, i.e. 3.5% of "
    "the width (340 px). Answer: red circle.",
    "Let me compute step by step: 17 × 23 = 391, then 391 + 1,024 = 1,415. The final answer is 1415.",
    "def merge(a: list[int], b: list[int]) -> list[int]:\n    out = []\n    while a and b:\n"
    "        out.append((a if a[0] < b[0] else b).pop(0))\n    return out + a + b\n\n\n",
    "日本語の説明：画像には赤い円が描かれています。中文：图中有一个红色的圆。한국어: 빨간 원입니다.",
    "Emoji check 🗼🎉👨‍👩‍👧 and flags 🇫🇷🇯🇵 — café, naïve, Ångström, Straße, Ελληνικά, русский.",
    "   Indented   text\twith\ttabs,\n\n\n\nblank lines    and trailing spaces    \r\nthe end.",
    '{"answer": "blue", "confidence": 0.93, "boxes": [[10, 20, 30, 40], [5, 5, 60, 60]]}',
    "Photosynthesis converts light energy into chemical energy: 6 CO2 + 6 H2O → C6H12O6 + 6 O2.",
]


@dataclass
class Case:
    """One completion: both sides' ids (ending in EOS) and per-token probabilities (TRL's input)."""

    student_ids: list[int]
    teacher_ids: list[int]
    student_probs: torch.Tensor  # (Ns, V_student)
    teacher_probs: torch.Tensor  # (Nt, V_teacher)


@dataclass
class Batch:
    """Completions of one micro-batch, with their log-probabilities laid end to end (mmopd's input).
    With `width` > 0 the distributions have `width` columns and ids index them modulo `width`."""

    cases: list[Case]
    student_logprobs: torch.Tensor  # (Ns_total, V_student)
    teacher_logprobs: torch.Tensor  # (Nt_total, V_teacher)
    width: int

    def columns(self, ids: list[int]) -> list[int]:
        return [i % self.width for i in ids] if self.width else ids

    @property
    def tokens(self) -> int:
        return sum(len(case.student_ids) for case in self.cases)


def make_batches(
    student, teacher, texts: list[str], batch_size: int, width: int, device: str = "cpu", seed: int = 0
) -> list[Batch]:
    """Random distributions over `width` columns (0: each tokenizer's full vocabulary) on `device`."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for first in range(0, len(texts), batch_size):
        chunk = texts[first : first + batch_size]
        ids = [
            [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in chunk]
            for tok in (student, teacher)
        ]
        logprobs = [
            torch.randn(sum(map(len, rows)), width or len(tok), generator=generator).log_softmax(-1).to(device)
            for rows, tok in zip(ids, (student, teacher))
        ]
        probs = [x.exp().split([len(row) for row in rows]) for x, rows in zip(logprobs, ids)]
        batches.append(Batch([Case(*case) for case in zip(*ids, *probs)], *logprobs, width))
    return batches


def mmopd_prepare(student, teacher, batch: Batch, merge: bool = True) -> list[torch.Tensor]:
    """Exact bytes of the sampled ids, the teacher's exact tokenisation, the alignment of the batch, per
    side each chunk's last position and the log-probability of its earlier tokens (one segment sum),
    and with `merge` each chunk's (K, V) log-distribution: the same output as TRL's merge. Without
    `merge` it stops at what a chunked loss reads, which builds chunk rows from hidden states itself."""
    student_table, teacher_table = byte_table(student), byte_table(teacher)
    alignments, student_ids, teacher_ids = [], [], []
    for case in batch.cases:
        ids = tokenize_exact(teacher, student_table.join(case.student_ids)) + [teacher.eos_token_id]
        alignments.append(align(case.student_ids, ids, student_table, teacher_table))
        student_ids += case.student_ids
        teacher_ids += ids
    aligned = concat_alignments(alignments)
    outputs = []
    for chunk, ids, logprobs in (
        (aligned.student_chunk, student_ids, batch.student_logprobs),
        (aligned.teacher_chunk, teacher_ids, batch.teacher_logprobs),
    ):
        chunk, columns = chunk.to(logprobs.device), torch.tensor(batch.columns(ids), device=logprobs.device)
        sampled = logprobs.gather(1, columns[:, None]).squeeze(1)  # (N,)
        last = chunk_last_positions(chunk, aligned.num_chunks)  # (K,)
        prefix = chunk_prefix_logprobs(sampled, chunk, last, aligned.num_chunks)  # (K,)
        outputs += [last, prefix]
        if merge:
            outputs.append(logprobs.index_select(0, last).add_(prefix[:, None]))  # (K, V)
    return outputs


def trl_prepare(student, teacher, batch: Batch) -> list[torch.Tensor]:
    """TRL GOLD's path for an on-policy batch: student byte offsets from the sampled ids, completion text
    decoded and re-tokenised by the teacher with byte offsets, `_align_by_byte_offsets` per sample and
    `_merge_probabilities_with_alignment_groups` on both sides (EOS skipped, as by default)."""
    from trl.experimental.gold.gold_trainer import GOLDTrainer, ULDLoss, build_teacher_inputs_from_texts

    merger = SimpleNamespace(token_merge_strategy="bayesian")
    trainer = SimpleNamespace(
        use_uld_loss=True,
        teacher_tokenizer=teacher,
        uld_loss_fn=SimpleNamespace(use_extended_uld=True),
        _tokenizer=student,
    )
    cases = batch.cases
    length = max(len(c.student_ids) for c in cases)
    input_ids = torch.full((len(cases), length), student.pad_token_id)
    labels = torch.full((len(cases), length), -100)
    for row, case in enumerate(cases):
        input_ids[row, : len(case.student_ids)] = torch.tensor(case.student_ids)
        labels[row, : len(case.student_ids)] = torch.tensor(case.student_ids)
    inputs = {"input_ids": input_ids, "labels": labels}
    GOLDTrainer._maybe_add_completion_byte_offsets(trainer, inputs)
    texts = student.batch_decode([c.student_ids for c in cases], skip_special_tokens=True)
    teacher_ids, teacher_labels, _, teacher_offsets = build_teacher_inputs_from_texts(teacher, [""] * len(cases), texts)
    merged = []
    for row, case in enumerate(cases):
        size_s, size_t = len(case.student_ids) - 1, int((teacher_labels[row] != -100).sum()) - 1
        student_groups, teacher_groups = ULDLoss._align_by_byte_offsets(
            inputs["byte_offsets"][row, :size_s].tolist(), teacher_offsets[row, :size_t].tolist()
        )
        paired = [(s, t) for s, t in zip(student_groups, teacher_groups) if s and t]
        for probs, groups, ids in (
            (case.student_probs[:size_s], [s for s, _ in paired], batch.columns(case.student_ids[:size_s])),
            (case.teacher_probs[:size_t], [t for _, t in paired], batch.columns(teacher_ids[row, :size_t].tolist())),
        ):
            merged.append(ULDLoss._merge_probabilities_with_alignment_groups(merger, probs, groups, ids))
    return merged


def _rate(prepare, student, teacher, batches: list[Batch], min_seconds: float) -> float:
    """Student tokens per second over whole passes through `batches` (at least `min_seconds`)."""
    prepare(student, teacher, batches[0])  # warm caches (byte tables, imports) outside the timing
    cuda = batches[0].student_logprobs.is_cuda
    tokens, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            prepare(student, teacher, batch)
            if cuda:
                torch.cuda.synchronize()
            tokens += batch.tokens
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return tokens / elapsed


def bench_align(
    pairs: list[tuple[str, str]] = PAIRS,
    texts: list[str] = TEXTS,
    batch_size: int = 8,
    width: int = 0,
    merge: bool = True,
    device: str = "cpu",
    min_seconds: float = 2.0,
) -> dict:
    """tokens/s of both frameworks over every pair (the same texts and batches, interleaved per pair),
    the ratio, and the figures of each pair."""
    seconds, tokens, rows = {"mmopd": 0.0, "trl": 0.0}, 0, []
    frameworks = {"mmopd": partial(mmopd_prepare, merge=merge), "trl": trl_prepare}
    for student_name, teacher_name in pairs:
        student, teacher = load_tokenizer(student_name), load_tokenizer(teacher_name)
        batches = make_batches(student, teacher, texts, batch_size, width, device)
        pair_tokens = sum(batch.tokens for batch in batches)
        rates = {name: _rate(fn, student, teacher, batches, min_seconds) for name, fn in frameworks.items()}
        tokens += pair_tokens
        for name, rate in rates.items():
            seconds[name] += pair_tokens / rate
        rows.append(
            {"student": student_name, "teacher": teacher_name, **{f"{k}_tokens_per_s": v for k, v in rates.items()}}
        )
    mmopd_rate, trl_rate = tokens / seconds["mmopd"], tokens / seconds["trl"]
    return {
        "mmopd_tokens_per_s": mmopd_rate,
        "trl_tokens_per_s": trl_rate,
        "speedup": mmopd_rate / trl_rate,
        "pairs": rows,
    }


def format_bench(result: dict, width: int, merge: bool, device: str) -> str:
    """A readable table of `bench_align`'s result."""
    lines = [
        f"distributions: {width or 'full vocabularies'} columns on {device}; mmopd output: "
        + ("(chunks, V) log-distributions, as TRL's merge" if merge else "chunk positions and prefix log-probs"),
        f"{'student':<10} {'teacher':<10} {'mmopd tok/s':>12} {'TRL tok/s':>12} {'speedup':>8}",
    ]
    for row in result["pairs"]:
        mmopd, trl = row["mmopd_tokens_per_s"], row["trl_tokens_per_s"]
        lines.append(f"{row['student']:<10} {row['teacher']:<10} {mmopd:>12,.0f} {trl:>12,.0f} {mmopd / trl:>7.1f}x")
    lines.append(
        f"{'all':<21} {result['mmopd_tokens_per_s']:>12,.0f} {result['trl_tokens_per_s']:>12,.0f} {result['speedup']:>7.1f}x"
    )
    return "\n".join(lines)


def run(args) -> int:
    """The `mmopd bench align` command."""
    merge = not args.skip_merge
    torch.set_num_threads(args.threads)
    result = bench_align(
        batch_size=args.batch_size, width=args.width, merge=merge, device=args.device, min_seconds=args.seconds
    )
    if args.json:
        print(json.dumps({key: result[key] for key in ("mmopd_tokens_per_s", "trl_tokens_per_s", "speedup")}))
    else:
        print(format_bench(result, args.width, merge, args.device))
    return 0
