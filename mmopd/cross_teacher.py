"""A teacher whose tokenizer differs from the student's: it scores the exact bytes the student sampled.

The teacher reads its own rendering of the prompt (contract 2), tokenizes the rollout's completion bytes
exactly (never the student's decoded text), keeps the student's sampled specials and stop as its own tokens
of the same name (else its end token for a stop), and ships its signal with the byte alignment (contract 3). Unlike TRL's GOLD (the student's template, re-tokenised
text) and KDFlow (1:1 positions only), a rollout whose sides cannot cover identical bytes is dropped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from mmopd.align import AlignmentError, align, byte_table, concat_alignments, tokenize_exact, vocab_map
from mmopd.sample import CrossTokenizerView, Rollout, Sample, TeacherSignal
from mmopd.views import Prepared


def same_vocabulary(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


@dataclass
class CrossTokenizerTeacher:
    """Wraps a same-vocabulary teacher (one that scores ids of its own tokenizer) for a student with another."""

    teacher: Any  # a Teacher scoring ids of `teacher_tokenizer` (e.g. mmopd.teacher.ModelTeacher)
    teacher_tokenizer: Any
    student_tokenizer: Any

    def __post_init__(self):
        # With one vocabulary the sampled ids are themselves the teacher's tokenization of the bytes, and the
        # only one whose events are the student's: the path then reduces exactly to the same-tokenizer loss.
        self.identical = same_vocabulary(self.student_tokenizer, self.teacher_tokenizer)

    def prepare(self, sample: Sample) -> Prepared:
        return self.teacher.prepare(sample)

    def teacher_ids(self, rollout: Rollout) -> list[int]:
        """The teacher's tokens of exactly the rollout's bytes, then, if the student stopped, the teacher's
        token of its stop's name (the same event) or else the teacher's own end token.

        A byte-less token the student sampled mid-completion (a special such as `<|im_start|>`) becomes the
        teacher's token of the same name at the same byte offset, the bytes on either side tokenised apart,
        so the teacher scores it (the same-tokenizer path does). One the teacher lacks has no counterpart
        (and is never sampled: `unscorable_ids`)."""
        if self.identical:
            return list(rollout.completion_ids)
        stop = rollout.finish_reason == "stop"
        body = rollout.completion_ids[:-1] if stop else rollout.completion_ids
        ids, start = [], 0
        for offset, student_id in byteless_tokens(body, byte_table(self.student_tokenizer)):
            ids += tokenize_exact(self.teacher_tokenizer, rollout.completion_bytes[start:offset])
            start = offset
            if student_id in self.paired_specials:
                ids.append(self.paired_specials[student_id])
        ids += tokenize_exact(self.teacher_tokenizer, rollout.completion_bytes[start:])
        if stop:  # the same-named stop where the teacher has one (the same event), else its own end token
            ids = [*ids, self.paired_specials.get(rollout.completion_ids[-1], self.teacher_tokenizer.eos_token_id)]
        return ids

    def unscorable_ids(self, stop_ids: list[int]) -> tuple[int, ...]:
        """Byte-less student ids other than stops that the teacher has no token for. The teacher gives them
        probability 0, so a reverse-KL student should never sample them; left samplable, the teacher could
        not score them and nothing would penalise them (a policy-gradient run collapsed onto one)."""
        if self.identical:
            return ()
        lengths, stops = byte_table(self.student_tokenizer).lengths, set(stop_ids)
        byteless = np.flatnonzero(lengths == 0).tolist()
        return tuple(i for i in byteless if i not in stops and i not in self.paired_specials)

    @cached_property
    def paired_specials(self) -> dict[int, int]:
        """Student id → teacher id of the byte-less tokens the shared vocabulary pairs (specials by name)."""
        lengths = byte_table(self.student_tokenizer).lengths
        shared = vocab_map(self.student_tokenizer, self.teacher_tokenizer)
        return {s: t for s, t in zip(shared.student_ids.tolist(), shared.teacher_ids.tolist()) if lengths[s] == 0}

    @torch.no_grad()
    def score(
        self, prepared: list[Prepared], completions: list[list[int]], rollouts: list[Rollout] | None = None
    ) -> TeacherSignal:
        if rollouts is None:
            raise ValueError("a teacher with another tokenizer scores rollouts (their bytes), not student ids")
        student_table, teacher_table = byte_table(self.student_tokenizer), byte_table(self.teacher_tokenizer)
        kept, dropped, alignments, teacher_ids = [], [], [], []
        for rollout in rollouts:
            try:
                ids = self.teacher_ids(rollout)
                alignments.append(align(rollout.completion_ids, ids, student_table, teacher_table))
            except AlignmentError as error:
                kept.append(False)
                dropped.append(f"sample {rollout.sample.id!r}: student and teacher tokens do not align: {error}")
                continue
            kept.append(True)
            teacher_ids.append(ids)
        view = CrossTokenizerView(
            teacher_ids=torch.tensor([t for ids in teacher_ids for t in ids], dtype=torch.long),  # (N_t,)
            alignment=concat_alignments(alignments) if alignments else None,
            vocab_map=vocab_map(self.student_tokenizer, self.teacher_tokenizer),
            kept=kept,
            dropped=dropped,
            aligned_bytes=sum(len(r.completion_bytes) for r, keep in zip(rollouts, kept) if keep),
            total_bytes=sum(len(r.completion_bytes) for r in rollouts),
        )
        if not teacher_ids:
            return TeacherSignal(kind="none", cross=view)
        signal = self.teacher.score([p for p, keep in zip(prepared, kept) if keep], teacher_ids)
        return replace(signal, cross=view)


def byteless_tokens(ids: list[int], table) -> list[tuple[int, int]]:
    """(byte offset, id) of each token of `ids` that has no bytes, in order."""
    lengths = table.lengths[np.asarray(ids, dtype=np.int64)]  # (N,)
    ends = np.cumsum(lengths)  # (N,)
    return [(int(ends[i]), ids[i]) for i in np.flatnonzero(lengths == 0)]
