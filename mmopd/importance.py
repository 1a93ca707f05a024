"""Truncated importance sampling for off-policy rollouts (the async pipeline's correction).

Rollouts sampled by an older policy (the behaviour policy) are reweighted per token by
w = min(π_learner / π_behaviour, C), detached, as in IMPALA's truncated IS and the TIS fix of
asynchronous RL trainers (Yao et al., 2025). Weights multiply the loss's per-token weights, so the
divergence losses stay pure functions and the correction is a tensor, not a branch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def truncated_importance_weights(
    learner_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float
) -> tuple[Tensor, Tensor]:
    """Per-token weights min(exp(lp_learner − lp_behaviour), cap) (N,), detached, and which were capped (N,)."""
    ratio = torch.exp(learner_logprobs.detach().float() - behaviour_logprobs.detach().float())  # (N,)
    capped = ratio > cap
    return ratio.clamp(max=cap), capped


def importance_stats(
    token_weights: Tensor, learner_logprobs: Tensor, behaviour_logprobs: Tensor, capped: Tensor
) -> dict[str, Tensor]:
    """Sums over tokens weighted by `token_weights` (1 / the step's supervised tokens), so the micro-batches'
    sums add up to the step's means: the fraction of capped weights and the mean |lp_learner − lp_behaviour|."""
    mismatch = (learner_logprobs.detach().float() - behaviour_logprobs.detach().float()).abs()  # (N,)
    return {
        "is_clip_fraction": (token_weights * capped.to(token_weights.dtype)).sum(),
        "logprob_mismatch": (token_weights * mismatch).sum(),
    }
