"""Vocabulary-parallel divergence: each learner rank holds only its slice of the teacher's output head rows.

Megatron-LM's vocab-parallel cross-entropy (Shoeybi et al. 2019), generalised to every divergence that is a sum
over vocabulary ids of per-id terms (all of `losses.py`'s): the step's hidden states are gathered over ranks, each
rank makes logits for its vocabulary rows only, and the log-partition functions, per-token sums and token
gradients are combined by collectives. Unlike Megatron only the teacher's head is split (the student's is whole
on every rank; DDP / FSDP2 sum its gradient), and, as in `fused_kl`, the gradient is made in the forward pass.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from mmopd.fused_kl import save_gradients, saved_gradients
from mmopd.losses import LOSSES, reverse_kl

# Suppressed ids carry a -inf bias; a finite floor keeps differences of log-probabilities finite (as in fused_kl).
_FLOOR = -1e30


def vocab_rows(vocab: int, rank: int, world_size: int) -> slice:
    """The contiguous vocabulary rows rank `rank` holds: sizes differ by at most one."""
    return slice(vocab * rank // world_size, vocab * (rank + 1) // world_size)


def _counts(rows: int, device: torch.device, group) -> list[int]:
    mine = torch.tensor([rows], dtype=torch.long, device=device)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, mine, group=group)
    return [int(count) for count in counts]


def _gather_rows(tensor: Tensor, counts: list[int], group) -> Tensor:
    """Every rank's rows, in rank order (ranks may hold different numbers of rows)."""
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))  # (max n_r, ...)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])  # (N, ...)


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    logits = hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)  # (n, V_r)
    return logits / temperature


class VocabParallelDivergence(torch.autograd.Function):
    """Σ_i weights_i · divergence_i over this rank's tokens, every rank holding teacher head rows `rows` only.

    Collective: every rank of `group` calls it at the same point. The gradient of the student head (rows of this
    rank's slice, from all ranks' tokens) must be summed over ranks afterwards (DDP / FSDP2 with a sum reduction);
    the backward's incoming gradient must be the same on every rank (scale `weights`, not the loss).
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, weights, rows, options, group):
        divergence_fn, beta, temperature, chunk = options
        with torch.autocast(s_hidden.device.type, enabled=False), torch.no_grad():
            f32 = torch.promote_types(s_hidden.dtype, torch.float32)
            counts = _counts(s_hidden.shape[0], s_hidden.device, group)
            rank = dist.get_rank(group)
            mine = slice(sum(counts[:rank]), sum(counts[: rank + 1]))
            hidden = _gather_rows(s_hidden.detach().to(f32), counts, group)  # (N, H_s)
            teacher = _gather_rows(t_hidden.detach().to(f32), counts, group)  # (N, H_t)
            scale = _gather_rows(weights.detach().to(f32), counts, group)  # (N,)
            student_head = (s_weight[rows].to(f32), None if s_bias is None else s_bias[rows].to(f32).clamp_min(_FLOOR))
            teacher_head = (t_weight.to(f32), None if t_bias is None else t_bias.to(f32).clamp_min(_FLOOR))
            chunks = [slice(start, start + chunk) for start in range(0, hidden.shape[0], chunk)]
            log_partition = _log_partition(hidden, teacher, student_head, teacher_head, temperature, chunks, group)
            per_token = torch.zeros(hidden.shape[0], dtype=f32, device=hidden.device)  # (N,)
            reverse = torch.zeros_like(per_token)  # (N,)
            grad_hidden = torch.zeros_like(hidden)  # (N, H_s)
            grad_weight = torch.zeros(s_weight.shape, dtype=f32, device=s_weight.device)  # (V, H_s)
            grad_bias = torch.zeros(s_weight.shape[0], dtype=f32, device=s_weight.device)  # (V,)
            for part in chunks:
                log_student = _logits(hidden[part], *student_head, temperature) - log_partition[0, part, None]
                log_teacher = _logits(teacher[part], *teacher_head, temperature) - log_partition[1, part, None]
                with torch.enable_grad():
                    leaf = log_student.requires_grad_()
                    terms = divergence_fn(leaf, log_teacher, beta)  # (n,) this slice's share
                    (grad_log,) = torch.autograd.grad((scale[part] * terms).sum(), leaf)  # (n, V_r)
                sums = torch.stack([terms.detach(), reverse_kl(log_student, log_teacher), grad_log.sum(-1)])  # (3, n)
                dist.all_reduce(sums, group=group)
                per_token[part], reverse[part] = sums[0], sums[1]
                # Through log_softmax: d/dz_v = d/dlog p_v − p_v Σ_u d/dlog p_u, the sum over the whole vocabulary.
                grad_logits = (grad_log - log_student.exp() * sums[2, :, None]) / temperature  # (n, V_r)
                grad_hidden[part] = grad_logits @ student_head[0]
                grad_weight[rows] += grad_logits.T @ hidden[part]
                grad_bias[rows] += grad_logits.sum(0)
            dist.all_reduce(grad_hidden, group=group)
            loss = scale[mine] @ per_token[mine]
            reverse_kl_sum = scale[mine] @ reverse[mine]
        needs = ctx.needs_input_grad
        grads = (
            grad_hidden[mine] if needs[0] else None,
            grad_weight if needs[1] else None,
            grad_bias if needs[2] and s_bias is not None else None,
        )
        save_gradients(ctx, grads, (s_hidden, s_weight, s_bias), reverse_kl_sum)
        return loss, reverse_kl_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_reverse_kl):
        return saved_gradients(ctx, grad_loss, inputs=10)


def _log_partition(hidden, teacher, student_head, teacher_head, temperature, chunks, group) -> Tensor:
    """(2, N) log Σ_v exp(logit_v) over the whole vocabulary, student then teacher, from every rank's slice."""
    local = torch.empty((2, hidden.shape[0]), dtype=hidden.dtype, device=hidden.device)  # (2, N)
    for part in chunks:
        local[0, part] = torch.logsumexp(_logits(hidden[part], *student_head, temperature), dim=-1)
        local[1, part] = torch.logsumexp(_logits(teacher[part], *teacher_head, temperature), dim=-1)
    slices = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(slices, local, group=group)
    return torch.logsumexp(torch.stack(slices), dim=0)  # (2, N)


@torch.no_grad()
def vocab_parallel_sampled_logprobs(
    hidden: Tensor,
    head_rows: Tensor,
    bias_rows: Tensor | None,
    token_ids: Tensor,
    rows: slice,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    group=None,
) -> Tensor:
    """`losses.sampled_logprobs` (detached) of this rank's N_r tokens when it holds only the head's vocabulary `rows`:
    log p(token_ids_i | hidden_i) (N_r,), fp32. Collective, like `vocab_parallel_divergence`."""
    with torch.autocast(hidden.device.type, enabled=False):
        f32 = torch.promote_types(hidden.dtype, torch.float32)
        counts = _counts(hidden.shape[0], hidden.device, group)
        rank = dist.get_rank(group)
        mine = slice(sum(counts[:rank]), sum(counts[: rank + 1]))
        everyone = _gather_rows(hidden.to(f32), counts, group)  # (N, H)
        ids = _gather_rows(token_ids, counts, group)  # (N,)
        head = (head_rows.to(f32), None if bias_rows is None else bias_rows.to(f32).clamp_min(_FLOOR))
        local = torch.full((2, everyone.shape[0]), float("-inf"), dtype=f32, device=hidden.device)  # (2, N)
        here = (ids >= rows.start) & (ids < rows.stop)  # (N,) the sampled id is one of this rank's rows
        for start in range(0, everyone.shape[0], max(1, chunk_size)):
            part = slice(start, start + chunk_size)
            logits = _logits(everyone[part], *head, temperature)  # (n, V_r)
            local[0, part] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, (ids[part] - rows.start).clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            local[1, part] = torch.where(here[part], picked, float("-inf"))
        slices = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(slices, local, group=group)
        combined = torch.logsumexp(torch.stack(slices), dim=0)  # (2, N): log Z, and the one finite sampled logit
        return (combined[1] - combined[0])[mine]


def vocab_parallel_divergence(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_rows: Tensor,
    teacher_bias_rows: Tensor | None,
    weights: Tensor,
    rows: slice,
    divergence: str = "reverse_kl",
    beta: float = 0.5,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    group=None,
) -> tuple[Tensor, Tensor]:
    """`losses.chunked_divergence` over this rank's N_r tokens when this rank holds only the teacher head's
    vocabulary `rows` (V_r, H_t) (and bias (V_r,)): (Σ weights · divergence, Σ weights · reverse KL (detached))."""
    if teacher_head_rows.shape[0] != rows.stop - rows.start:
        raise ValueError(f"teacher head rows {teacher_head_rows.shape[0]} != vocabulary slice {rows}")
    if teacher_hidden.shape[0] != student_hidden.shape[0] or weights.shape != student_hidden.shape[:1]:
        raise ValueError(
            f"token counts differ: student {student_hidden.shape[0]}, teacher {teacher_hidden.shape[0]}, "
            f"weights {tuple(weights.shape)}"
        )
    options = (LOSSES.get(divergence), beta, temperature, max(1, chunk_size))
    return VocabParallelDivergence.apply(
        student_hidden,
        student_head_weight,
        student_head_bias,
        teacher_hidden,
        teacher_head_rows,
        teacher_bias_rows,
        weights,
        rows,
        options,
        group,
    )
