"""The learner: turns one step's rollouts and teacher signals into a weight update.

The local runtime holds one `LocalLearner` in its own process; the Ray runtime holds a group of
torch.distributed ranks behind the same `Learner` protocol. Both train on the same `LearnerBatch`,
so tasks, processors and losses do not know which runtime runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mmopd.completions import completion_cross_entropy
from mmopd.config import Config, TrainConfig
from mmopd.crash import crash_point
from mmopd.cross_objective import alignment_metrics, cross_tokenizer_loss
from mmopd.guard import nonfinite_reason
from mmopd.importance import importance_stats, truncated_importance_weights
from mmopd.losses import chunked_divergence, policy_gradient_loss, sampled_logprobs
from mmopd.models import ModelBundle, output_head
from mmopd.sample import Rollout, TeacherSignal
from mmopd.views import completion_hidden_states


@dataclass
class LearnerBatch:
    """One optimizer step's work: per micro-batch, the student's collated prompt, its rollouts and the
    teacher's signal for them. `supervised` counts the supervised tokens of the whole step, over every
    micro-batch and every rank: each micro-batch's loss is divided by it (contract 5). `teachers` names each
    micro-batch's teacher when several teachers share the step (routing); empty for one teacher."""

    prompts: list[dict[str, torch.Tensor]]
    rollouts: list[list[Rollout]]
    signals: list[TeacherSignal]
    supervised: int
    teachers: list[str] = field(default_factory=list)

    def teacher_names(self) -> list[str]:
        return self.teachers or [""] * len(self.prompts)


class Learner(Protocol):
    """Holds the student's trainable weights and optimizer; applies one update per step."""

    def update(self, lr: float, batch: LearnerBatch) -> dict[str, Any]:
        """Accumulate the batch's gradients, clip, step; the step's metrics (loss, kl, grad_norm, ...)."""
        ...

    def weights(self) -> dict[str, torch.Tensor]:
        """The student's full state dict, for the rollout engines to load after an update."""
        ...


class LocalLearner:
    """The student and its AdamW in this process (the local runtime, or a Ray run with one learner)."""

    def __init__(self, bundle: ModelBundle, config: Config):
        self.bundle, self.config = bundle, config
        self.optimizer = build_optimizer(bundle.model, config.train.lr, config.train)

    def update(self, lr: float, batch: LearnerBatch) -> dict[str, Any]:
        def accumulate() -> dict[str, Any]:
            return accumulate_gradients(self.bundle, batch, self.config)

        return optimizer_step(self.bundle.model, self.optimizer, accumulate, lr, self.config.train)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in self.bundle.model.state_dict().items()}


def build_optimizer(model: torch.nn.Module, peak_lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    # The fused kernel is one pass over each parameter (~6× faster on CPU than the per-op loop).
    fused = model.device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=cfg.weight_decay, fused=fused)


def accumulate_gradients(student: ModelBundle, batch: LearnerBatch, config: Config) -> dict[str, float]:
    """Backward of every micro-batch's share of the loss; the summed metrics of the step."""
    totals: dict[str, float] = {"loss": 0.0, "kl": 0.0}
    for prompt, rollouts, signal, teacher in zip(batch.prompts, batch.rollouts, batch.signals, batch.teacher_names()):
        loss, stats = student_loss(student, prompt, rollouts, signal, batch.supervised, config)
        loss.backward()
        add_stats(totals, {"loss": loss, **stats}, teacher)
    totals.update(alignment_metrics(batch.signals, totals))
    return totals


def add_stats(totals: dict[str, float], stats: dict[str, torch.Tensor], teacher: str) -> None:
    """Sum a micro-batch's stats into the step's; with a teacher name its kl also goes to `teacher/NAME/kl`
    (each share of the step's normaliser, so the per-teacher values add up to the step's kl)."""
    for key, value in stats.items():
        totals[key] = totals.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
    if teacher:
        name = f"teacher/{teacher}/kl"
        totals[name] = totals.get(name, 0.0) + float(stats["kl"])


def optimizer_step(model, optimizer, accumulate: Callable[[], dict[str, Any]], lr: float, cfg) -> dict[str, Any]:
    """Zero, accumulate gradients (the step function runs every backward), clip, update; the step's metrics."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(model, cfg.autocast):
        record = accumulate()
    crash_point("loss")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    reason = nonfinite_reason(record["loss"], float(grad_norm))
    if reason is not None:
        # No update: weights, AdamW moments and its step count stay as they were; the lr is a function of step.
        optimizer.zero_grad(set_to_none=True)
        return {**record, "lr": lr, "grad_norm": float(grad_norm), "skipped_update": 1, "nonfinite_reason": reason}
    optimizer.step()
    return {**record, "lr": lr, "grad_norm": float(grad_norm)}


def autocast(model: torch.nn.Module, dtype: str):
    """Forward passes in `dtype` on float32 weights (mixed precision); a no-op for "none"."""
    return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def student_loss(
    student: ModelBundle,
    prompt: dict[str, torch.Tensor],
    rollouts: list[Rollout],
    signal: TeacherSignal,
    supervised_tokens: int,
    config: Config,
    divergence_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] = chunked_divergence,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch's share of the loss, normalised by the whole step's supervised-token count. `divergence_fn`
    takes `chunked_divergence`'s arguments (the learner group passes its vocabulary-parallel form)."""
    if config.loss.kind == "cross_entropy":
        return completion_cross_entropy(student, prompt, rollouts, supervised_tokens, config.loss.chunk_size)
    if signal.cross is not None:
        return cross_tokenizer_loss(student, prompt, rollouts, signal, supervised_tokens, config)
    completions = [r.completion_ids for r in rollouts]
    hidden = completion_hidden_states(student, prompt, completions)  # (N, H)
    weights = torch.full((hidden.shape[0],), 1.0 / supervised_tokens, device=hidden.device)  # (N,)
    weight, bias = output_head(student)
    cfg, temperature = config.loss, config.rollout.temperature
    ids = torch.tensor([t for c in completions for t in c], dtype=torch.long, device=hidden.device)  # (N,)
    behaviour = torch.tensor([lp for r in rollouts for lp in r.behaviour_logprobs], device=hidden.device)  # (N,)
    weights, correction = off_policy_correction(hidden, weight, bias, ids, behaviour, weights, config)
    if cfg.kind == "divergence":
        loss, kl = divergence_fn(
            hidden,
            weight,
            bias,
            signal.hidden,
            signal.head_weight,
            signal.head_bias,
            weights,
            divergence=cfg.divergence,
            beta=cfg.beta,
            chunk_size=cfg.chunk_size,
            temperature=temperature,
        )
        return loss, {"kl": kl, **correction}
    student_logprobs = sampled_logprobs(hidden, weight, bias, ids, cfg.chunk_size, temperature)
    if signal.kind == "sampled":
        teacher_logprobs = signal.logprobs
    else:
        teacher_logprobs = sampled_logprobs(
            signal.hidden, signal.head_weight, signal.head_bias, ids, cfg.chunk_size, temperature
        ).detach()
    loss, stats = policy_gradient_loss(student_logprobs, teacher_logprobs, behaviour, weights, cfg.clip_ratio)
    return loss, {"kl": stats["reverse_kl"], "clip_fraction": stats["clip_fraction"] * weights.sum(), **correction}


def off_policy_correction(hidden, weight, bias, ids, behaviour, token_weights, config: Config):
    """Rollouts from an older policy (runtime ray, async_rollouts): the token weights times the truncated
    importance weights, and the step's IS metrics. Policy-gradient losses already divide by the behaviour
    probability, so for them the mismatch is only measured."""
    cap = config.ray.importance_cap if config.runtime == "ray" and config.ray.async_rollouts else 0.0
    if cap == 0:
        return token_weights, {}
    with torch.no_grad():
        learner_logprobs = sampled_logprobs(
            hidden, weight, bias, ids, config.loss.chunk_size, config.rollout.temperature
        )
    ratio, capped = truncated_importance_weights(learner_logprobs, behaviour, cap)
    if config.loss.kind != "divergence":
        return token_weights, importance_stats(token_weights, learner_logprobs, behaviour, capped & False)
    return token_weights * ratio, importance_stats(token_weights, learner_logprobs, behaviour, capped)
