"""Completion sources: GKD's λ draw, answers and teacher samples as rollouts, and the cross-entropy loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmopd.align import byte_table
from mmopd.build import build_parts
from mmopd.completions import TEACHER_SEED_OFFSET, answer_ids, build_teacher_sampler, on_policy_draws, step_sources
from mmopd.config import ConfigError, load_config
from mmopd.metrics import read_metrics
from mmopd.sampling import micro_batch_seed
from mmopd.sft import sft_step
from mmopd.trainer import batch_of, opd_step, render_batch, train
from mmopd.views import collate, student_messages

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"
STEP_KEYS = ("loss", "kl", "completion_tokens", "stop_fraction", "teacher_bytes_per_token")


def debug_config(*overrides: str):
    return load_config(DEBUG, ["eval.num_samples=8", "train.eval_every=0", *overrides])


def one_step(tmp_path: Path, *overrides: str) -> tuple[dict, list[torch.Tensor]]:
    """The first step's record (after the loop's reseed) of a fresh debug run, and its gradients."""
    config = debug_config(*overrides)
    parts = build_parts(config, tmp_path)
    samples = batch_of(parts.task.train_samples(), 1, config.train.batch_size, config.train.seed)
    torch.manual_seed(config.train.seed * 1_000_003 + 1)
    parts.student.model.zero_grad()
    record = opd_step(parts, samples, config, step=1)
    return record, [p.grad.clone() for p in parts.student.model.parameters() if p.grad is not None]


def test_on_policy_draws_are_a_pure_function_of_seed_step_and_position():
    draws = on_policy_draws(3, 7, 64, 0.4)
    assert draws == on_policy_draws(3, 7, 64, 0.4)
    assert on_policy_draws(3, 7, 16, 0.4) == draws[:16]  # a position's draw does not depend on the batch size
    assert draws != on_policy_draws(3, 8, 64, 0.4) and draws != on_policy_draws(4, 7, 64, 0.4)
    assert on_policy_draws(3, 7, 8, 1.0) == [True] * 8 and on_policy_draws(3, 7, 8, 0.0) == [False] * 8
    many = [d for step in range(1, 101) for d in on_policy_draws(0, step, 40, 0.3)]
    assert sum(many) / len(many) == pytest.approx(0.3, abs=0.03)


def test_lambda_one_is_the_on_policy_loop(tmp_path):
    """λ = 1 takes the student's own samples only: identical metrics to the default config, even with the teacher
    named as the off-policy source (which must then never sample, nor move any RNG stream)."""
    default, default_grads = one_step(tmp_path / "a")
    explicit, explicit_grads = one_step(
        tmp_path / "b", "rollout.on_policy_fraction=1.0", "rollout.off_policy_source=teacher"
    )
    assert {k: default[k] for k in STEP_KEYS} == {k: explicit[k] for k in STEP_KEYS}
    assert explicit["on_policy_fraction"] == 1.0 and explicit["teacher_generated_tokens"] == 0
    assert explicit["student_generated_tokens"] == default["completion_tokens"] * 8
    for a, b in zip(default_grads, explicit_grads, strict=True):
        assert torch.equal(a, b)


def test_cross_entropy_on_answers_is_sft_on_them_and_runs_no_teacher(tmp_path):
    """λ = 0 with answers trains on exactly `answer_ids`, and loss.kind=cross_entropy there is sft_step's loss and
    gradient on the same batch (accumulated over two micro-batches against sft_step's one)."""
    config_overrides = ("rollout.on_policy_fraction=0", "loss.kind=cross_entropy")
    config = debug_config(*config_overrides)
    parts = build_parts(config, tmp_path)
    samples = batch_of(parts.task.train_samples(), 1, config.train.batch_size, config.train.seed)
    rendered, _ = render_batch(parts, samples, "raise")
    sources = step_sources(parts, samples, rendered, 1, 0, config)
    for item, rollout in zip(rendered, sources.fixed):
        sample = item.student.sample
        assert rollout.completion_ids == answer_ids(parts.student, sample.answer) and rollout.source == "answers"
        assert rollout.completion_bytes == sample.answer.encode() and rollout.finish_reason == "stop"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the cross-entropy loss must not score with the teacher")

    parts.teacher.score = no_teacher
    parts.student.model.zero_grad()
    record = opd_step(parts, samples, config, step=1)
    opd_grads = [p.grad.clone() for p in parts.student.model.parameters() if p.grad is not None]
    parts.student.model.zero_grad()
    sft_record, _ = sft_step(parts.student, samples, student_messages, parts.processors, config)
    sft_grads = [p.grad.clone() for p in parts.student.model.parameters() if p.grad is not None]
    assert record["loss"] == pytest.approx(sft_record["loss"], rel=1e-5) and record["loss"] > 0
    assert record["on_policy_fraction"] == 0.0 and record["student_generated_tokens"] == 0
    for a, b in zip(opd_grads, sft_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("tokenizer", ["student", "bpe:300"])
def test_teacher_completions_are_its_sampled_bytes_and_are_scored(tmp_path, tokenizer):
    config = debug_config(
        "rollout.on_policy_fraction=0",
        "rollout.off_policy_source=teacher",
        f"teacher.tokenizer={tokenizer}",
        "train.batch_size=4",
        "train.micro_batch_size=4",
    )
    parts = build_parts(config, tmp_path)
    samples = batch_of(parts.task.train_samples(), 1, 4, 0)
    rendered, _ = render_batch(parts, samples, "raise")
    sources = step_sources(parts, samples, rendered, 1, 5, config)
    # The same draw again, straight from the teacher's model on its own view.
    sampler = build_teacher_sampler(config, parts.teacher, parts.student)
    torch.manual_seed(micro_batch_seed(5, TEACHER_SEED_OFFSET))
    teacher_prompt = collate([r.teacher for r in rendered], sampler.engine.bundle)
    drawn = sampler.engine.generate(teacher_prompt, samples)
    assert sources.teacher_tokens == sum(len(r.completion_ids) for r in drawn) > 0
    student_table = byte_table(parts.student.tokenizer)
    for rollout, teacher_rollout in zip(sources.fixed, drawn, strict=True):
        assert rollout.source == "teacher" and rollout.completion_bytes == teacher_rollout.completion_bytes
        assert student_table.join(rollout.completion_ids) == rollout.completion_bytes
        assert rollout.finish_reason == teacher_rollout.finish_reason
        if tokenizer == "student":
            assert rollout.completion_ids == teacher_rollout.completion_ids
    signal = parts.teacher.score(
        [r.teacher for r in rendered], [r.completion_ids for r in sources.fixed], sources.fixed
    )
    if tokenizer == "student":
        assert signal.hidden.shape[0] == sum(len(r.completion_ids) for r in sources.fixed)
    else:
        assert all(signal.cross.kept) and signal.hidden.shape[0] == signal.cross.teacher_ids.numel()


def test_a_mixed_run_resumes_exactly(tmp_path):
    config = debug_config(
        "train.steps=3", "train.checkpoint_every=1", "rollout.on_policy_fraction=0.5", "loss.divergence=jsd"
    )
    train(config, tmp_path / "straight")
    train(config, tmp_path / "interrupted", stop_after=2)
    train(config, tmp_path / "interrupted", resume=True)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "interrupted" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [0, 1, 2, 3]
    assert 0 < sum(r["on_policy_fraction"] for r in straight[1:]) < 3  # both sources were drawn
    for a, b in zip(straight, resumed):
        for key in ("loss", "kl", "grad_norm", "accuracy", "on_policy_fraction", "student_generated_tokens"):
            assert a.get(key) == b.get(key), (a["step"], key)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.on_policy_fraction=1.5"], r"in \[0, 1\]"),
        (["rollout.off_policy_source=dataset"], "answers or teacher"),
        (["runtime=ray", "rollout.on_policy_fraction=0.5"], "runtime local"),
        (["loss.kind=cross_entropy"], "own samples"),
        (["loss.kind=policy_gradient", "rollout.on_policy_fraction=0.5"], "logprobs"),
        (
            [
                "teacher.kind=self",
                "teacher.self_weights=frozen",
                "rollout.on_policy_fraction=0",
                "rollout.off_policy_source=teacher",
            ],
            "live",
        ),
    ],
)
def test_bad_completion_source_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEBUG, overrides)


def test_cross_entropy_accepts_a_sampled_signal_teacher():
    config = load_config(DEBUG, ["loss.kind=cross_entropy", "rollout.on_policy_fraction=0", "teacher.signal=sampled"])
    assert config.loss.kind == "cross_entropy"
