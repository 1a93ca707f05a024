"""Reverse and forward KL from hidden states with the gradient made in the same pass (no recompute).

The checkpointed path in `losses.py` runs every vocabulary-sized matmul twice (forward, then again in
backward) and keeps several (n, V) temporaries alive. For the two KL directions the gradient with
respect to the student's logits has a closed form, so, as Liger's fused linear cross-entropy does,
each token chunk's logits are made once, in place, and turned straight into the gradients of the
student's hidden states, head weight and bias; backward only scales them. fp32 (fp64 inputs stay fp64) throughout, with
at most two (chunk, V) buffers alive. Teacher inputs get no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A chunk holds at most this many logits per (chunk, V) buffer (64 MiB in fp32), whatever chunk_size asks.
# Each chunk reads both heads and rewrites the (V, H) gradient, so much smaller chunks are slower; buffers
# above glibc's 32 MiB mmap threshold go back to the OS when freed instead of fragmenting the heap.
MAX_CHUNK_LOGITS = 2**24
# Suppressed ids carry a -inf bias; a finite floor keeps log p_S − log p_T at 0 there instead of NaN,
# while exp(floor) == 0 keeps their mass and gradient at zero (as `losses._floor` does).
_FLOOR = -1e30


def _log_softmax(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """log softmax((hidden @ weight.T + bias) / T) for one chunk (n, V)."""
    if bias is None:
        logits = hidden @ weight.T  # (n, V)
    else:
        logits = torch.addmm(bias, hidden, weight.T)  # (n, V)
    if temperature != 1.0:
        logits.div_(temperature)
    return torch.log_softmax(logits, dim=-1, out=logits)  # (n, V), in place: one buffer, not two


def _chunk(
    student: tuple[Tensor, Tensor, Tensor | None],
    teacher: tuple[Tensor, Tensor, Tensor | None],
    reverse: bool,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(divergence (n,), reverse KL (n,), d divergence / d student logits (n, V)) of one token chunk,
    with every (n, V) step in place: two such buffers at a time (three for forward KL)."""
    log_student = _log_softmax(*student, temperature)  # (n, V)
    log_teacher = _log_softmax(*teacher, temperature)  # (n, V)
    if reverse:
        terms = torch.sub(log_student, log_teacher, out=log_teacher)  # log p_S − log p_T
        p_student = log_student.exp_()
        terms.mul_(p_student)  # p_S (log p_S − log p_T)
        kl = terms.sum(-1)  # (n,)
        # d KL(p_S || p_T) / d z_S = p_S ⊙ (log p_S − log p_T − KL)
        return kl, kl, terms.addcmul_(p_student, kl[:, None], value=-1.0)
    p_teacher = log_teacher.exp()  # (n, V)
    gap = log_teacher.sub_(log_student)  # log p_T − log p_S
    p_student = log_student.exp_()
    forward = (p_teacher * gap).sum(-1)
    reverse_kl = -(p_student * gap).sum(-1)
    # d KL(p_T || p_S) / d z_S = p_S − p_T
    return forward, reverse_kl, p_student.sub_(p_teacher)


class FusedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, weights, reverse, temperature, chunk):
        needs = ctx.needs_input_grad
        with torch.autocast(s_hidden.device.type, enabled=False), torch.no_grad():
            f32 = torch.promote_types(s_hidden.dtype, torch.float32)  # fp32, or fp64 inputs kept
            s_weight32, t_weight32 = s_weight.to(f32), t_weight.to(f32)
            s_bias32 = None if s_bias is None else s_bias.to(f32).clamp_min(_FLOOR)
            t_bias32 = None if t_bias is None else t_bias.to(f32).clamp_min(_FLOOR)
            grad_hidden = torch.zeros(s_hidden.shape, dtype=f32, device=s_hidden.device) if needs[0] else None
            grad_weight = torch.zeros(s_weight.shape, dtype=f32, device=s_weight.device) if needs[1] else None
            grad_bias = torch.zeros(s_weight.shape[0], dtype=f32, device=s_weight.device) if needs[2] else None
            loss = torch.zeros((), dtype=f32, device=s_hidden.device)
            reverse_kl_sum = torch.zeros((), dtype=f32, device=s_hidden.device)
            for start in range(0, s_hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                hidden = s_hidden[rows].to(f32)  # (n, H_s)
                scale = weights[rows].to(f32)  # (n,)
                per_token, reverse_kl, grad_logits = _chunk(
                    (hidden, s_weight32, s_bias32), (t_hidden[rows].to(f32), t_weight32, t_bias32), reverse, temperature
                )
                loss += scale @ per_token
                reverse_kl_sum += scale @ reverse_kl
                # The token weights and 1/T scale the small (n, H) factors, not the (n, V) gradient.
                scale = (scale / temperature)[:, None]  # (n, 1)
                if grad_hidden is not None:
                    grad_hidden[rows] = (grad_logits @ s_weight32).mul_(scale)
                if grad_weight is not None:
                    grad_weight.addmm_(grad_logits.T, hidden * scale)
                if grad_bias is not None:
                    grad_bias += (scale.T @ grad_logits).view(-1)
        save_gradients(ctx, (grad_hidden, grad_weight, grad_bias), (s_hidden, s_weight, s_bias), reverse_kl_sum)
        return loss, reverse_kl_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_reverse_kl):
        return saved_gradients(ctx, grad_loss, inputs=10)


def save_gradients(ctx, grads: tuple, inputs: tuple, logged: Tensor) -> None:
    """Keep gradients made in the forward pass for `saved_gradients`, with the dtypes of the `inputs` they belong
    to; `logged` (a detached statistic among the outputs) gets none."""
    ctx.save_for_backward(*grads)
    ctx.dtypes = tuple(None if tensor is None else tensor.dtype for tensor in inputs)
    ctx.mark_non_differentiable(logged)


def saved_gradients(ctx, grad_loss: Tensor, inputs: int) -> tuple:
    """Backward of a loss whose forward saved its inputs' gradients (and `ctx.dtypes`): them times the incoming
    gradient, each in its input's dtype, then None for the remaining of the `inputs` inputs."""
    grads = [
        None if grad is None else (grad * grad_loss).to(dtype) for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes)
    ]
    return (*grads, *[None] * (inputs - len(grads)))


def fused_kl(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    student_head_bias: Tensor | None,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    teacher_head_bias: Tensor | None,
    weights: Tensor,
    reverse: bool = True,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Σ_i weights_i · KL_i (reverse: KL(p_S || p_T), else KL(p_T || p_S)) and Σ_i weights_i · KL(p_S || p_T)_i,
    the second detached; the arguments and results of `losses.chunked_divergence`."""
    return FusedKL.apply(
        student_hidden,
        student_head_weight,
        student_head_bias,
        teacher_hidden.detach(),
        teacher_head_weight.detach(),
        None if teacher_head_bias is None else teacher_head_bias.detach(),
        weights.detach(),
        reverse,
        temperature,
        max(1, min(chunk_size, MAX_CHUNK_LOGITS // max(student_head_weight.shape[0], 1))),
    )
