"""Cross-tokenizer distillation losses over byte-aligned chunks, in tiers from exact to approximate.

Chunks come from `mmopd.align`: spans of the completion's bytes where student and teacher token
boundaries meet. Exact: chunk log-likelihoods by the chain rule (sampled path), and full distributions at
1:1 chunks over the shared vocabulary plus one "other" bucket (or one per first byte). Approximate
baselines: ULD (Boizard et al. 2024) and TRL GOLD's hybrid. Pure functions, fp32, chunked like
mmopd.losses, weighted per student token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mmopd.losses import _floor, _logprobs, checkpointed_chunks, policy_gradient_loss
from mmopd.registry import LOSSES

PairLoss = Callable[[Tensor, Tensor, "SharedVocab", str, float], Tensor]
EXACT_TIERS = ("shared", "shared_bytes")  # full distributions at 1:1 chunks, chunk likelihoods elsewhere


@dataclass(frozen=True)
class SharedVocab:
    """Ids with the same canonical bytes on both sides (pairs in order), and the ids outside them."""

    student_ids: Tensor  # (S,)
    teacher_ids: Tensor  # (S,)
    student_other: Tensor  # (V_s,) bool: student ids with no teacher counterpart
    teacher_other: Tensor  # (V_t,) bool
    student_bucket: Tensor | None = None  # (V_s,) long: bucket of each id outside the map (None: one bucket)
    teacher_bucket: Tensor | None = None  # (V_t,) long
    num_buckets: int = 1

    @property
    def has_other(self) -> bool:
        """Whether either side has mass outside the shared ids (False for identical tokenizers)."""
        return bool(self.student_other.any() or self.teacher_other.any())


def shared_vocab(
    student_ids: Tensor,
    teacher_ids: Tensor,
    student_size: int,
    teacher_size: int,
    first_bytes: tuple[Tensor, Tensor] | None = None,
) -> SharedVocab:
    """A `SharedVocab` from a vocabulary map's paired ids and each side's vocabulary size. With `first_bytes`
    (each side's (V,) first byte of every id, 256 for byte-less ones) the ids outside the map are bucketed by
    first byte, each bucket labelled the same on both sides; else they form one bucket."""
    student_other = torch.ones(student_size, dtype=torch.bool, device=student_ids.device)  # (V_s,)
    teacher_other = torch.ones(teacher_size, dtype=torch.bool, device=teacher_ids.device)  # (V_t,)
    student_other[student_ids] = False
    teacher_other[teacher_ids] = False
    if first_bytes is None:
        return SharedVocab(student_ids, teacher_ids, student_other, teacher_other)
    # Rows of an output head beyond the tokenizer (padding) have no bytes: the byte-less bucket.
    student_first, teacher_first = (
        torch.full((size,), 256, dtype=torch.long).index_copy(0, torch.arange(min(size, len(first))), first[:size])
        for first, size in zip(first_bytes, (student_size, teacher_size))
    )
    student_first, teacher_first = student_first.to(student_ids.device), teacher_first.to(student_ids.device)
    labels = torch.unique(torch.cat([student_first[student_other], teacher_first[teacher_other]]))  # (G,) sorted
    student_bucket = torch.searchsorted(labels, student_first).masked_fill(~student_other, -1)  # (V_s,)
    teacher_bucket = torch.searchsorted(labels, teacher_first).masked_fill(~teacher_other, -1)  # (V_t,)
    return SharedVocab(
        student_ids, teacher_ids, student_other, teacher_other, student_bucket, teacher_bucket, labels.numel()
    )


def chunk_sums(token_values: Tensor, token_chunk: Tensor, num_chunks: int) -> Tensor:
    """Σ of per-token values within each chunk (K,): the chain rule on token log-probabilities."""
    return token_values.new_zeros(num_chunks).index_add(0, token_chunk, token_values)


def chunk_weights(weights: Tensor, student_chunk: Tensor, num_chunks: int) -> Tensor:
    """A chunk's weight is the sum of its student tokens' weights, so every supervised token counts once."""
    return chunk_sums(weights.float(), student_chunk, num_chunks)


def log1mexp(logp: Tensor) -> Tensor:
    """log(1 − p) from log p ≤ 0; at p = 1 it is a finite floor with zero gradient (not −inf and NaN)."""
    return torch.log((-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny))


def chunk_policy_gradient_loss(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    weights: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    num_chunks: int,
    clip_ratio: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """EXACT (sampled path): sampled reverse KL per chunk as a PPO-clipped policy gradient.

    A chunk's advantage is log p_T(chunk) − log p_S(chunk), each a sum of its tokens' log-probabilities
    (chain rule), and every student token of the chunk gets it; the step is then `policy_gradient_loss`
    unchanged (clipped ratio against the behaviour logprobs). With identical tokenizers every chunk is one
    token on each side and this is exactly the same-tokenizer loss. Inputs are (N_s,) / (N_t,) token values.
    """
    dtype = torch.promote_types(student_logprobs.dtype, torch.float32)
    student_logprobs = student_logprobs.to(dtype)
    student_sums = chunk_sums(student_logprobs.detach(), student_chunk, num_chunks)  # (K,)
    teacher_sums = chunk_sums(teacher_logprobs.detach().to(dtype), teacher_chunk, num_chunks)  # (K,)
    advantage = (teacher_sums - student_sums)[student_chunk]  # (N_s,)
    # policy_gradient_loss takes the advantage as teacher − student logprob of each token.
    loss, stats = policy_gradient_loss(
        student_logprobs, student_logprobs.detach() + advantage, behaviour_logprobs, weights, clip_ratio
    )
    stats["reverse_kl"] = sampled_chunk_kl(
        student_logprobs, teacher_logprobs, weights, student_chunk, teacher_chunk, num_chunks
    )
    return loss, stats


@torch.no_grad()
def sampled_chunk_kl(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    weights: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    num_chunks: int,
) -> Tensor:
    """EXACT sampled-path estimate of the reverse KL: Σ_chunks (log p_S − log p_T)(chunk), each chunk once,
    weighted by the mean weight of its student tokens (with one tokenizer: Σ_i w_i (log p_S − log p_T)_i).
    The same quantity for every tier, so runs with different tiers compare on it."""
    dtype = torch.promote_types(student_logprobs.dtype, torch.float32)
    student_sums = chunk_sums(student_logprobs.detach().to(dtype), student_chunk, num_chunks)  # (K,)
    teacher_sums = chunk_sums(teacher_logprobs.detach().to(dtype), teacher_chunk, num_chunks)  # (K,)
    tokens = chunk_sums(torch.ones_like(student_logprobs, dtype=dtype), student_chunk, num_chunks)  # (K,)
    mean_weight = chunk_sums(weights.to(dtype), student_chunk, num_chunks) / tokens.clamp_min(1.0)  # (K,)
    return (mean_weight * (student_sums - teacher_sums)).sum()


def chunk_likelihood_divergence(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    weights: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    num_chunks: int,
    divergence: str = "reverse_kl",
    beta: float = 0.5,
    chunks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """EXACT chunk likelihoods, APPROXIMATE divergence: ALM-style (Minixhofer et al. 2025) binarised divergence.

    p = p_S(chunk) and q = p_T(chunk) are exact (chain rule over each side's tokens); the loss compares the
    two-outcome distributions (p, 1 − p) and (q, 1 − q) with any registered divergence, a proxy of the
    divergence between the distributions over all byte strings. Unlike ALM there is no chunk-likelihood
    temperature and no selection or debiasing of chunks: on-policy chunks end at shared byte boundaries of
    the sampled text. `chunks` (K,) bool limits the loss to some chunks. Returns (loss, detached loss).
    """
    dtype = torch.promote_types(student_logprobs.dtype, torch.float32)
    student_sums = chunk_sums(student_logprobs.to(dtype), student_chunk, num_chunks)  # (K,)
    teacher_sums = chunk_sums(teacher_logprobs.detach().to(dtype), teacher_chunk, num_chunks)  # (K,)
    student_two = torch.stack([student_sums, log1mexp(student_sums)], dim=-1)  # (K, 2)
    teacher_two = torch.stack([teacher_sums, log1mexp(teacher_sums)], dim=-1)  # (K, 2)
    per_chunk = LOSSES.get(divergence)(student_two, teacher_two, beta)  # (K,)
    weight = chunk_weights(weights, student_chunk, num_chunks).to(dtype)  # (K,)
    if chunks is not None:
        weight = weight * chunks.to(dtype)
    loss = (weight * per_chunk).sum()
    return loss, loss.detach()


def with_other_bucket(
    logprobs: Tensor,
    shared_ids: Tensor,
    other: Tensor,
    add_bucket: bool,
    bucket: Tensor | None = None,
    num_buckets: int = 1,
) -> Tensor:
    """(n, V) log-probabilities → (n, S [+ G]): the shared ids, then the log of all remaining mass, in one
    bucket or, with `bucket` (V,) ids → 0..G−1 (−1 on shared ids), in G buckets.

    Buckets are not renormalised away. A bucket with no ids on this side gets an exact log 0 = −inf
    constant (the divergences floor it, so 0·log 0 contributes 0 and no NaN gradient).
    """
    shared = logprobs[:, shared_ids]  # (n, S)
    if not add_bucket:
        return shared
    if bucket is not None:
        return torch.cat([shared, bucket_logmass(logprobs, bucket, num_buckets)], dim=-1)  # (n, S + G)
    if bool(other.any()):
        # Flooring first keeps logsumexp's backward finite when every remaining id is suppressed (−inf).
        rest = _floor(logprobs).masked_fill(~other, float("-inf")).logsumexp(-1, keepdim=True)  # (n, 1)
    else:
        rest = logprobs.new_full((logprobs.shape[0], 1), float("-inf"))  # (n, 1)
    return torch.cat([shared, rest], dim=-1)  # (n, S + 1)


def bucket_logmass(logprobs: Tensor, bucket: Tensor, num_buckets: int) -> Tensor:
    """(n, V) log-probabilities → (n, G) log of the mass in each bucket; −inf where a bucket has no ids."""
    members = (bucket >= 0).nonzero().squeeze(1)  # (O,)
    mass = logprobs.new_zeros(logprobs.shape[0], num_buckets).index_add(
        1, bucket[members], _floor(logprobs[:, members]).exp()
    )  # (n, G)
    present = torch.zeros(num_buckets, dtype=torch.bool, device=logprobs.device)
    present[bucket[members]] = True
    # An underflowing bucket is floored with zero gradient; an absent one is exactly log 0.
    return mass.clamp_min(torch.finfo(mass.dtype).tiny).log().masked_fill(~present, float("-inf"))


def bucket_divergence_is_finite(vocab: SharedVocab, divergence: str, beta: float) -> bool:
    """Whether `divergence` stays finite when a bucket is structurally empty on one side (no ids of that side
    fall in it) and not on the other: e.g. reverse KL is infinite with an empty teacher bucket."""
    if vocab.student_bucket is None:
        student_has, teacher_has = vocab.student_other.any()[None], vocab.teacher_other.any()[None]  # (1,)
    else:
        student_has, teacher_has = (
            torch.zeros(vocab.num_buckets, dtype=torch.bool).index_fill(0, b[b >= 0].cpu(), True)
            for b in (vocab.student_bucket, vocab.teacher_bucket)
        )  # (G,)
    half, empty = torch.tensor([[-math.log(2.0)] * 2]), torch.tensor([[0.0, float("-inf")]])  # (1, 2)
    for student_only in {bool(x) for x in student_has[student_has != teacher_has]}:
        probe = LOSSES.get(divergence)(half if student_only else empty, empty if student_only else half, beta)
        if not bool(probe.abs() < 1e3):
            return False
    return True


def shared_plus_other(
    student_logprobs: Tensor, teacher_logprobs: Tensor, vocab: SharedVocab, divergence: str, beta: float
) -> Tensor:
    """EXACT where events coincide (1:1 chunks): divergence of the (shared + G)-way distributions, per row:
    the shared ids and the remaining mass, in one bucket (G = 1) or one per first byte (`shared_bytes`)."""
    student, teacher = (
        with_other_bucket(logprobs, ids, other, vocab.has_other, bucket, vocab.num_buckets)
        for logprobs, ids, other, bucket in (
            (student_logprobs, vocab.student_ids, vocab.student_other, vocab.student_bucket),
            (teacher_logprobs, vocab.teacher_ids, vocab.teacher_other, vocab.teacher_bucket),
        )
    )
    return LOSSES.get(divergence)(student, teacher, beta)  # (n,)


def sorted_l1(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """Σ |sorted p_S − sorted p_T| per row, the shorter side padded with zeros (ULD's closed-form W1)."""
    student = student_probs.sort(dim=-1, descending=True).values  # (n, V_s)
    teacher = teacher_probs.sort(dim=-1, descending=True).values  # (n, V_t)
    width = max(student.shape[-1], teacher.shape[-1])
    student = torch.nn.functional.pad(student, (0, width - student.shape[-1]))
    teacher = torch.nn.functional.pad(teacher, (0, width - teacher.shape[-1]))
    return (student - teacher).abs().sum(-1)  # (n,)


def uld(student_logprobs: Tensor, teacher_logprobs: Tensor, vocab: SharedVocab, divergence: str, beta: float) -> Tensor:
    """APPROXIMATE baseline: ULD (Boizard et al. 2024), L1 between sorted probability vectors; ignores token
    identity, so it matches distribution shapes, not events. `vocab`, `divergence`, `beta` are unused."""
    return sorted_l1(student_logprobs.exp(), teacher_logprobs.exp())


def gold_hybrid(
    student_logprobs: Tensor, teacher_logprobs: Tensor, vocab: SharedVocab, divergence: str, beta: float
) -> Tensor:
    """APPROXIMATE baseline: TRL GOLD's hybrid ULD. The divergence on the shared ids' probabilities (sub-
    probability vectors, no bucket, as TRL) weighted by |shared| / V_t, plus sorted L1 on the rest weighted
    by 1 − |shared| / V_t (TRL's adaptive weights)."""
    matched_weight = vocab.teacher_ids.numel() / vocab.teacher_other.numel()
    student_shared = student_logprobs[:, vocab.student_ids]  # (n, S)
    teacher_shared = teacher_logprobs[:, vocab.teacher_ids]  # (n, S)
    loss = matched_weight * LOSSES.get(divergence)(student_shared, teacher_shared, beta)  # (n,)
    if bool(vocab.student_other.any()) and bool(vocab.teacher_other.any()):
        rest = sorted_l1(student_logprobs[:, vocab.student_other].exp(), teacher_logprobs[:, vocab.teacher_other].exp())
        loss = loss + (1.0 - matched_weight) * rest
    return loss


PAIR_LOSSES: dict[str, PairLoss] = {
    "shared": shared_plus_other,
    "shared_bytes": shared_plus_other,  # the vocabulary carries first-byte buckets
    "uld": uld,
    "gold": gold_hybrid,
}


def _pair_chunk(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    teacher_head_bias: Tensor | None,
    weights: Tensor,
    vocab: SharedVocab,
    pair_loss: PairLoss,
    divergence: str,
    beta: float,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    student_logprobs = _logprobs(student_hidden, student_head_weight, student_head_bias, temperature)  # (n, V_s)
    with torch.no_grad():
        teacher_logprobs = _logprobs(teacher_hidden, teacher_head_weight, teacher_head_bias, temperature)
    per_row = pair_loss(student_logprobs, teacher_logprobs, vocab, divergence, beta)  # (n,)
    with torch.no_grad():
        student_mass = student_logprobs[:, vocab.student_ids].logsumexp(-1).exp().sum()
        teacher_mass = teacher_logprobs[:, vocab.teacher_ids].logsumexp(-1).exp().sum()
    return (weights.to(per_row.dtype) * per_row).sum(), torch.stack([student_mass, teacher_mass])


def chunked_pair_loss(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    teacher_head_bias: Tensor | None,
    weights: Tensor,
    vocab: SharedVocab,
    tier: str = "shared",
    divergence: str = "reverse_kl",
    beta: float = 0.5,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ_i weights_i · loss(p_S(row_i), p_T(row_i)) over n paired rows of student/teacher hidden states.

    Rows are paired positions that condition on the same bytes (1:1 chunks for `tier="shared"`, chunk starts
    for the baselines). Teacher logits are recomputed from its hidden states and head one checkpointed chunk
    of `chunk_size` rows at a time (no rows × vocabulary tensor for the batch). Stats (detached):
    `student_shared_mass` and `teacher_shared_mass`, the probability on shared ids summed over rows; `rows`.
    """
    if teacher_hidden.shape[0] != student_hidden.shape[0] or weights.shape != student_hidden.shape[:1]:
        raise ValueError(
            f"paired rows differ: student {student_hidden.shape[0]}, teacher {teacher_hidden.shape[0]}, "
            f"weights {tuple(weights.shape)}"
        )
    pair_loss = PAIR_LOSSES[tier]
    if tier in EXACT_TIERS and not bucket_divergence_is_finite(vocab, divergence, beta):
        raise ValueError(
            f"loss.divergence={divergence} is infinite on these vocabularies: one side has no ids in an 'other' "
            "bucket (outside the shared vocabulary), so it is exactly 0 where the other side's is not; use jsd, tv or "
            "skew_reverse_kl, loss.cross_tokenizer=alm, or loss.kind=policy_gradient"
        )
    loss, (student_mass, teacher_mass) = checkpointed_chunks(
        _pair_chunk,
        (
            student_hidden,
            student_head_weight,
            student_head_bias,
            teacher_hidden,
            teacher_head_weight,
            teacher_head_bias,
        ),
        weights,
        (vocab, pair_loss, divergence, beta, temperature),
        chunk_size,
    )
    rows = torch.tensor(float(student_hidden.shape[0]))
    return loss, {
        "student_shared_mass": student_mass,
        "teacher_shared_mass": teacher_mass,
        "rows": rows,
    }


@torch.no_grad()
def shared_mass(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    shared_ids: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> Tensor:
    """Σ over rows of the probability put on the shared ids (a diagnostic: how much of each distribution the
    exact tier sees by name rather than in the bucket), one chunk of rows at a time."""
    total = torch.zeros((), device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logprobs = _logprobs(hidden[start : start + chunk_size], head_weight, head_bias, temperature)  # (n, V)
        total += logprobs[:, shared_ids].logsumexp(-1).exp().sum()
    return total


def paired_rows(alignment_student_chunk: Tensor, alignment_teacher_chunk: Tensor, chunks: Tensor) -> tuple:
    """(student rows, teacher rows) of the first token of each selected chunk (K,) bool, in chunk order."""
    student_first = _first_rows(alignment_student_chunk, chunks.numel())  # (K,)
    teacher_first = _first_rows(alignment_teacher_chunk, chunks.numel())  # (K,)
    keep = chunks & (student_first >= 0) & (teacher_first >= 0)
    return student_first[keep], teacher_first[keep]


def _first_rows(token_chunk: Tensor, num_chunks: int) -> Tensor:
    positions = torch.arange(token_chunk.numel(), device=token_chunk.device)
    first = torch.full((num_chunks,), token_chunk.numel(), dtype=torch.long, device=token_chunk.device)
    first = first.scatter_reduce(0, token_chunk, positions, reduce="amin")  # (K,)
    return torch.where(first < token_chunk.numel(), first, -1)
