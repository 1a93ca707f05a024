"""The block sampler draws exactly from softmax(scores) and reports the drawn token's logprob."""

from __future__ import annotations

import torch

import mmopd.sampling as sampling
from mmopd.sampling import sample_categorical


def test_block_sampler_matches_softmax_and_never_draws_suppressed(monkeypatch):
    monkeypatch.setattr(sampling, "BLOCK", 8)  # 30 ids: 3 full blocks and a tail of 6
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, generator=generator) * 1.5
    logits[[3, 17, 29]] = float("-inf")  # one suppressed id in a block, one in another, one in the tail
    rows = 40_000
    torch.manual_seed(0)
    token, logprob = sample_categorical(logits.expand(rows, -1).clone())
    probs = torch.softmax(logits, -1)
    counts = torch.bincount(token, minlength=30).double()
    assert counts[[3, 17, 29]].sum() == 0
    expected = probs.double() * rows
    # Each count is binomial: within 5 standard deviations everywhere.
    assert ((counts - expected).abs() <= 5 * (expected * (1 - probs.double())).sqrt() + 1).all()
    torch.testing.assert_close(logprob, torch.log_softmax(logits, -1)[token], atol=1e-6, rtol=0)


def test_block_sampler_handles_a_one_hot_distribution_in_the_tail():
    scores = torch.full((4, 2500), float("-inf"))
    scores[:, 2499] = 0.0
    token, logprob = sample_categorical(scores)
    assert token.tolist() == [2499] * 4 and logprob.abs().max() == 0
