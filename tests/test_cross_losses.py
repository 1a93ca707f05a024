"""Invariants of mmopd.cross_losses on synthetic chunk ids, against same-tokenizer losses and float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from mmopd.cross_losses import (
    bucket_divergence_is_finite,
    chunk_likelihood_divergence,
    chunk_policy_gradient_loss,
    chunk_sums,
    chunked_pair_loss,
    gold_hybrid,
    paired_rows,
    shared_plus_other,
    shared_vocab,
    uld,
    with_other_bucket,
)
from mmopd.losses import _logprobs, chunked_divergence, policy_gradient_loss, sampled_logprobs
from mmopd.registry import LOSSES

DIVERGENCES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("skew_kl", 0.1), ("tv", 0.5)]
N, HS, HT, VS, VT = 9, 5, 6, 11, 13


def randn(generator, *shape, scale=1.0, dtype=torch.float32):
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def heads(seed=0, dtype=torch.float32, student_vocab=VS, teacher_vocab=VT, rows=N):
    generator = torch.Generator().manual_seed(seed)
    student = [randn(generator, rows, HS, dtype=dtype), randn(generator, student_vocab, HS, dtype=dtype)]
    teacher = [randn(generator, rows, HT, dtype=dtype), randn(generator, teacher_vocab, HT, dtype=dtype)]
    return [t.requires_grad_() for t in student], teacher


def identity(vocab):
    ids = torch.arange(vocab)
    return shared_vocab(ids, ids, vocab, vocab)


@pytest.mark.parametrize("name,beta", DIVERGENCES)
def test_identity_shared_tier_equals_same_tokenizer_loss_and_gradients(name, beta):
    (hidden, weight), (teacher_hidden, teacher_weight) = heads(student_vocab=VS, teacher_vocab=VS)
    weights = torch.full((N,), 1.0 / N)
    same, _ = chunked_divergence(
        hidden, weight, None, teacher_hidden, teacher_weight, None, weights, name, beta, chunk_size=4
    )
    same_grads = torch.autograd.grad(same, (hidden, weight))
    cross, stats = chunked_pair_loss(
        hidden, weight, None, teacher_hidden, teacher_weight, None, weights, identity(VS), "shared", name, beta, 4
    )
    cross_grads = torch.autograd.grad(cross, (hidden, weight))
    assert torch.allclose(cross, same, atol=1e-6, rtol=0)
    for a, b in zip(cross_grads, same_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.allclose(stats["student_shared_mass"], torch.tensor(float(N)), atol=1e-5)


def test_identity_policy_gradient_equals_same_tokenizer():
    generator = torch.Generator().manual_seed(1)
    student = (-randn(generator, N).abs()).requires_grad_()
    teacher, behaviour = -randn(generator, N).abs(), -randn(generator, N).abs()
    weights = torch.full((N,), 1.0 / N)
    chunks = torch.arange(N)
    same, same_stats = policy_gradient_loss(student, teacher, behaviour, weights, 0.2)
    (same_grad,) = torch.autograd.grad(same, student)
    cross, stats = chunk_policy_gradient_loss(student, teacher, behaviour, weights, chunks, chunks, N, 0.2)
    (cross_grad,) = torch.autograd.grad(cross, student)
    assert torch.allclose(cross, same, atol=1e-6, rtol=0)
    assert torch.allclose(cross_grad, same_grad, atol=1e-6, rtol=0)
    for key in ("reverse_kl", "clip_fraction", "ratio_mean"):
        assert torch.allclose(stats[key], same_stats[key], atol=1e-6), key


def test_chunk_advantage_is_the_chain_rule_difference_given_to_every_student_token():
    # 3 chunks: student tokens [0 | 1 2 | 3], teacher tokens [0 1 | 2 | 3 4].
    student_chunk, teacher_chunk = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2, 2])
    student = torch.tensor([-0.5, -1.0, -0.25, -2.0], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([-0.1, -0.2, -0.3, -0.4, -0.5], dtype=torch.float64)
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    loss, stats = chunk_policy_gradient_loss(
        student, teacher, student.detach(), weights, student_chunk, teacher_chunk, 3
    )
    advantage = torch.tensor([-0.3 + 0.5, -0.3 + 1.25, -0.3 + 1.25, -0.9 + 2.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, student)
    # At ratio 1 the gradient of −w·r·A with respect to log p_S is −w·A.
    assert torch.allclose(grad, -weights * advantage)
    # The logged KL counts each chunk's log-ratio once: (0.2 + 0.95 + 1.1) · 0.25 with the 2-token chunk shared.
    assert math.isclose(float(stats["reverse_kl"]), -0.25 * (0.2 + 0.95 + 1.1), rel_tol=1e-9)
    assert torch.allclose(chunk_sums(teacher, teacher_chunk, 3), torch.tensor([-0.3, -0.3, -0.9], dtype=torch.float64))


def test_other_bucket_holds_the_remaining_mass_and_matches_a_float64_reference():
    (hidden, weight), (teacher_hidden, teacher_weight) = heads(dtype=torch.float64)
    student_ids, teacher_ids = torch.tensor([0, 3, 4, 7]), torch.tensor([2, 1, 9, 12])
    vocab = shared_vocab(student_ids, teacher_ids, VS, VT)
    student_logprobs = _logprobs(hidden, weight, None, 1.0)
    teacher_logprobs = _logprobs(teacher_hidden, teacher_weight, None, 1.0)
    bucketed = with_other_bucket(student_logprobs, vocab.student_ids, vocab.student_other, True)
    assert bucketed.shape == (N, 5) and torch.allclose(bucketed.exp().sum(-1), torch.ones(N, dtype=torch.float64))
    student_probs, teacher_probs = student_logprobs.exp(), teacher_logprobs.exp()
    p = torch.cat([student_probs[:, student_ids], 1 - student_probs[:, student_ids].sum(-1, keepdim=True)], -1)
    q = torch.cat([teacher_probs[:, teacher_ids], 1 - teacher_probs[:, teacher_ids].sum(-1, keepdim=True)], -1)
    reference = (p * (p / q).log()).sum(-1)
    got = shared_plus_other(student_logprobs, teacher_logprobs, vocab, "reverse_kl", 0.5)
    assert torch.allclose(got, reference, atol=1e-10) and (got >= 0).all()


@pytest.mark.parametrize("name,beta", DIVERGENCES)
def test_pair_losses_are_chunked_exactly_and_zero_for_a_teacher_equal_to_the_student(name, beta):
    (hidden, weight), _ = heads(dtype=torch.float64, student_vocab=VS)
    weights = torch.full((N,), 1.0 / N, dtype=torch.float64)
    vocab = shared_vocab(torch.tensor([0, 3, 4]), torch.tensor([0, 3, 4]), VS, VS)
    for tier in ("shared", "uld", "gold"):
        args = (hidden, weight, None, hidden.detach(), weight.detach(), None, weights, vocab, tier, name, beta)
        whole, _ = chunked_pair_loss(*args, chunk_size=N)
        pieces, _ = chunked_pair_loss(*args, chunk_size=2)
        assert torch.allclose(whole, pieces, atol=1e-12), tier
        assert abs(float(whole)) < 1e-9, tier


def test_suppressed_ids_in_the_other_bucket_give_finite_gradients():
    (hidden, weight), (teacher_hidden, teacher_weight) = heads()
    bias = torch.zeros(VS)
    bias[[5, 6, 8, 9, 10]] = float("-inf")  # every student id outside the map is suppressed
    vocab = shared_vocab(torch.tensor([0, 1, 2, 3, 4, 7]), torch.tensor([0, 1, 2, 3, 4, 7]), VS, VT)
    weights = torch.full((N,), 1.0 / N)
    for tier in ("shared", "uld", "gold"):
        loss, _ = chunked_pair_loss(
            hidden, weight, bias, teacher_hidden, teacher_weight, None, weights, vocab, tier, "jsd", 0.5, 4
        )
        grads = torch.autograd.grad(loss, (hidden, weight))
        assert math.isfinite(float(loss)) and all(torch.isfinite(g).all() for g in grads), tier


def test_uld_ignores_token_identity_and_gold_reduces_to_the_divergence_on_a_full_map():
    generator = torch.Generator().manual_seed(3)
    logprobs = torch.log_softmax(randn(generator, 4, VS, dtype=torch.float64), -1)
    permuted = logprobs[:, torch.randperm(VS, generator=generator)]
    assert torch.allclose(uld(logprobs, permuted, identity(VS), "reverse_kl", 0.5), torch.zeros(4, dtype=torch.float64))
    other = torch.log_softmax(randn(generator, 4, VS, dtype=torch.float64), -1)
    full = gold_hybrid(logprobs, other, identity(VS), "reverse_kl", 0.5)
    assert torch.allclose(full, LOSSES.get("reverse_kl")(logprobs, other, 0.5))


def test_chunk_likelihood_divergence_matches_a_binary_reference_and_stays_finite_at_certainty():
    student_chunk, teacher_chunk = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
    student = torch.tensor([-0.5, -1.0, -0.25, 0.0], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([-0.1, -2.0, -0.3, -0.4], dtype=torch.float64)
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    loss, _ = chunk_likelihood_divergence(student, teacher, weights, student_chunk, teacher_chunk, 3)
    p = torch.tensor([-0.5, -1.25, 0.0], dtype=torch.float64).exp()
    q = torch.tensor([-0.1, -2.0, -0.7], dtype=torch.float64).exp()
    binary = p * (p / q).log() + torch.where(p < 1, (1 - p) * ((1 - p) / (1 - q)).log(), 0.0)
    assert torch.allclose(loss, (torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64) * binary).sum())
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()
    zero, _ = chunk_likelihood_divergence(teacher, teacher, torch.full((4,), 0.25), teacher_chunk, teacher_chunk, 3)
    assert abs(float(zero)) < 1e-12


def test_paired_rows_are_the_first_tokens_of_selected_chunks():
    student_chunk, teacher_chunk = torch.tensor([0, 1, 1, 2, 3]), torch.tensor([0, 0, 1, 2, 3, 3])
    student_rows, teacher_rows = paired_rows(student_chunk, teacher_chunk, torch.tensor([True, True, False, True]))
    assert student_rows.tolist() == [0, 1, 4] and teacher_rows.tolist() == [0, 2, 4]


def test_sampled_chunk_logprobs_follow_the_chain_rule_on_real_heads():
    (hidden, weight), _ = heads(dtype=torch.float64)
    ids = torch.randint(0, VS, (N,), generator=torch.Generator().manual_seed(0))
    chunks = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3])
    tokens = sampled_logprobs(hidden, weight, None, ids, chunk_size=4)
    sums = chunk_sums(tokens, chunks, 4)
    expected = torch.stack([tokens[chunks == c].sum() for c in range(4)])
    assert torch.allclose(sums, expected) and (sums <= 0).all()


def test_an_empty_bucket_on_one_side_refuses_divergences_that_would_be_infinite():
    teacher_inside = shared_vocab(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 5, 3)  # teacher ⊂ student
    student_inside = shared_vocab(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), 3, 5)
    assert not bucket_divergence_is_finite(teacher_inside, "reverse_kl", 0.5)
    assert bucket_divergence_is_finite(teacher_inside, "forward_kl", 0.5)
    assert bucket_divergence_is_finite(student_inside, "reverse_kl", 0.5)
    assert not bucket_divergence_is_finite(student_inside, "forward_kl", 0.5)
    assert all(bucket_divergence_is_finite(v, "jsd", 0.5) for v in (teacher_inside, student_inside))
    (hidden, weight), (teacher_hidden, teacher_weight) = heads(student_vocab=5, teacher_vocab=3)
    with pytest.raises(ValueError, match="infinite"):
        chunked_pair_loss(
            hidden, weight, None, teacher_hidden, teacher_weight, None, torch.ones(N), teacher_inside, "shared"
        )


def test_first_byte_buckets_partition_the_other_mass_and_refine_the_divergence():
    (hidden, weight), (teacher_hidden, teacher_weight) = heads(dtype=torch.float64)
    student_ids, teacher_ids = torch.tensor([0, 3, 4, 7]), torch.tensor([2, 1, 9, 12])
    # First bytes: 256 is "no bytes"; byte 9 only on the teacher's side, byte 7 only on the student's.
    student_first = torch.tensor([1, 5, 5, 2, 2, 256, 5, 3, 7, 2, 256])  # (VS,)
    teacher_first = torch.tensor([5, 2, 3, 5, 9, 9, 256, 5, 2, 1, 3, 5, 5])  # (VT,)
    one = shared_vocab(student_ids, teacher_ids, VS, VT)
    split = shared_vocab(student_ids, teacher_ids, VS, VT, (student_first, teacher_first))
    assert split.num_buckets == 6  # bytes 2, 3, 5, 7, 9 and "no bytes" hold ids outside the map
    student_logprobs = _logprobs(hidden, weight, None, 1.0)
    teacher_logprobs = _logprobs(teacher_hidden, teacher_weight, None, 1.0)
    for logprobs, ids, other, bucket in (
        (student_logprobs, student_ids, split.student_other, split.student_bucket),
        (teacher_logprobs, teacher_ids, split.teacher_other, split.teacher_bucket),
    ):
        buckets = with_other_bucket(logprobs, ids, other, True, bucket, split.num_buckets)[:, len(ids) :]  # (N, G)
        single = with_other_bucket(logprobs, ids, other, True)[:, -1]  # (N,)
        assert torch.allclose(buckets.logsumexp(-1), single, atol=1e-12)
        for label in range(split.num_buckets):  # each bucket's mass is that of its ids, -inf where it has none
            members = (bucket == label).nonzero().squeeze(1)
            expected = logprobs[:, members].logsumexp(-1) if len(members) else torch.full((N,), float("-inf"))
            assert torch.allclose(buckets[:, label], expected.to(buckets.dtype), atol=1e-12)
    # Refining the bucket cannot lower a KL (data processing); jsd stays finite on one-sided buckets.
    coarse = shared_plus_other(student_logprobs, teacher_logprobs, one, "jsd", 0.5)
    fine = shared_plus_other(student_logprobs, teacher_logprobs, split, "jsd", 0.5)
    assert (fine >= coarse - 1e-12).all() and (fine > coarse).any()
    assert not bucket_divergence_is_finite(split, "reverse_kl", 0.5)
    assert not bucket_divergence_is_finite(split, "forward_kl", 0.5)
    assert bucket_divergence_is_finite(split, "jsd", 0.5) and bucket_divergence_is_finite(one, "reverse_kl", 0.5)
