"""The vocabulary-parallel divergence on 2 gloo ranks equals the unsharded `chunked_divergence`: the loss, the
logged reverse KL, and the gradients of every rank's student hidden states and of the student head; and the
vocabulary-parallel sampled-token logprobs equal `sampled_logprobs`."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmopd.losses import chunked_divergence, sampled_logprobs
from mmopd.vocab_parallel import vocab_parallel_divergence, vocab_parallel_sampled_logprobs, vocab_rows

DIVERGENCES = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.5), ("skew_kl", 0.1), ("skew_reverse_kl", 0.1)]
TOKENS = (5, 3)  # rank 0 and rank 1 hold different numbers of tokens
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}  # relative to the largest reference magnitude


def problem(dtype: torch.dtype):
    """Student/teacher hidden states per rank, heads, biases with two suppressed (-inf) ids, token weights."""
    generator = torch.Generator().manual_seed(0)
    vocab, student_width, teacher_width = 37, 8, 6

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    bias = torch.zeros(vocab, dtype=dtype)
    bias[[3, 30]] = float("-inf")  # media ids, as models.output_head suppresses them
    return dict(
        student_head=normal(vocab, student_width),
        teacher_head=normal(vocab, teacher_width),
        bias=bias,
        student=[normal(n, student_width) for n in TOKENS],
        teacher=[normal(n, teacher_width) for n in TOKENS],
        weights=[torch.rand(n, generator=generator, dtype=torch.float64).to(dtype) for n in TOKENS],
    )


def close(actual: torch.Tensor, expected: torch.Tensor, dtype) -> bool:
    return bool((actual - expected).abs().max() <= TOLERANCE[dtype] * expected.abs().max().clamp_min(1e-30))


def _rank(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        for dtype in (torch.float64, torch.float32):
            data = problem(dtype)
            vocab = data["student_head"].shape[0]
            rows = vocab_rows(vocab, rank, 2)
            for divergence, beta in DIVERGENCES:
                _check(rank, data, rows, divergence, beta, dtype)
            _check_sampled(rank, data, rows, dtype)
    finally:
        dist.destroy_process_group()


def _check(rank, data, rows, divergence, beta, dtype) -> None:
    head = data["student_head"].clone().requires_grad_()
    hidden = [h.clone().requires_grad_() for h in data["student"]]
    options = dict(divergence=divergence, beta=beta, temperature=0.7)
    expected, expected_kl = chunked_divergence(
        torch.cat(hidden),
        head,
        data["bias"],
        torch.cat(data["teacher"]),
        data["teacher_head"],
        data["bias"],
        torch.cat(data["weights"]),
        chunk_size=4,
        **options,
    )
    expected.backward()
    sharded_head = data["student_head"].clone().requires_grad_()
    own = data["student"][rank].clone().requires_grad_()
    loss, kl = vocab_parallel_divergence(
        own,
        sharded_head,
        data["bias"],
        data["teacher"][rank],
        data["teacher_head"][rows],
        data["bias"][rows],
        data["weights"][rank],
        rows,
        chunk_size=2,
        **options,
    )
    loss.backward()
    totals = torch.stack([loss.detach(), kl])
    dist.all_reduce(totals)  # each rank's loss is its own tokens' share
    head_grad = sharded_head.grad.clone()
    dist.all_reduce(head_grad)  # what DDP / FSDP2 do with the student head's gradient
    where = f"{divergence} {dtype} rank {rank}"
    assert close(totals[0], expected.detach(), dtype), (where, totals[0], expected)
    assert close(totals[1], expected_kl, dtype), (where, totals[1], expected_kl)
    assert close(own.grad, hidden[rank].grad, dtype), where
    assert close(head_grad, head.grad, dtype), where
    assert own.grad.abs().max() > 0 and head.grad.abs().max() > 0


def _check_sampled(rank, data, rows, dtype) -> None:
    # Sampled ids in both ranks' slices; never a suppressed id (the sampler cannot draw those).
    ids = [torch.tensor([0, 36, 18, 19, 5]), torch.tensor([20, 2, 31])]
    expected = sampled_logprobs(data["teacher"][rank], data["teacher_head"], data["bias"], ids[rank], 2, 0.7)
    actual = vocab_parallel_sampled_logprobs(
        data["teacher"][rank], data["teacher_head"][rows], data["bias"][rows], ids[rank], rows, 2, 0.7
    )
    assert close(actual, expected, dtype), (f"sampled {dtype} rank {rank}", actual, expected)


def test_vocab_parallel_divergence_equals_the_unsharded_one_in_loss_and_gradients(tmp_path):
    # A file rendezvous: no port to race other processes for.
    mp.start_processes(_rank, args=(str(tmp_path / "store"),), nprocs=2, start_method="spawn")


def test_head_rows_must_match_the_slice():
    data = problem(torch.float32)
    with pytest.raises(ValueError, match="vocabulary slice"):
        vocab_parallel_divergence(
            data["student"][0],
            data["student_head"],
            None,
            data["teacher"][0],
            data["teacher_head"][:5],
            None,
            data["weights"][0],
            vocab_rows(37, 0, 2),
        )


def test_vocab_rows_partition_the_vocabulary():
    for vocab, world in [(37, 2), (10, 3), (151_646, 8)]:
        rows = [vocab_rows(vocab, rank, world) for rank in range(world)]
        assert rows[0].start == 0 and rows[-1].stop == vocab
        assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))
        assert max(r.stop - r.start for r in rows) - min(r.stop - r.start for r in rows) <= 1
