"""A teacher with another tokenizer scores the exact sampled bytes, with its own template and end token."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmopd.align import byte_table
from mmopd.config import ModelConfig
from mmopd.cross_teacher import CrossTokenizerTeacher
from mmopd.models import build_tiny, train_bpe_tokenizer
from mmopd.rollout import HFEngine
from mmopd.teacher import ModelTeacher
from mmopd.views import collate, prepare, student_messages

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def other_tokenizer(task):
    return train_bpe_tokenizer(task.corpus(), 272)  # 8 merges: task words split into several tokens


@pytest.fixture()
def other_teacher(other_tokenizer):
    return build_tiny(ModelConfig(family="qwen2", seed=2, **TINY), other_tokenizer)


def rollouts_of(student, task, processors, count=6, max_new_tokens=6, seed=0):
    samples = [task.train_samples()[i] for i in range(count)]
    prompt = collate([prepare(s, student_messages(s), student, processors) for s in samples], student)
    torch.manual_seed(seed)
    return samples, prompt, HFEngine(student, max_new_tokens).generate(prompt, samples)


def test_teacher_tokens_cover_the_sampled_bytes_and_end_with_its_own_end_token(
    task, student, other_teacher, processors
):
    samples, _, rollouts = rollouts_of(student, task, processors)
    # Force one rollout to end with a sampled EOS so the end-token rule is exercised.
    eos = student.tokenizer.eos_token_id
    ended = dataclasses.replace(rollouts[0], completion_ids=[*rollouts[0].completion_ids[:2], eos])
    ended = dataclasses.replace(ended, finish_reason="stop", behaviour_logprobs=[-1.0] * 3)
    table = byte_table(student.tokenizer)
    ended = dataclasses.replace(ended, completion_bytes=table.spans(ended.completion_ids)[0])
    rollouts = [ended, *rollouts[1:]]
    teacher = CrossTokenizerTeacher(
        ModelTeacher(other_teacher, "text", processors), other_teacher.tokenizer, student.tokenizer
    )
    prepared = [teacher.prepare(s) for s in samples]
    assert all("The image shows" in p.text for p in prepared)  # the teacher's own (text) view
    signal = teacher.score(prepared, [r.completion_ids for r in rollouts], rollouts)
    cross = signal.cross
    assert cross.kept == [True] * len(rollouts) and not cross.dropped
    teacher_table = byte_table(other_teacher.tokenizer)
    start = 0
    for rollout in rollouts:
        ids = teacher.teacher_ids(rollout)
        assert cross.teacher_ids[start : start + len(ids)].tolist() == ids
        assert teacher_table.spans(ids)[0] == rollout.completion_bytes
        assert (ids[-1] == other_teacher.tokenizer.eos_token_id) == (rollout.finish_reason == "stop")
        start += len(ids)
    assert signal.hidden.shape[0] == cross.teacher_ids.numel() == cross.alignment.teacher_chunk.numel()
    assert cross.alignment.student_chunk.numel() == sum(len(r.completion_ids) for r in rollouts)
    assert bool(cross.alignment.one_to_one[-1]) or rollouts[-1].finish_reason != "stop"


def test_a_rollout_whose_bytes_do_not_match_its_ids_is_dropped_and_named(task, student, other_teacher, processors):
    samples, _, rollouts = rollouts_of(student, task, processors, count=3)
    broken = dataclasses.replace(rollouts[1], completion_bytes=rollouts[1].completion_bytes + b"??")
    rollouts = [rollouts[0], broken, rollouts[2]]
    teacher = CrossTokenizerTeacher(
        ModelTeacher(other_teacher, "text", processors), other_teacher.tokenizer, student.tokenizer
    )
    signal = teacher.score([teacher.prepare(s) for s in samples], [r.completion_ids for r in rollouts], rollouts)
    assert signal.cross.kept == [True, False, True]
    assert len(signal.cross.dropped) == 1 and samples[1].id in signal.cross.dropped[0]
    kept_tokens = sum(len(teacher.teacher_ids(r)) for r in (rollouts[0], rollouts[2]))
    assert signal.hidden.shape[0] == kept_tokens


def test_same_vocabulary_uses_the_sampled_ids(task, student, text_teacher, processors):
    samples, _, rollouts = rollouts_of(student, task, processors, count=2)
    teacher = CrossTokenizerTeacher(
        ModelTeacher(text_teacher, "text", processors), text_teacher.tokenizer, student.tokenizer
    )
    assert teacher.identical
    assert [teacher.teacher_ids(r) for r in rollouts] == [r.completion_ids for r in rollouts]


def test_a_sampled_special_is_scored_by_the_teachers_token_of_the_same_name(task, student, other_teacher, processors):
    samples, _, rollouts = rollouts_of(student, task, processors, count=1)
    tokenizer, other = student.tokenizer, other_teacher.tokenizer
    special, words = tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer("red circle")["input_ids"]
    ids = [special, *words[:1], special, *words[1:], special]  # at the start, mid-way and at the end
    completion_bytes, spans = byte_table(tokenizer).spans(ids)
    rollout = dataclasses.replace(
        rollouts[0],
        completion_ids=ids,
        behaviour_logprobs=[-1.0] * len(ids),
        byte_spans=spans,
        completion_bytes=completion_bytes,
        finish_reason="length",
    )
    teacher = CrossTokenizerTeacher(ModelTeacher(other_teacher, "text", processors), other, tokenizer)
    teacher_ids = teacher.teacher_ids(rollout)
    teacher_special = other.convert_tokens_to_ids("<|im_start|>")
    assert byte_table(other).join(teacher_ids) == completion_bytes
    assert teacher_ids.count(teacher_special) == 3 and teacher_ids[0] == teacher_ids[-1] == teacher_special
    alignment = teacher.score([teacher.prepare(samples[0])], [ids], [rollout]).cross.alignment
    # Each sampled special shares its chunk with the teacher's: the chunk likelihoods both include it.
    student_chunks = [int(alignment.student_chunk[i]) for i, t in enumerate(ids) if t == special]
    teacher_chunks = [int(alignment.teacher_chunk[i]) for i, t in enumerate(teacher_ids) if t == teacher_special]
    assert student_chunks == teacher_chunks
    # A stop the teacher has by name ends the teacher's ids as itself; the student's EOS as the teacher's.
    for stop in ("<|endoftext|>", tokenizer.eos_token):
        ended = dataclasses.replace(rollout, completion_ids=[*words, tokenizer.convert_tokens_to_ids(stop)])
        ended = dataclasses.replace(ended, completion_bytes=byte_table(tokenizer).join(words), finish_reason="stop")
        assert teacher.teacher_ids(ended)[-1] == other.convert_tokens_to_ids(stop)
