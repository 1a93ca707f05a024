"""The bad-input corpus (tests/bad_corpus.py): every broken sample gets its own clear error naming it,
and a training run over a dataset mixing all of them with good samples completes with
`data.on_error: skip`, listing in skipped.txt exactly the bad samples, each with its reason."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import media_corpus
import pytest
from bad_corpus import BAD_INPUTS, PROCESSOR_ARGS, row, write_dataset

from mmopd.build import Parts, build_processors
from mmopd.config import DataConfig, ModelConfig, load_config
from mmopd.metrics import read_metrics
from mmopd.models import build_tiny, train_bpe_tokenizer
from mmopd.sft import sft
from mmopd.tasks.jsonl import JsonlError, JsonlTask
from mmopd.teacher import ModelTeacher
from mmopd.trainer import render_batch, train

ROOT = Path(__file__).resolve().parents[1]
MAX_PROMPT_TOKENS = 256
SAMPLE_ID = re.compile(r"^sample '([^']+)'")
AUDIO_STUDENT = (
    "student={family: qwen2_audio, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64,"
    " audio_layers: 1, audio_hidden_size: 32, audio_heads: 2, audio_seconds: 1}"
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Parts:
    """Both views of a real tiny student (Qwen2-VL) and text teacher (Qwen2), every registered processor."""
    path, _ = write_dataset(tmp_path_factory.mktemp("corpus"), BAD_INPUTS)
    tokenizer = train_bpe_tokenizer(JsonlTask(train_path=str(path), on_error="skip").corpus(), 320)
    tiny = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    student = build_tiny(ModelConfig(vision_depth=1, vision_hidden_size=32, vision_heads=2, **tiny), tokenizer)
    teacher = build_tiny(ModelConfig(family="qwen2", seed=1, **tiny), tokenizer)
    processors = build_processors(DataConfig(processor_args=PROCESSOR_ARGS))
    return Parts(None, None, processors, student, ModelTeacher(teacher, "text", processors), None)


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[bad.name for bad in BAD_INPUTS])
def test_each_bad_input_gets_its_own_error_naming_the_sample(tmp_path, parts, bad):
    path, expected = write_dataset(tmp_path, [bad], good=1)
    [(bad_id, reason)] = expected.items()
    samples = JsonlTask(train_path=str(path), on_error="skip").train_samples()
    rendered, reasons = render_batch(parts, list(samples), "skip", MAX_PROMPT_TOKENS)
    assert [r.student.sample.id for r in rendered] == ["good-0"]
    [message] = reasons
    assert SAMPLE_ID.match(message).group(1) == bad_id and reason in message, message
    if bad.rejected_line:
        assert f"{path}:2:" in message  # the file and line of a line the reader refused
        with pytest.raises(JsonlError, match=rf"{path}:2: "):
            JsonlTask(train_path=str(path), on_error="raise")
    else:
        with pytest.raises(ValueError, match=re.escape(reason)):
            render_batch(parts, list(samples), "raise", MAX_PROMPT_TOKENS)


def test_a_run_over_a_mixed_dataset_skips_exactly_the_bad_samples_and_says_why(tmp_path):
    path, expected = write_dataset(tmp_path / "data", BAD_INPUTS, good=4)
    size = len(expected) + 4
    overrides = ["data.task=jsonl", f"data.task_args={{train_path: {path}, eval_path: {path}}}"]
    overrides += [f"train.batch_size={size}", f"train.micro_batch_size={size}", "train.steps=2", "train.eval_every=0"]
    overrides += [f"data.max_prompt_tokens={MAX_PROMPT_TOKENS}", "eval.num_samples=8", "data.on_error=skip"]
    overrides += [f"data.processor_args={PROCESSOR_ARGS}"]
    summary = train(load_config(ROOT / "configs" / "debug.yaml", overrides), tmp_path / "run")

    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    skipped = Counter(SAMPLE_ID.match(line).group(1) for line in lines)
    assert skipped == dict.fromkeys(expected, 2)  # two steps over the whole dataset: each bad sample twice
    for line in lines:
        assert expected[SAMPLE_ID.match(line).group(1)] in line, line
    assert summary["steps"] == 2 and summary["skipped_samples"] == 2 * len(expected)
    assert [r["skipped"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[1:]] == [len(expected)] * 2


@pytest.mark.parametrize("command", ["train", "sft"])
def test_a_step_whose_samples_are_all_bad_changes_nothing(tmp_path, command):
    path, expected = write_dataset(tmp_path / "data", BAD_INPUTS[:4], good=0)
    overrides = ["data.task=jsonl", f"data.task_args={{train_path: {path}}}", "train.eval_every=0"]
    overrides += [
        "train.steps=1",
        "sft.steps=1",
        "train.batch_size=4",
        "train.micro_batch_size=4",
        "sft.batch_size=4",
        "sft.target=student",
    ]
    config = load_config(ROOT / "configs" / "debug.yaml", overrides)
    summary = (train if command == "train" else sft)(config, tmp_path / "run")
    assert summary["steps"] == 1 and summary["skipped_samples"] == 4
    [record] = read_metrics(tmp_path / "run" / "metrics.jsonl")[1:]
    assert record["loss"] == 0.0 and record.get("grad_norm") == 0.0


def test_a_run_with_an_audio_student_skips_exactly_the_broken_audio_files(tmp_path):
    """Broken WAVs (truncated, corrupt, empty, no samples, NaN/inf, a video named .wav, over-long) mixed with
    good ones: an audio student's run completes and lists exactly the broken ones, each with its reason."""
    root = tmp_path / "data"
    root.mkdir()
    media_corpus.write_audio(root / "good.wav", media_corpus.tone(0.5))
    good = [row(f"good-{i}", "audio", "good.wav") for i in range(4)]
    bad = {
        name: (reason, row(name, kind, write(root)))
        for name, (kind, write, reason) in media_corpus.BAD_MEDIA.items()
        if kind == "audio" and write is not media_corpus.bad_escaping_path  # `../`: refused by the reader
    }
    path = root / "data.jsonl"
    path.write_text("".join(line + "\n" for line in [*good, *(line for _, line in bad.values())]))
    size = len(good) + len(bad)
    overrides = ["data.task=jsonl", f"data.task_args={{train_path: {path}, eval_path: {path}}}", AUDIO_STUDENT]
    overrides += [f"train.batch_size={size}", f"train.micro_batch_size={size}", "train.steps=1", "train.eval_every=0"]
    overrides += ["eval.num_samples=4", "data.on_error=skip", f"data.processor_args={PROCESSOR_ARGS}"]
    summary = train(load_config(ROOT / "configs" / "debug.yaml", overrides), tmp_path / "run")

    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert sorted(SAMPLE_ID.match(line).group(1) for line in lines) == sorted(bad)
    for line in lines:
        assert bad[SAMPLE_ID.match(line).group(1)][0] in line, line
    assert summary["steps"] == 1 and summary["skipped_samples"] == len(bad)
