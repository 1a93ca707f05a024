"""Teachers score the student's exact completions token by token (OPD's condition C2).

The default signal is the teacher's final-norm hidden states at completion positions plus its
output head (KDFlow's hidden-state transport): H numbers per token instead of V, and the loss
recomputes teacher logits chunk by chunk. OPSD's teacher is the student's own weights reading
privileged context; with `self_weights: frozen` it keeps one copy of the initial weights (not a
second model) and runs the student's modules on them with `torch.func.functional_call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from mmopd.config import TeacherConfig
from mmopd.cross_teacher import CrossTokenizerTeacher, same_vocabulary
from mmopd.losses import sampled_logprobs
from mmopd.models import ModelBundle, output_head
from mmopd.sample import Rollout, Sample, TeacherSignal
from mmopd.views import (
    Prepared,
    collate,
    completion_hidden_states,
    opsd_messages,
    prepare,
    student_messages,
    text_view_messages,
)


class Teacher(Protocol):
    def prepare(self, sample: Sample) -> Prepared:
        """Render the sample in the teacher's own view; raises on a bad sample."""

    def score(
        self, prepared: list[Prepared], completions: list[list[int]], rollouts: list[Rollout] | None = None
    ) -> TeacherSignal:
        """Score the sampled completions (student token ids) of prepared samples; `rollouts` (their bytes and
        finish reasons) are what a teacher with another tokenizer reads instead of the ids."""


@dataclass
class ModelTeacher:
    """A separate teacher model scoring ids of its own tokenizer (the student's, or via CrossTokenizerTeacher)."""

    bundle: ModelBundle
    view: str  # "text" | "media"
    processors: dict[str, Any]
    signal: str = "hidden"
    temperature: float = 1.0
    chunk_size: int = 1024

    def prepare(self, sample: Sample) -> Prepared:
        messages = text_view_messages(sample) if self.view == "text" else student_messages(sample)
        return prepare(sample, messages, self.bundle, self.processors)

    @torch.no_grad()
    def score(
        self, prepared: list[Prepared], completions: list[list[int]], rollouts: list[Rollout] | None = None
    ) -> TeacherSignal:
        hidden = completion_hidden_states(self.bundle, collate(prepared, self.bundle), completions)
        weight, bias = output_head(self.bundle)
        return _signal(self.signal, hidden, weight, bias, completions, self.temperature, self.chunk_size)


@dataclass
class SelfTeacher:
    """OPSD: the student's weights (live, or frozen at the start) reading privileged context."""

    student: ModelBundle
    processors: dict[str, Any]
    template: str
    frozen: dict[str, torch.Tensor] | None = None
    signal: str = "hidden"
    temperature: float = 1.0
    chunk_size: int = 1024

    def prepare(self, sample: Sample) -> Prepared:
        return prepare(sample, opsd_messages(sample, self.template), self.student, self.processors)

    @torch.no_grad()
    def score(
        self, prepared: list[Prepared], completions: list[list[int]], rollouts: list[Rollout] | None = None
    ) -> TeacherSignal:
        model = self.student.model
        body = None if self.frozen is None else _strip_prefix(self.frozen, "model.")
        was_training = model.training
        model.eval()
        hidden = completion_hidden_states(self.student, collate(prepared, self.student), completions, body)
        model.train(was_training)
        if self.frozen is None:
            weight, bias = output_head(self.student)
        else:
            _, bias = output_head(self.student)  # the suppression mask; a Qwen head has no bias of its own
            weight = self.frozen["lm_head.weight"][: len(self.student.tokenizer)]
        return _signal(self.signal, hidden, weight.detach(), bias, completions, self.temperature, self.chunk_size)


def _strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _signal(kind, hidden, weight, bias, completions, temperature, chunk_size) -> TeacherSignal:
    if kind == "hidden":
        return TeacherSignal("hidden", hidden=hidden, head_weight=weight, head_bias=bias)
    ids = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=hidden.device)  # (N,)
    logprobs = sampled_logprobs(hidden, weight, bias, ids, chunk_size=chunk_size, temperature=temperature)
    return TeacherSignal("sampled", logprobs=logprobs)


def build_teacher(
    config: TeacherConfig,
    student: ModelBundle,
    teacher: ModelBundle | None,
    processors: dict[str, Any],
    run_dir: Path,
    temperature: float,
    chunk_size: int,
) -> Teacher:
    if config.kind == "self":
        frozen = (
            _frozen_weights(student, run_dir / "opsd_teacher.safetensors") if config.self_weights == "frozen" else None
        )
        return SelfTeacher(
            student, processors, config.privileged_template, frozen, config.signal, temperature, chunk_size
        )
    if config.view == "media" and not teacher.is_multimodal:
        raise ValueError("teacher.view=media needs a multimodal teacher; use teacher.view=text for a text model")
    model_teacher = ModelTeacher(teacher, config.view, processors, config.signal, temperature, chunk_size)
    if same_vocabulary(student.tokenizer, teacher.tokenizer):
        return model_teacher
    return CrossTokenizerTeacher(model_teacher, teacher.tokenizer, student.tokenizer)


def _frozen_weights(student: ModelBundle, path: Path) -> dict[str, torch.Tensor]:
    """The student's weights at the start of training, kept on disk so a resumed run uses the same."""
    if not path.exists():
        state = {k: v.detach().clone().contiguous() for k, v in student.model.state_dict().items()}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
    return load_file(str(path), device=str(student.model.device))
