"""A few training steps with a video student and an audio student; a media teacher with its own sampling
policy (teacher.processor_args); the blind check at the start of a run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmopd.blind_check import BlindTeacherError
from mmopd.build import build_parts
from mmopd.config import load_config
from mmopd.metrics import read_metrics
from mmopd.trainer import train
from mmopd.views import collate

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
VIDEO_ARGS = "data.processor_args={video: {nframes: 8, min_pixels: 3136, max_pixels: 3136}}"
AUDIO_STUDENT = "student={family: qwen2_audio, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, audio_layers: 2, audio_hidden_size: 32, audio_heads: 2, audio_seconds: 1}"


def media_config(task: str, cache: str, *overrides: str):
    base = [f"data.task={task}", f"data.task_args={{num_eval: 4, cache_dir: {cache}}}", "eval.num_samples=4"]
    base += ["train.batch_size=4", "train.micro_batch_size=2", "train.steps=2", "train.eval_every=0"]
    return load_config(DEBUG, [*base, *overrides])


@pytest.mark.parametrize(
    "task, overrides",
    [("motion", [VIDEO_ARGS]), ("motion", [VIDEO_ARGS, "student.family=qwen2_5_vl"]), ("tones", [AUDIO_STUDENT])],
    ids=["qwen2_vl-video", "qwen2_5_vl-video", "qwen2_audio"],
)
def test_media_students_train(task, overrides, tmp_path, media_cache):
    summary = train(media_config(task, media_cache, *overrides), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0
    for record in records[1:]:
        assert math.isfinite(record["loss"]) and record["kl"] >= 0 and record["grad_norm"] > 0
    assert "teacher_media_kl" not in summary  # a text teacher: nothing to check


def _media_teacher(*overrides: str) -> list[str]:
    teacher = "teacher.model={family: qwen2_vl, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64, vision_depth: 1, vision_hidden_size: 32, vision_heads: 2, seed: 1}"
    return [VIDEO_ARGS, teacher, "teacher.view=media", *overrides]


def test_media_teacher_reads_with_its_own_processor_arguments(tmp_path, media_cache):
    config = media_config("motion", media_cache, *_media_teacher("teacher.processor_args={video: {nframes: 4}}"))
    parts = build_parts(config, tmp_path)
    assert parts.processors["video"].nframes == 8 and parts.teacher.processors["video"].nframes == 4
    assert parts.teacher.processors["video"].max_pixels == 3136  # the rest comes from data.processor_args
    sample = parts.task.train_samples()[0]
    student_inputs = collate([parts.teacher.prepare(sample)], parts.teacher.bundle)
    from mmopd.views import prepare, student_messages

    student_view = prepare(sample, student_messages(sample), parts.student, parts.processors)
    assert student_view.media["video"][0].frames.shape[0] == 8
    assert student_inputs["video_grid_thw"][0, 0].item() == 2  # 4 frames → 2 temporal patches


def test_run_with_a_media_teacher_logs_the_blind_check(tmp_path, media_cache, capsys):
    config = media_config("motion", media_cache, *_media_teacher("teacher.blind_threshold=1e-6"))
    summary = train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["teacher_media_kl"] == records[1]["teacher_media_kl"] > 1e-6
    assert "teacher_media_kl" not in records[2]
    assert "blind check: KL" in capsys.readouterr().out


def test_a_blind_teacher_stops_the_run_before_training(tmp_path, media_cache):
    # A random-init teacher barely uses its video: with a demanding threshold the check stops the run.
    config = media_config(
        "motion", media_cache, *_media_teacher("teacher.blind_check=stop", "teacher.blind_threshold=10")
    )
    with pytest.raises(BlindTeacherError, match="barely depends on the media"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_demo_runs_a_media_config(tmp_path, media_cache):
    from mmopd.cli import main

    run = tmp_path / "demo"
    overrides = ["sft.steps=2", "train.steps=2", "eval.num_samples=4", "train.progress=false"]
    overrides.append(f"data.task_args={{num_eval: 4, cache_dir: {media_cache}}}")
    assert main(["demo", "--config", str(ROOT / "configs" / "demo_audio.yaml"), "--run-dir", str(run), *overrides]) == 0
    assert load_config(run / "config.yaml").student.family == "qwen2_audio"
    assert load_config(run / "teacher_sft" / "config.yaml").data.task == "tones"
    assert (run / "final" / "config.json").exists() and (run / "teacher_sft" / "final" / "config.json").exists()


def test_a_frozen_audio_encoder_keeps_its_weights_while_the_rest_trains(tmp_path, media_cache):
    from transformers import AutoModelForMultimodalLM

    config = media_config("tones", media_cache, AUDIO_STUDENT, "student.freeze_audio_encoder=true")
    parts = build_parts(config, tmp_path / "init", with_teacher=False)
    before = {name: p.detach().clone() for name, p in parts.student.model.named_parameters()}
    train(config, tmp_path / "run")
    after = dict(AutoModelForMultimodalLM.from_pretrained(tmp_path / "run" / "final").named_parameters())
    changed = {name for name, p in before.items() if not torch.equal(p, after[name])}
    assert changed and not any("audio_tower" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
