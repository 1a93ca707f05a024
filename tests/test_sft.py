"""The student's warm-up: a fixed share of samples reads the self-teacher's context, exactly as the teacher will."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mmopd.config import TeacherConfig, load_config
from mmopd.sft import has_context, sft_step, warmup_view
from mmopd.tasks.shapes import ShapesTask
from mmopd.teacher import build_teacher
from mmopd.views import collate, prepare, student_messages

TEMPLATES = ("Reference answer: {answer}\n", "Answer in one word.\n", "Context: {privileged}\n")


def test_context_share_is_fixed_per_sample_and_close_to_the_fraction():
    ids = [f"shapes/train/{index}" for index in range(4000)]
    for fraction in (0.0, 0.25, 0.5, 1.0):
        chosen = [has_context(sample_id, fraction) for sample_id in ids]
        assert chosen == [has_context(sample_id, fraction) for sample_id in ids]  # the same on every call
        assert abs(sum(chosen) / len(ids) - fraction) < 0.03
    # A larger fraction keeps every sample a smaller one chose (one draw per sample, compared to the fraction).
    small, large = ({i for i in ids if has_context(i, f)} for f in (0.3, 0.6))
    assert small < large


@pytest.mark.parametrize("template", TEMPLATES)
def test_context_samples_read_exactly_the_self_teachers_prompt(tmp_path, student, processors, template):
    task = ShapesTask(num_eval=16, answer_style="sentence")
    teacher = build_teacher(
        TeacherConfig(kind="self", privileged_template=template), student, None, processors, tmp_path, 1.0, 64
    )
    samples = [task.train_samples()[i] for i in range(12)]
    with_context = [s for s in samples if has_context(s.id, 0.5)]
    without = [s for s in samples if not has_context(s.id, 0.5)]
    assert with_context and without
    views = [warmup_view(s, 0.5, template) for s in with_context]
    warmup = collate([prepare(s, m, student, processors) for s, (m, _) in zip(with_context, views)], student)
    scored = collate([teacher.prepare(s) for s in with_context], student)
    assert warmup.keys() == scored.keys()
    for key in warmup:  # the same prompt tokens, placeholders and pixels the self-teacher scores rollouts after
        assert warmup[key].equal(scored[key]), key
    # With the context the target is the concise form; without it, the student's own view and answer.
    assert [answer for _, answer in views] == [s.context_answer for s in with_context]
    for sample in without:
        assert warmup_view(sample, 0.5, template) == (student_messages(sample), sample.answer)
        assert sample.answer.startswith("The ")


def test_context_answer_falls_back_to_the_answer():
    sample = ShapesTask().train_samples()[0]  # word answers: no separate concise form
    messages, answer = warmup_view(sample, 1.0, "Reference answer: {answer}\n")
    assert answer == sample.answer and messages[0]["content"][0]["text"] == f"Reference answer: {sample.answer}\n"


def test_a_sample_without_an_answer_is_skipped_but_a_broken_view_function_raises(student, processors):
    config = load_config(None, ["data.on_error=skip"])
    samples = [ShapesTask(num_eval=4).sample("train", index) for index in range(2)]
    own_view = lambda sample: warmup_view(sample, 0.0, "")  # noqa: E731
    record, skipped = sft_step(student, [replace(samples[0], answer=None), samples[1]], own_view, processors, config)
    assert record["loss"] > 0 and len(skipped) == 1 and "has no answer" in skipped[0]
    with pytest.raises(ValueError, match="unpack"):
        sft_step(
            student, samples, student_messages, processors, config
        )  # returns messages only, not (messages, answer)
