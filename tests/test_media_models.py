"""Video and audio students: tiny Qwen2-VL / Qwen2.5-VL (video) and Qwen2-Audio models render, generate
and score; media placeholders are never sampled; mixed batches collate; each view reads its own way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2VLVideoProcessor

from mmopd.models import MEDIA_TOKENS
from mmopd.processors.audio import AudioClip
from mmopd.rollout import HFEngine
from mmopd.sample import Sample
from mmopd.views import (
    Prepared,
    SampleError,
    collate,
    completion_hidden_states,
    prepare,
    student_messages,
    text_view_messages,
)

FAMILIES = {"qwen2_vl": "motion", "qwen2_5_vl": "motion", "qwen2_audio": "tones"}


def _task(family, motion, tones):
    return motion if FAMILIES[family] == "motion" else tones


def _text_only_sample() -> Sample:
    return Sample(id="text-only", messages=[{"role": "user", "content": "How many squares are there?"}])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_media_students_generate_and_score(family, media_model, motion, tones, media_processors):
    bundle = media_model(family)
    task = _task(family, motion, tones)
    samples = [task.eval_samples()[i] for i in range(3)]
    prepared = [prepare(s, student_messages(s), bundle, media_processors) for s in samples]
    prompt = collate(prepared, bundle)
    rollouts = HFEngine(bundle, max_new_tokens=4).generate(prompt, samples)
    completions = [r.completion_ids for r in rollouts]
    assert all(1 <= len(c) <= 4 for c in completions)
    hidden = completion_hidden_states(bundle, prompt, completions)  # (N, H)
    assert hidden.shape == (sum(map(len, completions)), bundle.model.config.get_text_config().hidden_size)
    assert torch.isfinite(hidden).all()
    # Scoring in a batch equals scoring alone: padding and the media of other rows change nothing.
    alone = completion_hidden_states(bundle, collate(prepared[:1], bundle), completions[:1])
    torch.testing.assert_close(hidden[: len(completions[0])], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_suppressed_ids_cover_every_media_token_and_are_never_sampled(
    family, media_model, motion, tones, media_processors
):
    bundle = media_model(family)
    media_ids = {bundle.tokenizer.convert_tokens_to_ids(token) for token in MEDIA_TOKENS}
    assert bundle.tokenizer.unk_token_id not in media_ids and len(media_ids) == len(MEDIA_TOKENS)
    assert media_ids <= set(bundle.suppressed_ids())
    # Make the media tokens by far the likeliest: the sampler must still never emit one.
    with torch.no_grad():
        head = bundle.model.get_output_embeddings().weight
        head[sorted(media_ids)] = 50.0 * head.abs().max() * torch.sign(torch.randn(len(media_ids), head.shape[1]))
    sample = _task(family, motion, tones).eval_samples()[0]
    prepared = prepare(sample, student_messages(sample), bundle, media_processors)
    rollouts = HFEngine(bundle, max_new_tokens=6).generate(collate([prepared] * 4, bundle), [sample] * 4)
    assert not media_ids & {t for r in rollouts for t in r.completion_ids}


def test_video_placeholders_expand_to_the_frames_grid(media_model, motion, media_processors):
    bundle = media_model("qwen2_5_vl")
    # A checkpoint's video processor (at least 128 * 28 * 28 pixels per frame) must not resize them either.
    bundle.processor.video_processor = Qwen2VLVideoProcessor(cap_pixels_per_frame=False)
    sample = motion.eval_samples()[0]
    prepared = prepare(sample, student_messages(sample), bundle, media_processors)
    (clip,) = prepared.media["video"]
    inputs = collate([prepared], bundle)
    frames, _, height, width = clip.frames.shape
    # The model's processor keeps the frames as processors/video.py sized them (no second resize).
    assert inputs["video_grid_thw"][0].tolist() == [frames // 2, height // 14, width // 14]
    video_pad = bundle.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((inputs["input_ids"] == video_pad).sum()) == frames // 2 * (height // 28) * (width // 28)
    # Qwen2.5-VL's temporal M-RoPE step comes from the sampled fps: 2 frames per temporal patch.
    assert inputs["second_per_grid_ts"][0].item() == pytest.approx(2 / clip.fps)


def test_audio_goes_through_the_models_feature_extractor_at_its_rate(media_model, tones):
    bundle = media_model("qwen2_audio")
    sample = tones.eval_samples()[0]
    second = np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 440).astype(np.float32)  # (S,) 1 s at 16 kHz
    text = bundle.processor.apply_chat_template(sample.messages, tokenize=False, add_generation_prompt=True)
    at_16k = collate([Prepared(sample, text, {"audio": [AudioClip(second, 16_000)]})], bundle)
    at_8k = collate([Prepared(sample, text, {"audio": [AudioClip(second[::2].copy(), 8_000)]})], bundle)
    audio_id = bundle.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    # 1 s → 100 log-mel frames → 25 audio tokens after the encoder's two halvings, whatever the input rate.
    assert int((at_16k["input_ids"] == audio_id).sum()) == int((at_8k["input_ids"] == audio_id).sum()) == 25
    assert at_16k["input_features"].shape == (1, 80, 100)
    # The same tone at either rate gives the same log-mels (resampling only blurs the clip's two edges).
    assert (at_16k["input_features"] - at_8k["input_features"]).abs().mean() < 0.01


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mixed_batches_collate_media_and_text_only_rows(family, media_model, motion, tones, media_processors):
    bundle = media_model(family)
    media_sample = _task(family, motion, tones).eval_samples()[1]
    samples = [_text_only_sample(), media_sample, _text_only_sample()]
    prepared = [prepare(s, student_messages(s), bundle, media_processors) for s in samples]
    prompt = collate(prepared, bundle)
    rollouts = HFEngine(bundle, max_new_tokens=3).generate(prompt, samples, greedy=True)
    completions = [r.completion_ids for r in rollouts]
    hidden = completion_hidden_states(bundle, prompt, completions)
    alone = completion_hidden_states(bundle, collate(prepared[1:2], bundle), completions[1:2])
    start = len(completions[0])
    torch.testing.assert_close(hidden[start : start + len(completions[1])], alone, atol=1e-4, rtol=1e-4)


def test_a_model_refuses_media_it_cannot_read(media_model, motion, tones, media_processors):
    video, audio = motion.eval_samples()[0], tones.eval_samples()[0]
    with pytest.raises(SampleError, match="cannot read audio"):
        prepare(audio, student_messages(audio), media_model("qwen2_vl"), media_processors)
    with pytest.raises(SampleError, match="cannot read video"):
        prepare(video, student_messages(video), media_model("qwen2_audio"), media_processors)


@pytest.mark.parametrize("task_name", ["motion", "tones"])
def test_text_teacher_reads_the_privileged_text_in_place_of_video_or_audio(
    task_name, media_model, motion, tones, media_processors
):
    sample = (motion if task_name == "motion" else tones).eval_samples()[2]
    teacher = media_model("qwen2", seed=1)
    prepared = prepare(sample, text_view_messages(sample), teacher, media_processors)
    assert sample.privileged in prepared.text and prepared.media == {}
    assert not any(token in prepared.text for token in MEDIA_TOKENS)


def test_freezing_the_audio_encoder_of_a_model_without_one_is_an_error(media_tokenizer):
    from mmopd.config import ModelConfig
    from mmopd.models import build_model

    with pytest.raises(ValueError, match="has no audio encoder"):
        build_model(ModelConfig(family="qwen2", hidden_size=32, freeze_audio_encoder=True), media_tokenizer)
