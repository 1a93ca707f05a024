"""Each model renders the sample from the structured messages with its own template and processor."""

from __future__ import annotations

import pytest

from mmopd.config import ConfigError, TeacherConfig
from mmopd.sample import MediaError, MediaRef, Sample
from mmopd.views import (
    SampleError,
    collate,
    opsd_messages,
    prepare,
    student_messages,
    text_view_messages,
    with_completions,
)


def test_student_view_expands_image_placeholders(task, student, processors):
    sample = task.eval_samples()[0]
    prepared = prepare(sample, student_messages(sample), student, processors)
    inputs = collate([prepared], student)
    image_pad = student.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = inputs["image_grid_thw"][0]
    # The student's own processor expands one placeholder into t*h*w / merge² tokens.
    assert int((inputs["input_ids"] == image_pad).sum()) == int(grid.prod()) // 4
    assert sample.privileged not in prepared.text


def test_text_teacher_reads_privileged_text_in_place_of_media(task, text_teacher, processors):
    sample = task.eval_samples()[1]
    prepared = prepare(sample, text_view_messages(sample), text_teacher, processors)
    assert sample.privileged in prepared.text
    assert "<|image_pad|>" not in prepared.text and "<|vision_start|>" not in prepared.text
    assert prepared.media == {}
    question = sample.messages[0]["content"][1]["text"]
    assert prepared.text.index(sample.privileged) < prepared.text.index(question)
    # Rendered by the teacher's own template from the messages, not from the student's text.
    expected = text_teacher.tokenizer.apply_chat_template(
        text_view_messages(sample), tokenize=False, add_generation_prompt=True
    )
    assert prepared.text == expected


def test_opsd_view_keeps_media_and_adds_context(task, student, processors):
    sample = task.eval_samples()[2]
    prepared = prepare(sample, opsd_messages(sample, "Context: {privileged}\n"), student, processors)
    assert f"Context: {sample.privileged}" in prepared.text
    assert "<|image_pad|>" in prepared.text and len(prepared.media["image"]) == 1


def test_text_model_refuses_media(task, text_teacher, processors):
    sample = task.eval_samples()[0]
    with pytest.raises(SampleError, match="cannot read media"):
        prepare(sample, student_messages(sample), text_teacher, processors)


def test_missing_privileged_text_names_the_sample(task):
    sample = task.eval_samples()[0]
    bare = Sample(id="no-privileged", messages=sample.messages, images=sample.images)
    with pytest.raises(SampleError, match="no-privileged"):
        text_view_messages(bare)


def test_bad_image_names_sample_and_file(tmp_path, task, student, processors):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    sample = Sample(
        id="bad-1",
        messages=task.eval_samples()[0].messages,
        images=[MediaRef(kind="image", path="broken.png", root=str(tmp_path))],
    )
    with pytest.raises(MediaError) as error:
        prepare(sample, student_messages(sample), student, processors)
    assert "bad-1" in str(error.value) and "broken.png" in str(error.value)


def test_empty_prompt_is_a_bad_sample(student, processors):
    sample = Sample(id="empty", messages=[{"role": "user", "content": "   "}])
    with pytest.raises(SampleError, match="empty"):
        prepare(sample, student_messages(sample), student, processors)


def test_completions_follow_left_padded_prompts(task, student, processors):
    samples = [task.eval_samples()[i] for i in range(3)]
    prompt = collate([prepare(s, student_messages(s), student, processors) for s in samples], student)
    completions = [[5, 6], [7], [8, 9, 10]]
    inputs = with_completions(prompt, completions, pad_id=0)
    width = prompt["input_ids"].shape[1]
    for row, completion in enumerate(completions):
        assert inputs["input_ids"][row, width : width + len(completion)].tolist() == completion
        assert inputs["attention_mask"][row, width:].sum() == len(completion)
    assert inputs["mm_token_type_ids"][:, width:].abs().sum() == 0


def test_opsd_template_may_name_the_reference_answer(task, student, processors):
    sample = task.eval_samples()[3]
    messages = opsd_messages(sample, "Reference answer: {answer}\nHint: {privileged}\n")
    context = messages[0]["content"][0]["text"]
    assert context == f"Reference answer: {sample.answer}\nHint: {sample.privileged}\n"
    assert "Reference answer" not in str(sample.messages)  # the sample's own messages are left as they were
    prepared = prepare(sample, messages, student, processors)
    assert prepared.text.index(context) < prepared.text.index("<|vision_start|>")


def test_opsd_template_needs_only_the_fields_it_names(task):
    sample = task.eval_samples()[0]
    bare = Sample(id="bare-7", messages=sample.messages, images=sample.images)
    # A fixed instruction (CRISP's "be concise") needs neither privileged text nor an answer.
    assert opsd_messages(bare, "Answer in one word.\n")[0]["content"][0]["text"] == "Answer in one word.\n"
    with pytest.raises(SampleError, match=r"'bare-7'.*reference answer \(\{answer\}\)"):
        opsd_messages(bare, "Reference answer: {answer}\n")
    with pytest.raises(SampleError, match=r"'bare-7'.*privileged text \(\{privileged\}\)"):
        opsd_messages(bare, "Context: {privileged}\n")


@pytest.mark.parametrize("template", ["Answer: {solution}\n", "Answer: {0}\n", "Answer: {answer\n"])
def test_config_refuses_a_template_with_unknown_fields(template):
    with pytest.raises(ConfigError, match="privileged_template"):
        TeacherConfig(kind="self", privileged_template=template)
