"""Verifier rewards, GRPO groups and the KDRL advantage: rewards are the verifier's verdicts, group advantages are
centred, the combined loss is linear in its two terms, reward_weight 0 is the old policy gradient bit for bit, and a
teacher-free run builds no teacher and still learns."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import torch

import mmopd.build
from mmopd.build import build_parts
from mmopd.config import ConfigError, load_config
from mmopd.learner import build_optimizer, optimizer_step, student_loss
from mmopd.losses import policy_gradient_loss
from mmopd.metrics import read_metrics
from mmopd.rewards import check_groups, group_advantages, reward_metrics, verifier_rewards
from mmopd.sample import Rollout
from mmopd.tasks.shapes import ShapesTask
from mmopd.trainer import grouped_batch_of, opd_step, render_batch, train
from mmopd.views import collate

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"


def config_of(*overrides: str):
    return load_config(DEBUG, ["eval.num_samples=8", "loss.kind=policy_gradient", *overrides])


def rollout_of(sample, ids) -> Rollout:
    return Rollout(sample, list(ids), [0.0] * len(ids), [], b"", "stop")


def test_rewards_are_the_verifiers_verdicts_on_the_decoded_completion(task, tokenizer):
    samples = [task.train_samples()[i] for i in range(6)]
    eos = tokenizer.eos_token_id
    texts = [s.answer if i % 2 == 0 else "nothing" for i, s in enumerate(samples)]
    # The end-of-turn token is decoded away, as evaluation decodes.
    rollouts = [rollout_of(s, tokenizer.encode(t, add_special_tokens=False) + [eos]) for s, t in zip(samples, texts)]
    rewards = verifier_rewards(rollouts, tokenizer, task.verify)
    expected = [float(task.verify(t, s)) for s, t in zip(samples, texts)]
    assert rewards.tolist() == expected == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_group_advantages_are_centred_per_group_and_zero_for_equal_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    for scale in ("std", "none"):
        advantages = group_advantages(rewards, 4, scale).view(3, 4)
        torch.testing.assert_close(advantages.sum(1), torch.zeros(3), atol=1e-6, rtol=0)
        assert advantages[1].eq(0).all()  # all-equal rewards: no signal, no 0/0
    scaled = group_advantages(rewards, 4, "std").view(3, 4)
    torch.testing.assert_close(scaled[0].std(), torch.tensor(1.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(group_advantages(rewards, 4, "none")[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # group_size 1: the whole step is the baseline's group.
    torch.testing.assert_close(group_advantages(rewards, 1, "none"), rewards - rewards.mean())
    assert reward_metrics(rewards, 4) == {
        "reward": pytest.approx(7 / 12),
        "zero_advantage_groups": pytest.approx(1 / 3),
    }


def test_groups_of_a_step_are_one_sample_each_and_a_pure_function_of_the_step(task):
    batch = grouped_batch_of(task.train_samples(), 3, 12, 0, 4)
    assert [s.id for s in batch] == [s.id for s in grouped_batch_of(task.train_samples(), 3, 12, 0, 4)]
    groups = [batch[i : i + 4] for i in range(0, 12, 4)]
    assert all(len({s.id for s in group}) == 1 for group in groups)
    assert len({group[0].id for group in groups}) == 3
    mixed = [rollout_of(s, [1]) for s in (batch[0], batch[0], batch[4], batch[4])]
    check_groups(mixed, 2)
    with pytest.raises(ValueError, match="mix samples"):
        check_groups(mixed[1:] + mixed[:1], 2)


def old_policy_gradient_loss(student_logprobs, teacher_logprobs, behaviour_logprobs, weights, clip_ratio=0.2):
    """The policy-gradient loss as it was before verifier rewards (commit a4bcf6d), for the bit-identity check."""
    advantage = (teacher_logprobs.detach() - student_logprobs).detach()
    ratio = torch.exp(student_logprobs - behaviour_logprobs.detach())
    clipped = ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio) * advantage
    return -(weights * torch.minimum(ratio * advantage, clipped)).sum()


def test_reward_weight_zero_is_the_old_policy_gradient_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(64, generator=generator).requires_grad_()
    teacher, behaviour = torch.randn(64, generator=generator), torch.randn(64, generator=generator) * 0.3
    behaviour = student.detach() + behaviour  # ratios far from 1: clipping is active
    weights = torch.rand(64, generator=generator) / 64
    old = old_policy_gradient_loss(student, teacher, behaviour, weights)
    (old_grad,) = torch.autograd.grad(old, student)
    advantages = torch.randn(64, generator=generator)
    new, _ = policy_gradient_loss(student, teacher, behaviour, weights, 0.2, advantages, 1.0, 0.0)
    (new_grad,) = torch.autograd.grad(new, student)
    assert torch.equal(old, new) and torch.equal(old_grad, new_grad)


def test_a_rewarded_token_is_pushed_up_and_an_unrewarded_one_down_without_a_teacher():
    student = torch.tensor([-1.0, -2.0, -0.5, -1.5], requires_grad=True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, stats = policy_gradient_loss(
        student, None, student.detach(), torch.full((4,), 0.25), 0.2, advantages, 0.0, 1.0
    )
    (grad,) = torch.autograd.grad(loss, student)
    assert (grad[:2] < 0).all() and (grad[2:] > 0).all() and "reverse_kl" not in stats


@pytest.fixture(scope="module")
def scored_batch(tmp_path_factory):
    """A tiny student's on-policy rollouts of 4 samples, the teacher's signal for them, and random advantages."""
    config = config_of()
    parts = build_parts(config, tmp_path_factory.mktemp("kdrl"))
    samples = [parts.task.train_samples()[i] for i in range(4)]
    rendered, _ = render_batch(parts, samples, "raise")
    prompt = collate([r.student for r in rendered], parts.student)
    torch.manual_seed(0)
    rollouts = parts.engine.generate(prompt, samples)
    signal = parts.teacher.score([r.teacher for r in rendered], [r.completion_ids for r in rollouts])
    advantages = torch.tensor([1.5, -0.5, -1.0, 0.25])
    return parts, prompt, rollouts, signal, advantages


def gradient_of(scored_batch, teacher_weight: float, reward_weight: float) -> list[torch.Tensor]:
    parts, prompt, rollouts, signal, advantages = scored_batch
    config = config_of(f"loss.teacher_weight={teacher_weight}", f"loss.reward_weight={reward_weight}")
    model = parts.student.model
    model.zero_grad()
    total = sum(len(r.completion_ids) for r in rollouts)
    loss, _ = student_loss(parts.student, prompt, rollouts, signal, total, config, advantages=advantages)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_kdrl_gradient_is_the_teacher_part_plus_the_reward_part(scored_batch):
    # On-policy (behaviour = the student's own sampling logprobs) no ratio leaves the clip range: the loss is
    # linear in the advantage, so the KDRL gradient is the sum of its two parts.
    both = gradient_of(scored_batch, 0.5, 2.0)
    teacher_part = gradient_of(scored_batch, 0.5, 0.0)
    reward_part = gradient_of(scored_batch, 0.0, 2.0)
    assert max(float(g.abs().max()) for g in reward_part) > 1e-4  # the reward part is not vacuous
    for total, a, b in zip(both, teacher_part, reward_part):
        torch.testing.assert_close(total, a + b, atol=1e-6, rtol=1e-5)


@dataclass(frozen=True)
class EvenLengthShapes:
    """The shapes task with a verifier a random-init student can satisfy (a completion of even length is right),
    so that its rewards vary within groups."""

    name = "even_length_shapes"
    shapes: ShapesTask = field(default_factory=lambda: ShapesTask(num_eval=8))

    def train_samples(self):
        return self.shapes.train_samples()

    def eval_samples(self):
        return self.shapes.eval_samples()

    def corpus(self):
        return self.shapes.corpus()

    def verify(self, completion: str, sample) -> bool:
        return len(completion) % 2 == 0


def test_teacher_kind_none_builds_no_teacher_and_learns_from_the_verifier(tmp_path, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher model was built")

    monkeypatch.setattr(mmopd.build, "build_teacher_model", no_teacher)
    overrides = ("teacher.kind=none", "loss.teacher_weight=0", "loss.reward_weight=1", "rollout.group_size=4")
    config = config_of(*overrides)
    parts = build_parts(config, tmp_path)
    assert parts.teacher is None
    parts.task = EvenLengthShapes()
    model = parts.student.model
    optimizer = build_optimizer(model, 1e-3, config.train)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    samples = grouped_batch_of(parts.task.train_samples(), 1, 8, 0, 4)
    record = optimizer_step(model, optimizer, partial(opd_step, parts, samples, config), 1e-3, config.train)
    assert "kl" not in record and 0 < record["reward"] < 1 and record["zero_advantage_groups"] < 1
    assert record["student_generated_tokens"] > 0 and record["grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["teacher.kind=none"], "teacher.kind=none has no teacher"),
        (["teacher.kind=none", "loss.teacher_weight=0"], "nothing to learn from"),
        (["loss.teacher_weight=0"], "both 0"),
        (["rollout.group_size=3"], "multiple of rollout.group_size"),
        (["loss.kind=divergence", "loss.reward_weight=1"], "set loss.kind=policy_gradient"),
        (["loss.reward_weight=1", "runtime=ray"], "runtime local"),
    ],
)
def test_reward_configs_that_cannot_run_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_of(*overrides)


def test_the_loop_samples_each_group_in_one_step(tmp_path):
    # step_advantages refuses a group whose rollouts mix samples, so a loop that ignored group_size would raise.
    overrides = ("loss.reward_weight=1", "rollout.group_size=4", "train.steps=1", "train.eval_every=0")
    train(config_of(*overrides), tmp_path / "run")
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert record["step"] == 1 and 0 <= record["zero_advantage_groups"] <= 1 and "kl" in record
    assert record["student_generated_tokens"] == pytest.approx(record["completion_tokens"] * 8)
