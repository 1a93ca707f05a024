"""Teacher signals: KL is zero when the teacher is the student; OPSD needs no second model."""

from __future__ import annotations

import torch

from mmopd.config import TeacherConfig
from mmopd.losses import chunked_divergence
from mmopd.models import final_hidden_states, output_head
from mmopd.teacher import ModelTeacher, SelfTeacher, build_teacher
from mmopd.views import collate, completion_hidden_states, prepare, student_messages


def _batch(task, student, processors, count=4):
    samples = [task.train_samples()[i] for i in range(count)]
    prepared = [prepare(s, student_messages(s), student, processors) for s in samples]
    completions = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]][:count]
    return samples, prepared, completions


def test_kl_is_zero_when_the_teacher_is_the_student(task, student, processors):
    samples, prepared, completions = _batch(task, student, processors)
    teacher = ModelTeacher(student, "media", processors)
    signal = teacher.score([teacher.prepare(s) for s in samples], completions)
    hidden = completion_hidden_states(student, collate(prepared, student), completions)
    weight, bias = output_head(student)
    weights = torch.full((hidden.shape[0],), 1.0 / hidden.shape[0])
    for divergence in ("forward_kl", "reverse_kl", "jsd", "tv"):
        loss, kl = chunked_divergence(
            hidden, weight, bias, signal.hidden, signal.head_weight, signal.head_bias, weights, divergence=divergence
        )
        assert abs(float(loss)) < 1e-6 and abs(float(kl)) < 1e-6


def test_sampled_signal_is_the_teacher_logprob_of_each_token(task, student, text_teacher, processors):
    samples, _, completions = _batch(task, student, processors)
    hidden_teacher = ModelTeacher(text_teacher, "text", processors, signal="hidden")
    sampled_teacher = ModelTeacher(text_teacher, "text", processors, signal="sampled")
    prepared = [hidden_teacher.prepare(s) for s in samples]
    full = hidden_teacher.score(prepared, completions)
    sampled = sampled_teacher.score(prepared, completions)
    logits = full.hidden @ full.head_weight.T + full.head_bias  # (N, V); the bias masks media ids
    ids = torch.tensor([t for c in completions for t in c])
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(sampled.logprobs, expected, atol=1e-5, rtol=0)
    assert sampled.num_bytes() * 32 == full.num_bytes()  # 1 float per token instead of H = 32


def test_teacher_hidden_states_predict_the_completion(task, text_teacher, processors):
    """Position P-1+j of the prompt+completion forward is the one that predicts completion token j."""
    samples = [task.train_samples()[i] for i in range(2)]
    completions = [[10, 11, 12], [13]]
    teacher = ModelTeacher(text_teacher, "text", processors)
    prepared = [teacher.prepare(s) for s in samples]
    hidden = completion_hidden_states(text_teacher, collate(prepared, text_teacher), completions)
    for row in range(len(samples)):
        prompt = collate([prepared[row]], text_teacher)
        ids = torch.cat([prompt["input_ids"], torch.tensor([completions[row]])], dim=1)
        with torch.no_grad():
            alone = final_hidden_states(text_teacher.model, {"input_ids": ids})[0]
        start = sum(len(c) for c in completions[:row])
        width = prompt["input_ids"].shape[1]
        expected = alone[width - 1 : width - 1 + len(completions[row])]
        torch.testing.assert_close(hidden[start : start + len(completions[row])], expected, atol=1e-4, rtol=0)


def test_opsd_frozen_teacher_keeps_the_initial_weights(tmp_path, task, student, processors):
    samples, _, completions = _batch(task, student, processors)
    parameters_before = sum(p.numel() for p in student.model.parameters())
    frozen = build_teacher(
        TeacherConfig(kind="self", self_weights="frozen"), student, None, processors, tmp_path, 1.0, 64
    )
    live = build_teacher(TeacherConfig(kind="self", self_weights="live"), student, None, processors, tmp_path, 1.0, 64)
    assert isinstance(frozen, SelfTeacher) and isinstance(live, SelfTeacher)
    prepared = [frozen.prepare(s) for s in samples]
    assert all("Context: " in p.text for p in prepared)
    before = frozen.score(prepared, completions)
    torch.testing.assert_close(before.hidden, live.score(prepared, completions).hidden)
    with torch.no_grad():
        for parameter in student.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after_frozen = frozen.score(prepared, completions)
    after_live = live.score(prepared, completions)
    torch.testing.assert_close(after_frozen.hidden, before.hidden)
    assert not torch.allclose(after_live.hidden, before.hidden)
    # The same student module runs both teachers: no second model was built.
    assert sum(p.numel() for p in student.model.parameters()) == parameters_before


def test_teacher_with_another_vocabulary_scores_through_the_byte_alignment(tmp_path, task, student, processors):
    from mmopd.config import ModelConfig
    from mmopd.cross_teacher import CrossTokenizerTeacher
    from mmopd.models import build_tiny, train_bpe_tokenizer

    other = train_bpe_tokenizer(["completely different text corpus"], 300)
    teacher = build_tiny(ModelConfig(family="qwen2", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1), other)
    built = build_teacher(TeacherConfig(), student, teacher, processors, tmp_path, 1.0, 64)
    assert isinstance(built, CrossTokenizerTeacher) and not built.identical
    same = build_teacher(TeacherConfig(), student, student, processors, tmp_path, 1.0, 64)
    assert isinstance(same, ModelTeacher)
