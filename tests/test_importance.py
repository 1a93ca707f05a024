"""Truncated importance sampling of off-policy rollouts: weights, caps and the logged statistics."""

from __future__ import annotations

import math

import torch

from mmopd.importance import importance_stats, truncated_importance_weights


def test_weights_are_the_probability_ratio_truncated_at_the_cap():
    learner = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    behaviour = torch.tensor([-1.0, -1.0, -2.0, -3.5])
    weights, capped = truncated_importance_weights(learner, behaviour, cap=2.0)
    expected = [1.0, math.exp(-1.0), 2.0, math.exp(0.5)]  # exp(1.5) = 4.48 is capped at 2
    assert torch.allclose(weights, torch.tensor(expected))
    assert capped.tolist() == [False, False, True, False]
    assert not weights.requires_grad  # a weight on the loss, not a path for gradients


def test_on_policy_rollouts_get_weight_one_and_no_mismatch():
    logprobs = torch.tensor([-0.3, -1.2, -2.0])
    weights, capped = truncated_importance_weights(logprobs, logprobs.clone(), cap=1.5)
    assert torch.equal(weights, torch.ones(3)) and not capped.any()
    stats = importance_stats(torch.full((3,), 1 / 3), logprobs, logprobs.clone(), capped)
    assert float(stats["is_clip_fraction"]) == 0.0 and float(stats["logprob_mismatch"]) == 0.0


def test_statistics_of_micro_batches_add_up_to_the_step_means():
    learner, behaviour = torch.tensor([0.0, -1.0, -4.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0, -1.0])
    token_weights = torch.full((4,), 1 / 4)  # 1 / the step's supervised tokens
    _, capped = truncated_importance_weights(learner, behaviour, cap=2.0)
    whole = importance_stats(token_weights, learner, behaviour, capped)
    halves = [
        importance_stats(token_weights[s], learner[s], behaviour[s], capped[s]) for s in (slice(0, 2), slice(2, 4))
    ]
    for key in ("is_clip_fraction", "logprob_mismatch"):
        assert math.isclose(float(whole[key]), sum(float(h[key]) for h in halves), rel_tol=1e-6)
    assert math.isclose(float(whole["is_clip_fraction"]), 0.25)  # exp(1) > 2: one token of four
    assert math.isclose(float(whole["logprob_mismatch"]), (1 + 0 + 3 + 0) / 4)
