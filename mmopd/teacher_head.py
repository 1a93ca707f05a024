"""The teacher's model and output head, built from the config away from the student.

Teacher actors build the teacher here (with the student's tokenizer only, to tell a cross-tokenizer teacher);
the driver loads the output head (V, H) once and hands it to the learner, since hidden-state signals travel
without it (KDFlow's split: H numbers per token on the wire, the V × H head held once by the learner).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mmopd.build import build_network_policy, build_task, build_teacher_model, build_teacher_tokenizer, build_tokenizer
from mmopd.config import Config
from mmopd.models import ModelBundle, load_tokenizer_dir, output_head, resolve_device


def student_tokenizer(config: Config, task) -> object:
    """The student's tokenizer without its weights: a tiny student's trained BPE, or a model directory's."""
    if config.student.path:
        return load_tokenizer_dir(config.student.path, config.student.trust_remote_code)
    return build_tokenizer(config, task)


def teacher_bundle(config: Config) -> tuple[ModelBundle, object, object]:
    """The teacher model of `config.teacher` (frozen), the task, and the student's tokenizer."""
    build_network_policy(config)
    task = build_task(config.data)
    student = student_tokenizer(config, task)
    teacher = build_teacher_model(config.teacher.model, build_teacher_tokenizer(config, task, student), config)
    return teacher, task, student


def load_teacher_head(config: Config) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The output head (weight (V, H), bias (V,) or None) a learner attaches to hidden signals; None for
    `sampled` signals, which carry teacher logprobs instead. Builds the whole teacher once on the CPU and keeps
    the head on `config.device` (reading only the head's tensors from a checkpoint would spare that)."""
    if config.teacher.signal != "hidden":
        return None
    bundle, _, _ = teacher_bundle(replace(config, device="cpu"))  # in host memory: the learner's GPU keeps its room
    weight, bias = output_head(bundle)
    device = resolve_device(config.device)
    return weight.detach().to(device, copy=True), None if bias is None else bias.detach().to(device, copy=True)
