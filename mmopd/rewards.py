"""Verifier rewards and GRPO's group-relative advantages, for RL with the task's verifier (pure or with a teacher).

Follows GRPO (Shao et al. 2024, DeepSeekMath): each prompt is sampled G times, a rollout's advantage is its
reward less its group's mean, divided by the group's std (`scale="none"` drops the division, as Dr. GRPO, Liu et
al. 2025, does). The advantage is a sequence's; the loss gives it to every token of the rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmopd.sample import Rollout, Sample

EPS = 1e-4  # TRL's GRPO epsilon: a group whose rewards are all equal gets advantage 0, not 0/0


def verifier_rewards(
    rollouts: Sequence[Rollout], tokenizer: Any, verify: Callable[[str, Sample], bool]
) -> torch.Tensor:
    """1.0 where the task's verifier accepts the rollout's decoded completion, else 0.0; (R,) fp32.
    Decoded as held-out evaluation decodes (special tokens dropped), so a reward is what eval would count."""
    verdicts = [
        float(bool(verify(tokenizer.decode(rollout.completion_ids, skip_special_tokens=True), rollout.sample)))
        for rollout in rollouts
    ]
    return torch.tensor(verdicts, dtype=torch.float32)  # (R,)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std") -> torch.Tensor:
    """(R,) rewards of consecutive groups of `group_size` rollouts of one sample → (R,) advantages, each group's
    summing to 0. `group_size` 1 makes the whole step one group (a batch-mean baseline, scaled by the batch std)."""
    if rewards.numel() == 0:  # every sample of the step was skipped
        return rewards
    groups = as_groups(rewards, group_size)  # (G, n)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale == "std" and groups.shape[1] > 1:
        # The unbiased std, as GRPO's reference code and TRL compute it.
        centred = centred / (groups.std(dim=1, keepdim=True) + EPS)
    return centred.reshape(-1)  # (R,)


def as_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(R,) → (G, n): one row per group; `group_size` 1 makes the whole step one group."""
    return rewards.view(1, -1) if group_size == 1 else rewards.view(-1, group_size)


def reward_metrics(rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """The step's mean reward and the fraction of groups whose rewards are all equal (zero advantage: no signal)."""
    if rewards.numel() == 0:
        return {"reward": 0.0, "zero_advantage_groups": 1.0}
    groups = as_groups(rewards, group_size)  # (G, n)
    flat = (groups == groups[:, :1]).all(dim=1)  # (G,)
    return {"reward": float(rewards.mean()), "zero_advantage_groups": float(flat.float().mean())}


def check_groups(rollouts: Sequence[Rollout], group_size: int) -> None:
    """Each run of `group_size` consecutive rollouts must come from one sample (a group is one prompt's samples)."""
    if len(rollouts) % group_size:
        raise ValueError(f"{len(rollouts)} rollouts do not split into groups of {group_size}")
    for start in range(0, len(rollouts), group_size):
        ids = {rollout.sample.id for rollout in rollouts[start : start + group_size]}
        if len(ids) > 1:
            raise ValueError(f"rollouts {start}..{start + group_size - 1} mix samples {sorted(ids)} in one group")


def step_advantages(
    rollouts: list[list[Rollout]], tokenizer: Any, verify: Callable[[str, Sample], bool], group_size: int, scale: str
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """The whole step's rewards (every micro-batch's, before any loss), turned into group-relative advantages and
    split back per micro-batch; and the step's reward metrics."""
    flat = [rollout for micro_batch in rollouts for rollout in micro_batch]
    check_groups(flat, group_size)
    rewards = verifier_rewards(flat, tokenizer, verify)  # (R,)
    advantages = group_advantages(rewards, group_size, scale)  # (R,)
    return list(advantages.split([len(micro_batch) for micro_batch in rollouts])), reward_metrics(rewards, group_size)
