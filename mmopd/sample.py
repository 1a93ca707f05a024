"""The data that flows through one training step: samples, rollouts, teacher signals.

A `Sample` is what a task yields (structured messages plus media references, never rendered
text); a `Rollout` is what the student sampled for it; a `TeacherSignal` is how the teacher
scored those exact tokens. Everything a loss needs is on these three types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class MediaRef:
    """One media item of a sample: a path (relative paths resolve against `root`), raw bytes,
    or an in-memory object (a PIL image, an array)."""

    kind: str  # "image" | "video" | "audio"
    path: str | None = None
    data: Any = None
    root: str | None = None

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        return f"<in-memory {self.kind}>"


@dataclass
class Sample:
    """One task item. `messages` are chat messages whose content is a string or a list of
    parts `{"type": "text", "text": ...}` / `{"type": "image"}` (one part per media item, in
    order). `privileged` is what a text-only or OPSD teacher reads in place of the media."""

    id: str
    messages: list[dict[str, Any]]
    images: list[MediaRef] = field(default_factory=list)
    videos: list[MediaRef] = field(default_factory=list)
    audios: list[MediaRef] = field(default_factory=list)
    privileged: str | None = None
    answer: str | None = None
    context_answer: str | None = None
    """The reference completion for a prompt that carries the OPSD context (teacher.privileged_template), when
    it differs from `answer`: e.g. the one-word form an "Answer in one word." instruction asks for, where
    `answer` is a sentence. The student's warm-up (sft.context_fraction) trains on it."""
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Why this sample cannot be used, when a task kept a malformed record (`data.on_error: skip`) so
    that it is skipped and reported at the step that draws it, like a sample with bad media."""

    def media(self) -> list[MediaRef]:
        return [*self.images, *self.videos, *self.audios]


@dataclass
class Rollout:
    """What the student sampled for one sample. `completion_ids` are the sampled ids exactly
    (contract 1); EOS is among them only if it was generated. `byte_spans[i]` is the
    [start, end) range of token i in `completion_bytes` (contract 3)."""

    sample: Sample
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    byte_spans: list[tuple[int, int]]
    completion_bytes: bytes
    finish_reason: str  # "stop" (EOS sampled) | "length"
    policy_version: int = 0
    source: str = "student"
    """Who wrote the completion: student (sampled on-policy) | answers (the sample's reference answer) | teacher
    (sampled by the teacher, re-tokenised exactly for the student when their tokenizers differ)."""

    @property
    def text(self) -> str:
        return self.completion_bytes.decode("utf-8", errors="replace")


@dataclass
class CrossTokenizerView:
    """How a teacher with another tokenizer saw a micro-batch of rollouts: its own completion ids, their
    byte alignment to the student's sampled ids, the shared vocabulary, and which rollouts aligned. A rollout
    whose two sides do not cover identical bytes is not kept; `dropped` says why (contract 3)."""

    teacher_ids: torch.Tensor  # (N_t,) the teacher's completion ids of the kept rollouts, concatenated
    alignment: Any  # mmopd.align.Alignment over the kept rollouts (chunk ids offset per rollout)
    vocab_map: Any  # mmopd.align.VocabMap: student and teacher ids with the same canonical bytes
    kept: list[bool]
    dropped: list[str] = field(default_factory=list)
    aligned_bytes: int = 0  # completion bytes of the kept rollouts
    total_bytes: int = 0  # completion bytes of all the rollouts


@dataclass
class TeacherSignal:
    """The teacher's view of a batch of rollouts, flattened over supervised tokens (N in total,
    rollouts concatenated in order).

    kind "hidden": `hidden` (N, H) final-norm hidden states at the positions that predict each
    completion token, and the output head `head_weight` (V, H) / `head_bias` (V,), from which
    the loss recomputes teacher logits chunk by chunk.
    kind "sampled": `logprobs` (N,) the teacher's log-probability of each sampled token.
    kind "none": no rollout of the batch could be aligned (only `cross` is set).
    With another tokenizer, N counts the teacher's own tokens of the kept rollouts and `cross` says how
    they align to the student's."""

    kind: str
    hidden: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    cross: CrossTokenizerView | None = None

    def num_bytes(self) -> int:
        """Bytes of per-token signal (the head is shipped once per model, not per token)."""
        tensor = self.hidden if self.kind == "hidden" else self.logprobs
        return 0 if tensor is None else tensor.numel() * tensor.element_size()


class MediaError(ValueError):
    """A media item that cannot be used; names the sample and the file."""

    def __init__(self, sample_id: str, source: str, reason: str):
        super().__init__(f"sample {sample_id!r}: {source}: {reason}")
        self.sample_id = sample_id
        self.source = source
        self.reason = reason
