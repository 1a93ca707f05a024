"""Shared tiny, offline fixtures: the shapes task, a BPE trained on its text, a tiny Qwen2-VL student
and a tiny Qwen2 text teacher (random init, built from configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmopd.config import ModelConfig
from mmopd.models import build_tiny, train_bpe_tokenizer
from mmopd.processors.image import ImageProcessor
from mmopd.tasks.shapes import ShapesTask

torch.set_num_threads(2)

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="session")
def task() -> ShapesTask:
    return ShapesTask(num_eval=16)


@pytest.fixture(scope="session")
def tokenizer(task):
    return train_bpe_tokenizer(task.corpus(), 320)


@pytest.fixture(scope="session")
def processors():
    return {"image": ImageProcessor()}


@pytest.fixture()
def student(tokenizer):
    spec = ModelConfig(family="qwen2_vl", vision_depth=1, vision_hidden_size=32, vision_heads=2, **TINY)
    return build_tiny(spec, tokenizer)


@pytest.fixture()
def text_teacher(tokenizer):
    return build_tiny(ModelConfig(family="qwen2", seed=1, **TINY), tokenizer)


class _Payload:
    """Unpickling this touches `marker`: what a malicious pickled file would do, harmlessly."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def code_in_a_pickle(tmp_path):
    """(an object whose unpickling runs code, the file that code creates)."""
    marker = tmp_path / "code_ran"
    return _Payload(marker), marker


# ---- video and audio: the motion and tones tasks, their media written once per test session ----


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("media-cache"))


@pytest.fixture(scope="session")
def motion(media_cache):
    from mmopd.tasks.motion import MotionTask

    return MotionTask(num_eval=16, cache_dir=media_cache)


@pytest.fixture(scope="session")
def tones(media_cache):
    from mmopd.tasks.tones import TonesTask

    return TonesTask(num_eval=16, cache_dir=media_cache)


@pytest.fixture(scope="session")
def media_tokenizer(motion, tones):
    return train_bpe_tokenizer([*motion.corpus(), *tones.corpus()], 360)


@pytest.fixture(scope="session")
def media_processors():
    from mmopd.processors.audio import AudioProcessor
    from mmopd.processors.video import VideoProcessor

    # Every frame of the 8-frame clips, kept at 56x56.
    return {"video": VideoProcessor(nframes=8, min_pixels=56 * 56, max_pixels=56 * 56), "audio": AudioProcessor()}


@pytest.fixture(scope="session")
def media_model(media_tokenizer):
    """Builds a tiny random-init model of a family (qwen2_vl, qwen2_5_vl, qwen2_audio, qwen2) on the media tokenizer."""

    def build(family: str, seed: int = 0):
        vision = dict(vision_depth=1, vision_hidden_size=32, vision_heads=2)
        audio = dict(audio_layers=2, audio_hidden_size=32, audio_heads=2, audio_seconds=1)
        return build_tiny(ModelConfig(family=family, seed=seed, **vision, **audio, **TINY), media_tokenizer)

    return build
