"""The "does the teacher see it?" check: the KL between a media teacher's next-token distributions with the media
and with the media blanked (black images and frames, silent audio), on a probe batch at the start of a run.

A teacher whose processor drops the media, whose vision or audio tower is not wired in, or that never
learnt to look gives the same distributions either way (KL near zero); distilling from it teaches the
student to ignore the media too. The check scores each probe sample's reference answer (or, without
one, the first answer token) exactly as training scores rollouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmopd.config import Config, ConfigError
from mmopd.losses import chunked_divergence
from mmopd.models import ModelBundle, output_head
from mmopd.sample import MediaError, Sample
from mmopd.views import Prepared, SampleError, collate, completion_hidden_states


class BlindTeacherError(ConfigError):
    """The media teacher's outputs do not depend on the media (teacher.blind_check: stop)."""


def blank(item: Any) -> Any:
    """The same media item with no content: a black image, black frames or silence, shapes unchanged."""
    if isinstance(item, Image.Image):
        return Image.new(item.mode, item.size)
    if hasattr(item, "frames"):  # a video clip: frames (T, 3, H, W)
        return dataclasses.replace(item, frames=torch.zeros_like(torch.as_tensor(item.frames)))
    if hasattr(item, "waveform"):  # an audio clip: waveform (S,)
        return dataclasses.replace(item, waveform=np.zeros_like(item.waveform))
    raise TypeError(f"cannot blank a media item of type {type(item).__name__}")


def blanked(prepared: Prepared) -> Prepared:
    media = {kind: [blank(item) for item in items] for kind, items in prepared.media.items()}
    return Prepared(prepared.sample, prepared.text, media)


def probe_completions(bundle: ModelBundle, samples: Sequence[Sample]) -> list[list[int]]:
    """Each sample's reference answer and the end-of-turn token; the end-of-turn token alone without one."""
    tokenizer = bundle.tokenizer
    answers = [tokenizer(s.answer, add_special_tokens=False)["input_ids"] if s.answer else [] for s in samples]
    return [ids + [tokenizer.eos_token_id] for ids in answers]


@torch.no_grad()
def media_kl(bundle: ModelBundle, prepared: list[Prepared], completions: list[list[int]]) -> float:
    """Mean over completion tokens of KL(p(· | media) ‖ p(· | blanked media)), in nats."""
    seen = completion_hidden_states(bundle, collate(prepared, bundle), completions)  # (N, H)
    unseen = completion_hidden_states(bundle, collate([blanked(p) for p in prepared], bundle), completions)  # (N, H)
    weight, bias = output_head(bundle)
    weights = torch.full((seen.shape[0],), 1.0 / seen.shape[0], device=seen.device)  # (N,)
    # chunked_divergence's "student" side is the first distribution of its KL: here, the media view.
    _, kl = chunked_divergence(seen, weight, bias, unseen, weight, bias, weights, divergence="reverse_kl")
    return float(kl)


def check_teacher_sees_media(
    bundle: ModelBundle, prepared: list[Prepared], samples: Sequence[Sample], mode: str, threshold: float
) -> dict[str, float]:
    """Measure, print, and warn or stop (`mode`) when the KL is under `threshold`; the metric to log."""
    was_training = bundle.model.training
    bundle.model.eval()
    kl = media_kl(bundle, prepared, probe_completions(bundle, samples))
    bundle.model.train(was_training)
    print(f"blind check: KL(teacher with media ‖ teacher with blanked media) = {kl:.3g} nats/token")
    if kl < threshold:
        message = (
            f"the teacher barely depends on the media: KL {kl:.3g} < teacher.blind_threshold={threshold:g} on "
            f"{len(prepared)} probe samples. Check that its processor keeps the media (teacher.processor_args) "
            "and that its model reads them; distilling from it teaches the student to ignore the media."
        )
        if mode == "stop":
            raise BlindTeacherError(message)
        print(f"WARNING: {message}", flush=True)
    return {"teacher_media_kl": kl}


def blind_check_from_config(parts: Any, config: Config) -> dict[str, float]:
    """Run the check when the config asks for it (a separate teacher reading the media); {} otherwise."""
    cfg = config.teacher
    if cfg.kind != "model" or cfg.view != "media" or cfg.blind_check == "off":
        return {}
    prepared, samples = [], []
    train_samples = parts.task.train_samples()
    for index in range(min(cfg.blind_probe_samples, len(train_samples))):
        sample = train_samples[index]
        try:
            prepared.append(parts.teacher.prepare(sample))
            samples.append(sample)
        except (MediaError, SampleError) as error:
            parts.report_skip(f"blind check: {error}")
    if not prepared:
        print("WARNING: blind check skipped: no probe sample could be rendered for the teacher", flush=True)
        return {}
    return check_teacher_sees_media(parts.teacher.bundle, prepared, samples, cfg.blind_check, cfg.blind_threshold)
