"""The student's loss for a micro-batch scored by a teacher with another tokenizer, and the step's alignment
metrics. Maps student and teacher rows through the byte alignment and picks the tier from the config
(`loss.kind`, `loss.cross_tokenizer`); the same-tokenizer path in mmopd.trainer is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmopd.config import Config
from mmopd.cross_losses import (
    EXACT_TIERS,
    chunk_likelihood_divergence,
    chunk_policy_gradient_loss,
    chunk_weights,
    chunked_pair_loss,
    paired_rows,
    sampled_chunk_kl,
    shared_mass,
    shared_vocab,
)
from mmopd.losses import sampled_logprobs
from mmopd.models import ModelBundle, output_head
from mmopd.sample import Rollout, TeacherSignal
from mmopd.views import completion_hidden_states

MASS_KEYS = ("student_shared_mass", "teacher_shared_mass")


def supervised_tokens(rollouts: list[Rollout], signal: TeacherSignal) -> int:
    """Student tokens that get a loss: all of them, less those of rollouts the teacher could not align."""
    kept = signal.cross.kept if signal.cross is not None else [True] * len(rollouts)
    return sum(len(r.completion_ids) for r, keep in zip(rollouts, kept) if keep)


def dropped_samples(signal: TeacherSignal) -> list[str]:
    return [] if signal.cross is None else signal.cross.dropped


@dataclass
class AlignedBatch:
    """A micro-batch's kept rollouts on both sides: student rows, teacher rows, and the chunks joining them."""

    hidden: Tensor  # (N_s, H) student hidden states predicting each kept student token
    weights: Tensor  # (N_s,) 1 / the step's supervised-token count
    student_logprobs: Tensor  # (N_s,) differentiable
    teacher_logprobs: Tensor  # (N_t,) detached
    student_chunk: Tensor  # (N_s,)
    teacher_chunk: Tensor  # (N_t,)
    one_to_one: Tensor  # (K,) bool

    @property
    def chunks(self) -> tuple[Tensor, Tensor, int]:
        return self.student_chunk, self.teacher_chunk, self.one_to_one.numel()


def cross_tokenizer_loss(
    student: ModelBundle,
    prompt: dict[str, Tensor],
    rollouts: list[Rollout],
    signal: TeacherSignal,
    supervised: int,
    config: Config,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The micro-batch's share of the loss over the aligned rollouts, normalised by the step's supervised tokens.

    `kl` is the sampled-path chunk reverse KL for every tier (exact, and comparable across tiers).
    """
    cfg, temperature = config.loss, config.rollout.temperature
    hidden = completion_hidden_states(student, prompt, [r.completion_ids for r in rollouts])  # (N, H)
    if signal.cross.alignment is None:  # nothing aligned: a zero loss that is still in the graph
        return hidden.sum() * 0.0, {}
    batch = aligned_batch(student, hidden, rollouts, signal, supervised, cfg.chunk_size, temperature)
    kl = sampled_chunk_kl(batch.student_logprobs, batch.teacher_logprobs, batch.weights, *batch.chunks)
    weight, bias = output_head(student)
    cross, device = signal.cross, hidden.device
    student_shared, teacher_shared = cross.vocab_map.student_ids.to(device), cross.vocab_map.teacher_ids.to(device)
    if cfg.kind == "policy_gradient":
        behaviour = torch.tensor(
            [lp for r, keep in zip(rollouts, cross.kept) if keep for lp in r.behaviour_logprobs], device=device
        )  # (N_s,)
        loss, pg = chunk_policy_gradient_loss(
            batch.student_logprobs, batch.teacher_logprobs, behaviour, batch.weights, *batch.chunks, cfg.clip_ratio
        )
        rows = paired_rows(batch.student_chunk, batch.teacher_chunk, batch.one_to_one)
        masses = shared_masses(batch, rows, (weight, bias), signal, (student_shared, teacher_shared), cfg, temperature)
        return loss, {"kl": kl, "clip_fraction": pg["clip_fraction"] * batch.weights.sum(), **masses}
    if cfg.cross_tokenizer == "alm":
        loss, _ = chunk_likelihood_divergence(
            batch.student_logprobs, batch.teacher_logprobs, batch.weights, *batch.chunks, cfg.divergence, cfg.beta
        )
        return loss, {"kl": kl}
    first_bytes = None
    if cfg.cross_tokenizer == "shared_bytes":
        first_bytes = (cross.vocab_map.student_first_byte, cross.vocab_map.teacher_first_byte)
    vocab = shared_vocab(student_shared, teacher_shared, weight.shape[0], signal.head_weight.shape[0], first_bytes)
    exact = cfg.cross_tokenizer in EXACT_TIERS
    selected = batch.one_to_one if exact else torch.ones_like(batch.one_to_one)
    student_rows, teacher_rows = paired_rows(batch.student_chunk, batch.teacher_chunk, selected)
    row_weights = chunk_weights(batch.weights, batch.student_chunk, batch.one_to_one.numel())[
        batch.student_chunk[student_rows]
    ]  # (n,)
    loss, stats = chunked_pair_loss(
        batch.hidden[student_rows],
        weight,
        bias,
        signal.hidden[teacher_rows],
        signal.head_weight,
        signal.head_bias,
        row_weights,
        vocab,
        cfg.cross_tokenizer,
        cfg.divergence,
        cfg.beta,
        cfg.chunk_size,
        temperature,
    )
    if exact and not bool(batch.one_to_one.all()):
        # Chunks that are not 1:1 have no common next-token event: match their exact likelihoods instead.
        chunk_loss, stats["chunk_divergence"] = chunk_likelihood_divergence(
            batch.student_logprobs,
            batch.teacher_logprobs,
            batch.weights,
            *batch.chunks,
            cfg.divergence,
            cfg.beta,
            chunks=~batch.one_to_one,
        )
        loss = loss + chunk_loss
    return loss, {"kl": kl, **stats}


def aligned_batch(student, hidden, rollouts, signal, supervised, chunk_size, temperature) -> AlignedBatch:
    """Keep the aligned rollouts' student rows and score both sides' sampled tokens (chain-rule inputs)."""
    cross, device = signal.cross, hidden.device
    completions = [r.completion_ids for r in rollouts]
    rows = torch.tensor(_kept_rows(completions, cross.kept), dtype=torch.long, device=device)  # (N_s,)
    hidden = hidden[rows]  # (N_s, H)
    kept = [t for c, keep in zip(completions, cross.kept) if keep for t in c]
    ids = torch.tensor(kept, dtype=torch.long, device=device)  # (N_s,)
    weight, bias = output_head(student)
    student_logprobs = sampled_logprobs(hidden, weight, bias, ids, chunk_size, temperature)  # (N_s,)
    if signal.kind == "sampled":
        teacher_logprobs = signal.logprobs
    else:
        teacher_ids = cross.teacher_ids.to(device)  # (N_t,)
        teacher_logprobs = sampled_logprobs(
            signal.hidden, signal.head_weight, signal.head_bias, teacher_ids, chunk_size, temperature
        )
    alignment = cross.alignment
    return AlignedBatch(
        hidden=hidden,
        weights=torch.full((hidden.shape[0],), 1.0 / max(supervised, 1), device=device),  # (N_s,)
        student_logprobs=student_logprobs,
        teacher_logprobs=teacher_logprobs.detach(),
        student_chunk=alignment.student_chunk.to(device),
        teacher_chunk=alignment.teacher_chunk.to(device),
        one_to_one=alignment.one_to_one.to(device),
    )


def shared_masses(batch, rows, head, signal, shared_ids, cfg, temperature) -> dict[str, Tensor]:
    """Probability on shared ids summed over 1:1 rows, both sides (the teacher's needs its hidden states)."""
    (student_rows, teacher_rows), (student_shared, teacher_shared) = rows, shared_ids
    masses = {
        "student_shared_mass": shared_mass(
            batch.hidden[student_rows], *head, student_shared, cfg.chunk_size, temperature
        ),
        "rows": torch.tensor(float(student_rows.numel())),
    }
    if signal.kind == "hidden":
        masses["teacher_shared_mass"] = shared_mass(
            signal.hidden[teacher_rows],
            signal.head_weight,
            signal.head_bias,
            teacher_shared,
            cfg.chunk_size,
            temperature,
        )
    return masses


def _kept_rows(completions: list[list[int]], kept: list[bool]) -> list[int]:
    rows, start = [], 0
    for completion, keep in zip(completions, kept):
        if keep:
            rows.extend(range(start, start + len(completion)))
        start += len(completion)
    return rows


def alignment_metrics(signals: list[TeacherSignal], totals: dict[str, float]) -> dict[str, float]:
    """The step's aligned byte coverage (bytes of aligned rollouts / all completion bytes), 1:1 chunk ratio and
    mean shared-vocabulary mass at 1:1 chunks; empty with one tokenizer. Pops the summed masses from `totals`."""
    views = [s.cross for s in signals if s.cross is not None]
    if not views:
        return {}
    rows = totals.pop("rows", 0.0)
    metrics = {key: totals.pop(key) / max(rows, 1.0) for key in MASS_KEYS if key in totals}
    alignments = [v.alignment for v in views if v.alignment is not None]
    chunks = sum(a.num_chunks for a in alignments)
    metrics["one_to_one_ratio"] = sum(int(a.one_to_one.sum()) for a in alignments) / max(chunks, 1)
    metrics["byte_coverage"] = sum(v.aligned_bytes for v in views) / max(sum(v.total_bytes for v in views), 1)
    return metrics
