"""Invariants of mmopd.losses against naive full-vocabulary float64 references written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmopd.losses import (
    chunked_divergence,
    cross_entropy,
    policy_gradient_loss,
    sampled_logprobs,
)
from mmopd.registry import LOSSES

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"]
CASES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.0),
    ("jsd", 0.1),
    ("jsd", 0.5),
    ("jsd", 0.9),
    ("jsd", 1.0),
    ("skew_kl", 0.1),
    ("skew_kl", 0.5),
    ("skew_reverse_kl", 0.1),
    ("skew_reverse_kl", 0.5),
    ("tv", 0.5),
]
N, V, HS, HT = 10, 7, 5, 6


def make_problem(seed=0, n=N, vocab=V, dtype=torch.float64, bias=True):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)

    student = {
        "hidden": randn(n, HS).requires_grad_(),
        "weight": randn(vocab, HS).requires_grad_(),
        "bias": randn(vocab, scale=0.5).requires_grad_() if bias else None,
    }
    teacher = {"hidden": randn(n, HT), "weight": randn(vocab, HT), "bias": randn(vocab, scale=0.5)}
    mask = torch.ones(n, dtype=torch.float64)
    mask[[1, n - 2] if n > 2 else []] = 0.0
    return student, teacher, mask / max(mask.sum(), 1.0)


def run(student, teacher, weights, divergence, beta=0.5, chunk_size=4, temperature=1.0):
    return chunked_divergence(
        student["hidden"], student["weight"], student["bias"],
        teacher["hidden"], teacher["weight"], teacher["bias"],
        weights, divergence=divergence, beta=beta, chunk_size=chunk_size, temperature=temperature,
    )  # fmt: skip


def naive_probs(side, temperature=1.0):
    logits = side["hidden"].double() @ side["weight"].double().T
    if side["bias"] is not None:
        logits = logits + side["bias"].double()
    exp = torch.exp(logits / temperature - (logits / temperature).max(-1, keepdim=True).values)
    return exp / exp.sum(-1, keepdim=True)  # (N, V)


def naive_kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def naive_divergence(name, p_student, p_teacher, beta):
    if name == "forward_kl" or (name == "jsd" and beta == 0.0):
        return naive_kl(p_teacher, p_student)
    if name == "reverse_kl" or (name == "jsd" and beta == 1.0):
        return naive_kl(p_student, p_teacher)
    if name == "jsd":
        mixture = beta * p_teacher + (1 - beta) * p_student
        return beta * naive_kl(p_teacher, mixture) + (1 - beta) * naive_kl(p_student, mixture)
    if name == "skew_kl":
        return naive_kl(p_teacher, beta * p_teacher + (1 - beta) * p_student)
    if name == "skew_reverse_kl":
        return naive_kl(p_student, beta * p_student + (1 - beta) * p_teacher)
    assert name == "tv"
    return 0.5 * (p_teacher - p_student).abs().sum(-1)


def grads(loss, student):
    inputs = [student["hidden"], student["weight"], student["bias"]]
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def test_all_divergences_registered():
    assert set(DIVERGENCES) <= set(LOSSES.names())


@pytest.mark.parametrize(("name", "beta"), CASES)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_matches_naive_reference(name, beta, temperature):
    student, teacher, weights = make_problem()
    teacher["hidden"].requires_grad_()
    loss, logged_reverse_kl = run(student, teacher, weights, name, beta, chunk_size=3, temperature=temperature)
    p_student, p_teacher = naive_probs(student, temperature), naive_probs(teacher, temperature)
    expected = (weights * naive_divergence(name, p_student, p_teacher, beta)).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads(loss, student), grads(expected, student), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
    # The log output is reverse KL whatever is trained, and never carries gradient.
    torch.testing.assert_close(logged_reverse_kl, (weights * naive_kl(p_student, p_teacher)).sum())
    assert not logged_reverse_kl.requires_grad
    loss.backward()
    assert teacher["hidden"].grad is None


@pytest.mark.parametrize("name", DIVERGENCES)
def test_low_precision_inputs_are_computed_in_fp32(name):
    student, teacher, weights = make_problem(dtype=torch.bfloat16)
    loss, _ = run(student, teacher, weights, name, beta=0.3)
    expected = (weights * naive_divergence(name, naive_probs(student), naive_probs(teacher), 0.3)).sum()
    assert loss.dtype == torch.float32
    # bf16 arithmetic is off by ~1e-4 to 1e-3 here; fp32 math on the same bf16 inputs by ~1e-6.
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_chunked_equals_unchunked(name, beta):
    student, teacher, weights = make_problem(seed=1)
    small, _ = run(student, teacher, weights, name, beta, chunk_size=3)  # 10 tokens: chunks 3,3,3,1
    whole, _ = run(student, teacher, weights, name, beta, chunk_size=10_000)
    torch.testing.assert_close(small, whole, rtol=1e-12, atol=1e-14)
    for got, want in zip(grads(small, student), grads(whole, student), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_nonnegative_and_zero_when_teacher_is_student(name, beta):
    student, teacher, weights = make_problem(seed=2, dtype=torch.float32)
    different, _ = run(student, teacher, weights, name, beta)
    assert different.item() > 1e-3
    logprobs_student = torch.log_softmax(torch.randn(64, 50), -1)
    logprobs_teacher = torch.log_softmax(3 * torch.randn(64, 50), -1)
    assert (LOSSES.get(name)(logprobs_student, logprobs_teacher, beta) >= -1e-6).all()
    same = {key: value.detach() for key, value in student.items()}
    zero, logged = run(student, same, weights, name, beta)
    assert abs(zero.item()) <= 1e-6 and abs(logged.item()) <= 1e-6


def test_jsd_endpoints_are_forward_and_reverse_kl():
    student, teacher, weights = make_problem(seed=3)
    torch.testing.assert_close(run(student, teacher, weights, "jsd", 0.0), run(student, teacher, weights, "forward_kl"))
    torch.testing.assert_close(run(student, teacher, weights, "jsd", 1.0), run(student, teacher, weights, "reverse_kl"))
    # Near the endpoints the interior is a scaled forward / reverse KL (GKD, Agarwal et al. 2024).
    forward, _ = run(student, teacher, weights, "forward_kl")
    reverse, _ = run(student, teacher, weights, "reverse_kl")
    torch.testing.assert_close(run(student, teacher, weights, "jsd", 1e-4)[0] / 1e-4, forward, rtol=1e-2, atol=0)
    torch.testing.assert_close(run(student, teacher, weights, "jsd", 1 - 1e-4)[0] / 1e-4, reverse, rtol=1e-2, atol=0)


@pytest.mark.parametrize(("name", "beta"), CASES)
def test_suppressed_token_is_finite_and_equals_smaller_vocab(name, beta):
    student, teacher, weights = make_problem(seed=4, dtype=torch.float32)
    with torch.no_grad():
        student["bias"][2] = float("-inf")
        teacher["bias"][2] = float("-inf")
    loss, logged = run(student, teacher, weights, name, beta)
    assert torch.isfinite(loss) and torch.isfinite(logged)
    hidden_grad, weight_grad, bias_grad = grads(loss, student)
    assert all(torch.isfinite(g).all() for g in (hidden_grad, weight_grad, bias_grad))
    assert weight_grad[2].abs().max() == 0 and bias_grad[2] == 0
    keep = [0, 1, 3, 4, 5, 6]
    smaller_student = {
        "hidden": student["hidden"].detach().clone().requires_grad_(),
        "weight": student["weight"].detach()[keep].clone().requires_grad_(),
        "bias": student["bias"].detach()[keep].clone().requires_grad_(),
    }
    smaller_teacher = {
        "hidden": teacher["hidden"],
        "weight": teacher["weight"][keep],
        "bias": teacher["bias"][keep],
    }
    smaller, _ = run(smaller_student, smaller_teacher, weights, name, beta)
    torch.testing.assert_close(loss, smaller)
    torch.testing.assert_close(hidden_grad, grads(smaller, smaller_student)[0])


@pytest.mark.parametrize("name", ["reverse_kl", "jsd", "tv"])
def test_micro_batches_with_global_weights_sum_to_whole(name):
    student, teacher, _ = make_problem(seed=5, n=11)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.float64)
    weights = mask / mask.sum()  # normalised by the global count, not each micro-batch's
    whole, whole_logged = run(student, teacher, weights, name)
    parts, logged = [], []
    for rows in (slice(0, 4), slice(4, 11)):
        part_student = dict(student, hidden=student["hidden"][rows])
        part_teacher = dict(teacher, hidden=teacher["hidden"][rows])
        loss, reverse_kl_sum = run(part_student, part_teacher, weights[rows], name)
        parts.append(loss)
        logged.append(reverse_kl_sum)
    torch.testing.assert_close(sum(parts), whole)
    torch.testing.assert_close(sum(logged), whole_logged)
    for got, want in zip(grads(sum(parts), student), grads(whole, student), strict=True):
        torch.testing.assert_close(got, want)


def test_empty_micro_batch_gives_zero_loss_in_graph():
    student, teacher, weights = make_problem(n=0)
    loss, logged = run(student, teacher, weights, "reverse_kl")
    assert loss.item() == 0.0 and logged.item() == 0.0
    loss.backward()
    assert student["weight"].grad is not None and student["weight"].grad.abs().max() == 0


def test_no_whole_batch_vocab_tensor_is_saved_for_backward():
    n, vocab, chunk_size = 64, 50, 8
    student, teacher, weights = make_problem(seed=8, n=n, vocab=vocab, dtype=torch.float32)
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = run(student, teacher, weights, "jsd", chunk_size=chunk_size)
        token_ids = torch.zeros(n, dtype=torch.long)
        loss = loss + sampled_logprobs(student["hidden"], student["weight"], None, token_ids, chunk_size).sum()
    # Checkpointing keeps only each chunk's inputs: no (rows, vocab) logits or log-probs are kept alive,
    # so peak memory is one chunk however many tokens there are (chunking alone would keep all of them).
    assert saved_shapes and not [shape for shape in saved_shapes if len(shape) == 2 and shape[1] == vocab]
    loss.backward()
    assert torch.isfinite(student["weight"].grad).all()


def test_vocab_mismatch_raises():
    student, teacher, weights = make_problem()
    teacher = dict(teacher, weight=teacher["weight"][:5], bias=teacher["bias"][:5])
    with pytest.raises(ValueError, match=r"student vocab size 7 != teacher vocab size 5"):
        run(student, teacher, weights, "reverse_kl")


@pytest.mark.parametrize("bias", [True, False])
def test_sampled_logprobs_and_cross_entropy_match_naive(bias):
    student, _, weights = make_problem(seed=6, bias=bias)
    token_ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0))
    naive_logprobs = naive_probs(student, temperature=0.7).log().gather(-1, token_ids[:, None]).squeeze(-1)
    got = sampled_logprobs(student["hidden"], student["weight"], student["bias"], token_ids, 3, temperature=0.7)
    torch.testing.assert_close(got, naive_logprobs)
    inputs = [t for t in student.values() if t is not None]
    for got_grad, want_grad in zip(
        torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(naive_logprobs.sum(), inputs), strict=True
    ):
        torch.testing.assert_close(got_grad, want_grad)
    loss = cross_entropy(student["hidden"], student["weight"], student["bias"], token_ids, weights, chunk_size=3)
    logits = F.linear(student["hidden"], student["weight"], student["bias"])
    torch.testing.assert_close(loss, (weights * F.cross_entropy(logits, token_ids, reduction="none")).sum())


def pg_inputs(seed=7, n=8):
    generator = torch.Generator().manual_seed(seed)
    student = (-torch.rand(n, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    teacher = -torch.rand(n, generator=generator, dtype=torch.float64) * 3
    weights = torch.rand(n, generator=generator, dtype=torch.float64) / n
    return student, teacher, weights


def test_policy_gradient_at_ratio_one_is_reinforce_with_teacher_advantage():
    student, teacher, weights = pg_inputs()
    loss, stats = policy_gradient_loss(student, teacher, student.detach(), weights)
    advantage = (teacher - student).detach()
    (got,) = torch.autograd.grad(loss, student)
    (want,) = torch.autograd.grad((weights * advantage * -student).sum(), student)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, -weights * advantage)
    torch.testing.assert_close(stats["reverse_kl"], (weights * (student - teacher)).sum().detach())
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(1.0, dtype=torch.float64))
    assert stats["clip_fraction"].item() == 0.0
    assert not any(value.requires_grad for value in stats.values())


def test_policy_gradient_clipping_zeroes_gradient_only_in_the_clipped_direction():
    student = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=torch.float64, requires_grad=True)
    # Advantages (teacher - student): +, -, +, - ; ratios: e^1 (high), e^-1 (low), e^-1 (low), e^1 (high).
    teacher = torch.tensor([0.0, -2.0, 0.0, -2.0], dtype=torch.float64)
    behaviour = torch.tensor([-2.0, 0.0, 0.0, -2.0], dtype=torch.float64)
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    loss, stats = policy_gradient_loss(student, teacher, behaviour, weights, clip_ratio=0.2)
    (grad,) = torch.autograd.grad(loss, student)
    # Positive advantage above 1+c and negative advantage below 1-c are clipped: no gradient there.
    assert grad[0] == 0 and grad[1] == 0
    assert grad[2] != 0 and grad[3] != 0
    ratios = torch.exp(student.detach() - behaviour)
    torch.testing.assert_close(grad[2:], -weights[2:] * ratios[2:] * (teacher - student.detach())[2:])
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(stats["ratio_mean"], ratios.mean())


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl"])
def test_fused_kl_keeps_no_vocab_tensor_and_matches_the_checkpointed_path(name, monkeypatch):
    """Plain KLs take the fused path (gradient made in the forward pass); it saves only (N, H) and (V, H)
    gradients, and equals the generic checkpointed path it replaces."""
    import mmopd.losses as losses

    n, vocab = 40, 50
    student, teacher, weights = make_problem(seed=9, n=n, vocab=vocab, dtype=torch.float32)
    with torch.no_grad():
        student["bias"][4] = teacher["bias"][4] = float("-inf")
    saved_shapes = []

    def pack(tensor):
        saved_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fused, fused_logged = run(student, teacher, weights, name, chunk_size=8, temperature=1.3)
    assert not [shape for shape in saved_shapes if len(shape) == 2 and shape[0] == n and shape[1] == vocab]
    monkeypatch.setattr(losses, "_kl_direction", lambda divergence, beta: None)
    generic, generic_logged = run(student, teacher, weights, name, chunk_size=8, temperature=1.3)
    torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused_logged, generic_logged, rtol=1e-5, atol=1e-7)
    for got, want in zip(grads(fused, student), grads(generic, student), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
