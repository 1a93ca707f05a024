"""Completion sources: each sample of a step is sampled by the student (on-policy) or taken from elsewhere.

GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models") trains, with probability λ, on the
student's own samples, else on a fixed dataset of outputs; sequence-level KD (Kim & Rush 2016) trains on the
teacher's samples. Unlike GKD's per-batch coin, λ is drawn per sample, a pure function of (seed, step, position),
so resume is exact. Off-policy completions become `Rollout`s with exact byte spans: the teacher scores them as it
scores the student's own, so every loss and the cross-tokenizer path apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mmopd.align import AlignmentError, byte_table, tokenize_exact
from mmopd.config import Config
from mmopd.cross_teacher import same_vocabulary
from mmopd.losses import cross_entropy
from mmopd.models import ModelBundle, output_head
from mmopd.rollout import HFEngine
from mmopd.sample import Rollout, Sample
from mmopd.sampling import micro_batch_seed
from mmopd.teacher import SelfTeacher
from mmopd.views import SampleError, collate, completion_hidden_states

# Teacher micro-batches sample from seeds the student's micro-batches (index < this) never use.
TEACHER_SEED_OFFSET = 2048


def on_policy_draws(seed: int, step: int, count: int, fraction: float) -> list[bool]:
    """Whether each of a step's `count` samples is sampled by the student: position i is True with probability
    `fraction`, from a generator of its own seeded by (seed, step) (the loop's RNG streams are not touched)."""
    if fraction >= 1.0:
        return [True] * count
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 0x9E3779B9)
    return (torch.rand(count, generator=generator, dtype=torch.float64) < fraction).tolist()


def answer_ids(bundle: ModelBundle, answer: str) -> list[int]:
    """The answer's tokens and the end-of-turn token the model should learn to stop with. Tokenised exactly
    (no SentencePiece dummy-prefix space), so a teacher with another tokenizer learns the bytes a student writes."""
    return tokenize_exact(bundle.tokenizer, answer.encode("utf-8")) + [bundle.tokenizer.eos_token_id]


def completion_rollout(sample: Sample, ids: list[int], logprobs: list[float], tokenizer, finish: str, source: str):
    """A `Rollout` of `ids` (the student's tokenizer) with exact byte spans, marked with where it came from."""
    completion_bytes, spans = byte_table(tokenizer).spans(ids)
    return Rollout(sample, ids, logprobs, spans, completion_bytes, finish, source=source)


def answer_rollout(sample: Sample, student: ModelBundle) -> Rollout:
    """GKD's fixed-dataset output: the reference answer, then the end-of-turn token. Its behaviour logprobs are 0:
    the dataset puts all its mass on the one answer."""
    if sample.answer is None:
        raise SampleError(f"sample {sample.id!r}: rollout.off_policy_source=answers needs an answer, and it has none")
    ids = answer_ids(student, sample.answer)
    return completion_rollout(sample, ids, [0.0] * len(ids), student.tokenizer, "stop", "answers")


@dataclass
class TeacherSampler:
    """The teacher's model sampling from its own view (the student's weights with privileged context for OPSD).
    A completion under another tokenizer is re-tokenised exactly for the student from its bytes; its behaviour
    logprobs are then unknown (NaN): no loss that runs off-policy completions reads them."""

    engine: HFEngine
    student: ModelBundle

    def sample(self, prepared: list, samples: list[Sample]) -> tuple[list[Rollout | None], list[str], int]:
        """Per sample its rollout for the student (None when its bytes have no exact student tokenisation), the
        reasons of those, and the tokens the teacher generated."""
        drawn = self.engine.generate(collate(prepared, self.engine.bundle), samples)
        rollouts, reasons = [], []
        for rollout in drawn:
            try:
                rollouts.append(self.for_student(rollout))
            except AlignmentError as error:
                rollouts.append(None)
                reasons.append(f"sample {rollout.sample.id!r}: the teacher's completion has no student tokens: {error}")
        return rollouts, reasons, sum(len(r.completion_ids) for r in drawn)

    def for_student(self, rollout: Rollout) -> Rollout:
        tokenizer = self.student.tokenizer
        if same_vocabulary(self.engine.bundle.tokenizer, tokenizer):
            return replace(rollout, source="teacher")
        ids = tokenize_exact(tokenizer, rollout.completion_bytes)
        if rollout.finish_reason == "stop":
            ids.append(tokenizer.eos_token_id)
        if not ids:
            raise AlignmentError("the teacher sampled no bytes and did not stop")
        return completion_rollout(
            rollout.sample, ids, [float("nan")] * len(ids), tokenizer, rollout.finish_reason, "teacher"
        )


def build_teacher_sampler(config: Config, teacher: Any, student: ModelBundle) -> TeacherSampler:
    """Sampling with the teacher that scores the step: its own model, or for OPSD the student's live weights."""
    cfg = config.rollout
    if isinstance(teacher, SelfTeacher):
        bundle = teacher.student
    else:
        bundle = getattr(teacher, "teacher", teacher).bundle  # a CrossTokenizerTeacher wraps a ModelTeacher
    return TeacherSampler(HFEngine(bundle, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k), student)


@dataclass
class StepSources:
    """A step's rendered samples (those whose completion could be made) and, aligned with them, the off-policy
    rollout of each (None: the student samples it); plus what generating them cost."""

    rendered: list
    fixed: list[Rollout | None]
    reasons: list[str] = field(default_factory=list)
    teacher_tokens: int = 0

    def metrics(self, rollouts: list[list[Rollout]]) -> dict[str, float]:
        flat = [r for group in rollouts for r in group]
        student = [r for r in flat if r.source == "student"]
        return {
            "on_policy_fraction": len(student) / max(len(flat), 1),
            "student_generated_tokens": sum(len(r.completion_ids) for r in student),
            "teacher_generated_tokens": self.teacher_tokens,
        }


def step_sources(parts, samples: list[Sample], rendered: list, step: int, seed_base: int, config: Config):
    """Draw which samples are on-policy and make the off-policy completions of the others (in micro-batches, each
    teacher micro-batch from its own seed). A sample whose completion cannot be made is dropped with its reason."""
    draws = on_policy_draws(config.train.seed, step, len(samples), config.rollout.on_policy_fraction)
    draws = [draws[position] for position in rendered_positions(samples, rendered)]
    if all(draws):
        return StepSources(rendered, [None] * len(rendered))
    fixed: list[Rollout | None] = [None] * len(rendered)
    sources = StepSources(rendered, fixed)
    off = [i for i, on in enumerate(draws) if not on]
    if config.rollout.off_policy_source == "answers":
        for i in off:
            try:
                fixed[i] = answer_rollout(rendered[i].student.sample, parts.student)
            except SampleError as error:
                if config.data.on_error == "raise":
                    raise
                sources.reasons.append(str(error))
    else:
        sampler = build_teacher_sampler(config, parts.teacher, parts.student)
        micro = config.train.micro_batch_size
        for index, start in enumerate(range(0, len(off), micro)):
            chosen = off[start : start + micro]
            torch.manual_seed(micro_batch_seed(seed_base, TEACHER_SEED_OFFSET + index))
            made, reasons, generated = sampler.sample(
                [rendered[i].teacher for i in chosen], [rendered[i].student.sample for i in chosen]
            )
            for i, rollout in zip(chosen, made):
                fixed[i] = rollout
            sources.reasons += reasons
            sources.teacher_tokens += generated
    failed = {i for i in off if fixed[i] is None}
    sources.rendered = [r for i, r in enumerate(rendered) if i not in failed]
    sources.fixed = [f for i, f in enumerate(fixed) if i not in failed]
    return sources


def rendered_positions(samples: list[Sample], rendered: list) -> list[int]:
    """The batch position of each rendered sample (render_batch keeps the order and drops bad samples)."""
    positions, position = [], 0
    for item in rendered:
        while samples[position] is not item.student.sample:
            position += 1
        positions.append(position)
        position += 1
    return positions


def generate_group(engine, student: ModelBundle, prompt: dict, group: list, fixed: list[Rollout | None]):
    """A micro-batch's rollouts in order: the student samples the on-policy ones (from the collated `prompt` when
    all are, exactly as without off-policy sources), the off-policy ones are `fixed`."""
    on_policy = [r for r, f in zip(group, fixed) if f is None]
    if len(on_policy) == len(group):
        return engine.generate(prompt, [r.student.sample for r in group])
    sampled = iter(
        engine.generate(collate([r.student for r in on_policy], student), [r.student.sample for r in on_policy])
        if on_policy
        else []
    )
    return [f if f is not None else next(sampled) for f in fixed]


def completion_cross_entropy(student: ModelBundle, prompt, rollouts: list[Rollout], supervised: int, chunk_size: int):
    """loss.kind cross_entropy: −Σ log p_S(completion tokens) / the step's supervised tokens, at temperature 1 as
    SFT; no teacher signal."""
    completions = [r.completion_ids for r in rollouts]
    hidden = completion_hidden_states(student, prompt, completions)  # (N, H)
    ids = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=hidden.device)  # (N,)
    weights = torch.full((hidden.shape[0],), 1.0 / max(supervised, 1), device=hidden.device)  # (N,)
    weight, bias = output_head(student)
    return cross_entropy(hidden, weight, bias, ids, weights, chunk_size), {}
