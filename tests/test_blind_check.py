"""The "does the teacher see it?" check: a teacher whose media are blanked or ignored is flagged, one that reads them is not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mmopd.blind_check import BlindTeacherError, blank, check_teacher_sees_media, media_kl, probe_completions
from mmopd.cli import main
from mmopd.processors.image import ImageProcessor
from mmopd.views import prepare, student_messages


@dataclass(frozen=True)
class BlackFramesProcessor:
    """A processor that decodes the video and then throws its content away: the teacher sees black frames."""

    inner: object
    kind = "video"

    def load(self, ref, sample_id):
        return blank(self.inner.load(ref, sample_id))


def _probe(bundle, task, processors, count=4):
    samples = [task.train_samples()[i] for i in range(count)]
    return [prepare(s, student_messages(s), bundle, processors) for s in samples], samples


@pytest.mark.parametrize("family, task_name", [("qwen2_vl", "motion"), ("qwen2_audio", "tones")])
def test_a_teacher_that_reads_the_media_is_not_flagged(family, task_name, media_model, motion, tones, media_processors):
    teacher = media_model(family, seed=2)
    prepared, samples = _probe(teacher, motion if task_name == "motion" else tones, media_processors)
    kl = media_kl(teacher, prepared, probe_completions(teacher, samples))
    # Even a random-init tiny teacher's distributions move measurably when its media go blank.
    assert kl > 1e-5
    assert check_teacher_sees_media(teacher, prepared, samples, "stop", 1e-5)["teacher_media_kl"] == kl


def test_a_teacher_whose_media_are_blanked_is_flagged(media_model, motion, media_processors, capsys):
    teacher = media_model("qwen2_vl", seed=2)
    processors = {**media_processors, "video": BlackFramesProcessor(media_processors["video"])}
    prepared, samples = _probe(teacher, motion, processors)
    assert media_kl(teacher, prepared, probe_completions(teacher, samples)) == pytest.approx(0.0, abs=1e-9)
    metrics = check_teacher_sees_media(teacher, prepared, samples, "warn", 1e-5)
    assert metrics["teacher_media_kl"] < 1e-5
    out = capsys.readouterr().out
    assert "blind check: KL" in out and "WARNING: the teacher barely depends on the media" in out
    with pytest.raises(BlindTeacherError, match="teacher.blind_threshold"):
        check_teacher_sees_media(teacher, prepared, samples, "stop", 1e-5)


def test_a_teacher_whose_vision_tower_is_cut_off_is_flagged(media_model, motion, media_processors):
    teacher = media_model("qwen2_vl", seed=2)
    merger = teacher.model.model.visual.merger.mlp[-1]  # the last layer that feeds video features into the LM
    with torch.no_grad():
        merger.weight.zero_()
        merger.bias.zero_()
    prepared, samples = _probe(teacher, motion, media_processors)
    with pytest.raises(BlindTeacherError):
        check_teacher_sees_media(teacher, prepared, samples, "stop", 1e-5)


def test_blanking_keeps_shapes_and_empties_content(motion, tones, media_processors):
    video = media_processors["video"].load(motion.eval_samples()[0].videos[0], "v")
    audio = media_processors["audio"].load(tones.eval_samples()[0].audios[0], "a")
    black, silent = blank(video), blank(audio)
    assert black.frames.shape == video.frames.shape and black.frames.dtype == video.frames.dtype
    assert int(black.frames.max()) == 0 < int(video.frames.max()) and black.fps == video.fps
    assert silent.waveform.shape == audio.waveform.shape and not silent.waveform.any() and audio.waveform.any()


def test_blank_image_processor_keeps_the_size_and_drops_the_content(task):
    ref = task.eval_samples()[0].images[0]
    seen, unseen = ImageProcessor().load(ref, "s"), ImageProcessor(blank=True).load(ref, "s")
    assert unseen.size == seen.size and unseen.mode == "RGB"
    assert unseen.getextrema() == ((0, 0), (0, 0), (0, 0)) and seen.getextrema() != unseen.getextrema()


def test_blind_teacher_recipe_stops_before_training_and_the_sighted_one_trains(tmp_path, capsys):
    recipe = str(Path(__file__).parent.parent / "configs" / "recipes" / "blind_teacher.yaml")
    small = ["train.steps=1", "train.batch_size=4", "train.micro_batch_size=4", "eval.num_samples=4"]
    small += ["data.task_args.image_size=56", "teacher.blind_probe_samples=4", "train.progress=false"]
    blind, sighted = tmp_path / "blind", tmp_path / "sighted"
    assert main(["train", recipe, *small, "--run-dir", str(blind)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: the teacher barely depends on the media: KL 0 <")
    assert not (blind / "metrics.jsonl").exists() and not (blind / "checkpoints").exists()
    assert main(["train", recipe, *small, "teacher.processor_args.image.blank=false", "--run-dir", str(sighted)]) == 0
    summary = json.loads((sighted / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["teacher_media_kl"] > 1e-4
