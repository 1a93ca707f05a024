"""Distillation losses: token divergences between student and teacher, made one vocabulary chunk at a time.

Follows GKD (Agarwal et al. 2024) and Thinking Machines' "On-Policy Distillation" (2025); unlike TRL, no
(tokens, vocab) tensor for the whole batch exists: logits are made per checkpointed chunk, in fp32. Losses are
Σ_i weights_i · per_token_i, weights = mask / global token count, so micro-batch and rank sums are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mmopd.fused_kl import fused_kl
from mmopd.registry import LOSSES

Divergence = Callable[[Tensor, Tensor, float], Tensor]


def _floor(logprobs: Tensor) -> Tensor:
    # Suppressed tokens have logprob -inf, and both -inf - (-inf) and logaddexp's backward at -inf are NaN.
    # A finite floor avoids that while exp(floor) == 0 keeps their contribution (and gradient) at zero.
    return logprobs.clamp_min(torch.finfo(logprobs.dtype).min)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) per row from floored log-probabilities (n, V) -> (n,); a zero-probability p term is 0."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_mixture(logp: Tensor, logq: Tensor, weight: float) -> Tensor:
    """log(weight * p + (1 - weight) * q) in log space; the endpoints are exact (log 0 is not a float)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mixture weight beta must be in [0, 1], got {weight}")
    if weight == 0.0:
        return logq
    if weight == 1.0:
        return logp
    return torch.logaddexp(logp + math.log(weight), logq + math.log1p(-weight))  # (n, V)


@LOSSES.register("forward_kl")
def forward_kl(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """KL(p_T || p_S) per token: mass-covering, the supervised-KD direction. `beta` is unused."""
    return _kl(_floor(teacher_logprobs), _floor(student_logprobs))


@LOSSES.register("reverse_kl")
def reverse_kl(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """KL(p_S || p_T) per token: mode-seeking, the on-policy distillation objective. `beta` is unused."""
    return _kl(_floor(student_logprobs), _floor(teacher_logprobs))


@LOSSES.register("jsd")
def generalized_jsd(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """Generalized JSD(β) of GKD (Agarwal et al. 2024, eq. 1), in TRL's `generalized_jsd_loss` convention.

    For 0 < β < 1: β·KL(p_T || m) + (1 − β)·KL(p_S || m) with m = β·p_T + (1 − β)·p_S; β = 0.5 is the
    ordinary JSD. Like TRL, the endpoints are special-cased to β = 0 → KL(p_T || p_S) (forward) and
    β = 1 → KL(p_S || p_T) (reverse); the interior only tends to β·forward and (1 − β)·reverse KL there.
    """
    if beta == 0.0:
        return forward_kl(student_logprobs, teacher_logprobs)
    if beta == 1.0:
        return reverse_kl(student_logprobs, teacher_logprobs)
    student, teacher = _floor(student_logprobs), _floor(teacher_logprobs)
    mixture = _log_mixture(teacher, student, beta)  # (n, V)
    return beta * _kl(teacher, mixture) + (1.0 - beta) * _kl(student, mixture)


@LOSSES.register("skew_kl")
def skew_kl(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.1) -> Tensor:
    """DistiLLM's skew KL (Ko et al. 2024): KL(p_T || β·p_T + (1 − β)·p_S), β = skew α; β = 0 → forward KL."""
    teacher = _floor(teacher_logprobs)
    return _kl(teacher, _log_mixture(teacher, _floor(student_logprobs), beta))


@LOSSES.register("skew_reverse_kl")
def skew_reverse_kl(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.1) -> Tensor:
    """DistiLLM's skew reverse KL: KL(p_S || β·p_S + (1 − β)·p_T); β = 0 is reverse KL."""
    student = _floor(student_logprobs)
    return _kl(student, _log_mixture(student, _floor(teacher_logprobs), beta))


@LOSSES.register("tv")
def total_variation(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """Total variation 0.5·Σ|p_T − p_S| per token (bounded in [0, 1]). `beta` is unused."""
    return 0.5 * (teacher_logprobs.exp() - student_logprobs.exp()).abs().sum(-1)


def _logprobs(hidden: Tensor, head_weight: Tensor, head_bias: Tensor | None, temperature: float) -> Tensor:
    # Upcast inside the chunk: bf16 logits lose ~0.1 nats at logit 30, and only this chunk pays the copy.
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    bias = None if head_bias is None else head_bias.to(dtype)
    logits = F.linear(hidden.to(dtype), head_weight.to(dtype), bias)  # (n, V)
    return F.log_softmax(logits / temperature, dim=-1)  # (n, V)


def _divergence_chunk(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    teacher_head_bias: Tensor | None,
    weights: Tensor,
    divergence_fn: Divergence,
    beta: float,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    student_logprobs = _logprobs(student_hidden, student_head_weight, student_head_bias, temperature)  # (n, V)
    with torch.no_grad():
        teacher_logprobs = _logprobs(teacher_hidden, teacher_head_weight, teacher_head_bias, temperature)
    per_token = divergence_fn(student_logprobs, teacher_logprobs, beta)  # (n,)
    weights = weights.to(per_token.dtype)
    with torch.no_grad():
        logged = per_token if divergence_fn is reverse_kl else reverse_kl(student_logprobs, teacher_logprobs)
        reverse_kl_sum = (weights * logged).sum()
    return (weights * per_token).sum(), reverse_kl_sum


def chunked_divergence(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    teacher_head_bias: Tensor | None,
    weights: Tensor,
    divergence: str = "reverse_kl",
    beta: float = 0.5,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Σ_i weights_i · divergence(p_S, p_T)_i over N tokens, and Σ_i weights_i · KL(p_S || p_T)_i (detached).

    Hidden states are (N, H_s) / (N, H_t), heads (V, H); the teacher side gets no gradient. Each chunk of
    `chunk_size` tokens is checkpointed, so backward recomputes its logits and peak memory is one chunk.
    Logits are divided by `temperature` before log_softmax (no T² rescaling).
    """
    student_vocab, teacher_vocab = student_head_weight.shape[0], teacher_head_weight.shape[0]
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"student vocab size {student_vocab} != teacher vocab size {teacher_vocab}; "
            "same-tokenizer distillation needs identical vocabularies"
        )
    if teacher_hidden.shape[0] != student_hidden.shape[0] or weights.shape != student_hidden.shape[:1]:
        raise ValueError(
            f"token counts differ: student {student_hidden.shape[0]}, teacher {teacher_hidden.shape[0]}, "
            f"weights {tuple(weights.shape)}"
        )
    direction = _kl_direction(divergence, beta)
    if direction is not None:
        return fused_kl(
            student_hidden,
            student_head_weight,
            student_head_bias,
            teacher_hidden,
            teacher_head_weight,
            teacher_head_bias,
            weights,
            reverse=direction == "reverse",
            chunk_size=chunk_size,
            temperature=temperature,
        )
    return checkpointed_chunks(
        _divergence_chunk,
        (
            student_hidden,
            student_head_weight,
            student_head_bias,
            teacher_hidden,
            teacher_head_weight,
            teacher_head_bias,
        ),
        weights,
        (LOSSES.get(divergence), beta, temperature),
        chunk_size,
    )


def checkpointed_chunks(chunk_fn, sides: tuple, weights: Tensor, args: tuple, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Σ over checkpointed chunks of `chunk_size` rows of `chunk_fn(rows of both sides, weights, *args)`, which
    returns (loss, stats); stats are summed and detached. `sides` = (student hidden, head weight, head bias,
    teacher hidden, head weight, head bias); the teacher side gets no gradient."""
    student_hidden, student_head_weight, student_head_bias, teacher_hidden, teacher_head_weight, teacher_head_bias = (
        sides
    )
    teacher_head_weight = teacher_head_weight.detach()
    teacher_head_bias = None if teacher_head_bias is None else teacher_head_bias.detach()
    losses, stats = [], []
    # max(n, 1): an empty micro-batch still runs one empty chunk, so its zero loss stays in the graph.
    for start in range(0, max(student_hidden.shape[0], 1), chunk_size):
        rows = slice(start, start + chunk_size)
        loss, chunk_stats = checkpoint(
            chunk_fn,
            student_hidden[rows],
            student_head_weight,
            student_head_bias,
            teacher_hidden[rows].detach(),
            teacher_head_weight,
            teacher_head_bias,
            weights[rows],
            *args,
            use_reentrant=False,
        )
        losses.append(loss)
        stats.append(chunk_stats)
    return torch.stack(losses).sum(), torch.stack(stats).sum(0).detach()


def _kl_direction(divergence: str, beta: float) -> str | None:
    """ "reverse" / "forward" when `divergence` is a plain KL (so `fused_kl` computes it), else None."""
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return "reverse"
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        return "forward"
    return None


def _sampled_chunk(
    hidden: Tensor, head_weight: Tensor, head_bias: Tensor | None, token_ids: Tensor, temperature: float
) -> Tensor:
    logprobs = _logprobs(hidden, head_weight, head_bias, temperature)  # (n, V)
    return logprobs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # (n,)


def sampled_logprobs(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    token_ids: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> Tensor:
    """log p(token_ids_i | hidden_i) for (N, H) hidden states -> (N,), fp32, differentiable, checkpointed."""
    chunks = [
        checkpoint(
            _sampled_chunk,
            hidden[start : start + chunk_size],
            head_weight,
            head_bias,
            token_ids[start : start + chunk_size],
            temperature,
            use_reentrant=False,
        )
        for start in range(0, max(hidden.shape[0], 1), chunk_size)
    ]
    return torch.cat(chunks)  # (N,)


def cross_entropy(
    hidden: Tensor,
    head_weight: Tensor,
    head_bias: Tensor | None,
    target_ids: Tensor,
    weights: Tensor,
    chunk_size: int = 1024,
) -> Tensor:
    """−Σ_i weights_i · log p(target_i): the SFT loss, or GKD's λ term on teacher-written tokens."""
    logprobs = sampled_logprobs(hidden, head_weight, head_bias, target_ids, chunk_size)  # (N,)
    return -(weights.to(logprobs.dtype) * logprobs).sum()


def policy_gradient_loss(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor | None,
    behaviour_logprobs: Tensor,
    weights: Tensor,
    clip_ratio: float = 0.2,
    reward_advantages: Tensor | None = None,
    teacher_weight: float = 1.0,
    reward_weight: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sampled-token reverse KL as a PPO-clipped policy gradient (tinker-cookbook on-policy distillation),
    optionally plus a verifier reward's advantage (KDRL, Xu et al. 2025; pure GRPO with teacher_weight 0).

    The per-token advantage is A = teacher_weight · (log p_T − log p_S) + reward_weight · reward_advantages, all
    detached: the teacher term makes the expected update descend KL(p_S || p_T) without a full-vocabulary teacher;
    `reward_advantages` (N,) is each token's sequence advantage (GRPO). A zero weight drops its term, so
    `teacher_logprobs` may be None at teacher_weight 0. The ratio r = p_S / p_behaviour corrects for the rollout
    policy; at r = 1 this is REINFORCE with advantage A.
    """
    dtype = torch.promote_types(student_logprobs.dtype, torch.float32)
    student_logprobs = student_logprobs.to(dtype)
    behaviour_logprobs = behaviour_logprobs.detach().to(dtype)
    weights = weights.to(student_logprobs.dtype)
    advantage = torch.zeros_like(student_logprobs)  # (N,)
    if teacher_weight != 0:
        teacher_logprobs = teacher_logprobs.detach().to(dtype)
        advantage = (teacher_logprobs - student_logprobs).detach()  # (N,)
        if teacher_weight != 1:
            advantage = teacher_weight * advantage
    if reward_weight != 0:
        advantage = advantage + reward_weight * reward_advantages.detach().to(dtype)
    ratio = torch.exp(student_logprobs - behaviour_logprobs)  # (N,)
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio) * advantage
    loss = -(weights * torch.minimum(unclipped, clipped)).sum()
    with torch.no_grad():
        # Normalise stats by this micro-batch's weight so they read as fractions / means.
        total = weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        stats = {
            "clip_fraction": (weights * (clipped < unclipped).to(weights.dtype)).sum() / total,
            "ratio_mean": (weights * ratio).sum() / total,
        }
        if teacher_logprobs is not None:
            stats["reverse_kl"] = (weights * (student_logprobs - teacher_logprobs.to(dtype))).sum()
    return loss, stats
