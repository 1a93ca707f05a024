"""The cross-tokenizer objective on tiny models: identical tokenizers reproduce the same-tokenizer loss and
gradients; a different tokenizer trains end to end in both teacher views; a misaligned rollout leaves the loss."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mmopd.align import byte_table
from mmopd.build import build_parts
from mmopd.config import ModelConfig, load_config
from mmopd.cross_teacher import CrossTokenizerTeacher
from mmopd.metrics import read_metrics
from mmopd.models import build_tiny, output_head, train_bpe_tokenizer
from mmopd.rollout import HFEngine
from mmopd.teacher import ModelTeacher
from mmopd.trainer import opd_step, student_loss, train
from mmopd.views import collate, prepare, student_messages

DEBUG = Path(__file__).resolve().parents[1] / "configs" / "debug.yaml"
TINY = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
CROSS_METRICS = ("one_to_one_ratio", "byte_coverage", "student_shared_mass", "teacher_shared_mass")


def debug_config(*overrides: str):
    return load_config(DEBUG, ["eval.num_samples=8", *overrides])


def batch(student, task, processors, count=6, seed=0):
    samples = [task.train_samples()[i] for i in range(count)]
    prompt = collate([prepare(s, student_messages(s), student, processors) for s in samples], student)
    torch.manual_seed(seed)
    rollouts = HFEngine(student, max_new_tokens=6).generate(prompt, samples)
    # A sampled EOS mid-way through, so the end-of-turn chunk is covered too.
    ids = [*rollouts[0].completion_ids[:2], student.tokenizer.eos_token_id]
    completion_bytes, spans = byte_table(student.tokenizer).spans(ids)
    rollouts[0] = dataclasses.replace(
        rollouts[0],
        completion_ids=ids,
        behaviour_logprobs=rollouts[0].behaviour_logprobs[:3],
        byte_spans=spans,
        completion_bytes=completion_bytes,
        finish_reason="stop",
    )
    return samples, prompt, rollouts


def loss_and_grads(student, prompt, rollouts, signal, supervised, config):
    student.model.zero_grad(set_to_none=True)
    loss, stats = student_loss(student, prompt, rollouts, signal, supervised, config)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None}
    return loss.detach(), stats, grads


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss.kind=divergence", "loss.divergence=reverse_kl"),
        ("loss.kind=divergence", "loss.divergence=jsd", "loss.beta=0.3"),
        ("loss.kind=divergence", "loss.divergence=reverse_kl", "loss.cross_tokenizer=shared_bytes"),
        ("loss.kind=policy_gradient",),
        ("loss.kind=policy_gradient", "teacher.signal=sampled"),
    ],
)
def test_identical_tokenizers_give_the_same_loss_and_gradients(task, student, text_teacher, processors, overrides):
    config = debug_config(*overrides)
    samples, prompt, rollouts = batch(student, task, processors)
    completions = [r.completion_ids for r in rollouts]
    supervised = sum(len(c) for c in completions)
    same = ModelTeacher(text_teacher, "text", processors, signal=config.teacher.signal)
    cross = CrossTokenizerTeacher(same, text_teacher.tokenizer, student.tokenizer)
    prepared = [same.prepare(s) for s in samples]
    student.model.train()
    loss, stats, grads = loss_and_grads(
        student, prompt, rollouts, same.score(prepared, completions), supervised, config
    )
    cross_signal = cross.score(prepared, completions, rollouts)
    assert bool(cross_signal.cross.alignment.one_to_one.all())
    cross_loss, cross_stats, cross_grads = loss_and_grads(student, prompt, rollouts, cross_signal, supervised, config)
    assert abs(float(cross_loss) - float(loss)) < 1e-6
    if config.loss.kind == "policy_gradient":  # a divergence run logs the sampled-path KL, not the full one
        assert abs(float(cross_stats["kl"]) - float(stats["kl"])) < 1e-6
    assert grads.keys() == cross_grads.keys() and grads
    for name, grad in grads.items():
        assert torch.allclose(cross_grads[name], grad, atol=1e-6, rtol=0), name


@pytest.mark.parametrize("tier", ["shared", "shared_bytes", "alm", "uld", "gold"])
def test_a_misaligned_rollout_leaves_the_loss_exactly(task, student, processors, tier):
    other = train_bpe_tokenizer(task.corpus(), 272)
    teacher_bundle = build_tiny(ModelConfig(family="qwen2", seed=2, **TINY), other)
    config = debug_config(f"loss.cross_tokenizer={tier}", "loss.divergence=jsd")
    teacher = CrossTokenizerTeacher(ModelTeacher(teacher_bundle, "text", processors), other, student.tokenizer)
    samples, prompt, rollouts = batch(student, task, processors, count=4)
    broken = dataclasses.replace(rollouts[2], completion_bytes=b"not what was sampled")
    with_broken = [*rollouts[:2], broken, rollouts[3]]
    student.model.eval()  # no dropout; left padding differs between the two batches
    signal = teacher.score([teacher.prepare(s) for s in samples], [r.completion_ids for r in with_broken], with_broken)
    assert signal.cross.kept == [True, True, False, True] and samples[2].id in signal.cross.dropped[0]
    supervised = sum(len(r.completion_ids) for i, r in enumerate(rollouts) if i != 2)
    loss, stats, _ = loss_and_grads(student, prompt, with_broken, signal, supervised, config)
    kept = [samples[i] for i in (0, 1, 3)]
    kept_prompt = collate([prepare(s, student_messages(s), student, processors) for s in kept], student)
    kept_rollouts = [rollouts[i] for i in (0, 1, 3)]
    kept_signal = teacher.score(
        [teacher.prepare(s) for s in kept], [r.completion_ids for r in kept_rollouts], kept_rollouts
    )
    expected, _, _ = loss_and_grads(student, kept_prompt, kept_rollouts, kept_signal, supervised, config)
    assert math.isfinite(float(loss)) and abs(float(loss) - float(expected)) < 1e-5


def test_cross_tokenizer_run_trains_end_to_end_and_logs_alignment(tmp_path):
    run = tmp_path / "run"
    config = debug_config("teacher.tokenizer=bpe:280", "loss.divergence=jsd", "train.steps=2", "train.eval_every=0")
    summary = train(config, run)
    records = read_metrics(run / "metrics.jsonl")
    assert summary["steps"] == 2 and [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        for key in ("loss", "kl", "grad_norm", *CROSS_METRICS):
            assert math.isfinite(record[key]), key
        assert 0 < record["one_to_one_ratio"] <= 1 and 0 <= record["byte_coverage"] <= 1
        assert 0 < record["student_shared_mass"] <= 1 + 1e-5 and record["grad_norm"] > 0


def test_multimodal_teacher_with_another_tokenizer_and_skipped_samples(tmp_path):
    vision = "{family: qwen2_vl, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, vision_depth: 1}"
    config = debug_config(f"teacher.model={vision}", "teacher.view=media", "teacher.tokenizer=bpe:400")
    parts = build_parts(config, tmp_path)
    assert isinstance(parts.teacher, CrossTokenizerTeacher)
    generate = parts.engine.generate

    def corrupt_first(prompt, samples, **kwargs):
        rollouts = generate(prompt, samples, **kwargs)
        rollouts[0] = dataclasses.replace(rollouts[0], completion_bytes=rollouts[0].completion_bytes + b"!")
        return rollouts

    parts.engine.generate = corrupt_first
    samples = [parts.task.train_samples()[i] for i in range(8)]
    record = opd_step(parts, samples, config)
    assert record["skipped"] == 2  # the first rollout of each of the two micro-batches
    assert math.isfinite(record["loss"]) and all(math.isfinite(record[k]) for k in CROSS_METRICS)
    assert samples[0].id in (tmp_path / "skipped.txt").read_text()


def test_the_student_never_samples_a_token_its_teacher_cannot_score(tmp_path):
    # mistral-v3 has no <|im_start|>: with bpe:300 (same specials) nothing is suppressed beyond the media ids.
    for name, unscorable in (("mistral-v3", {"<|im_start|>"}), ("bpe:300", set())):
        parts = build_parts(debug_config(f"teacher.tokenizer={name}"), tmp_path / name.replace(":", "_"))
        student, teacher = parts.student, parts.teacher
        beyond_media = set(student.unscorable) - set(student.media_token_ids())
        assert {student.tokenizer.convert_ids_to_tokens(i) for i in beyond_media} == unscorable
        lengths, stops = byte_table(student.tokenizer).lengths, set(student.stop_ids())
        samplable = set(range(len(student.tokenizer))) - set(student.suppressed_ids())
        # Every id the student may sample has bytes, ends the turn, or has a teacher token of its name.
        assert all(lengths[i] > 0 or i in stops or i in teacher.paired_specials for i in samplable), name
        _, bias = output_head(student)
        assert bool(torch.isinf(bias[list(student.unscorable)]).all()) and bool(
            torch.isfinite(bias[sorted(samplable)]).all()
        )
