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
