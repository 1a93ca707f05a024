"""Render a Sample for one model: its own template, its own processor, its own view (contract 2).

The student reads the messages with the media; a text-only teacher reads the privileged text in
place of the media; an OPSD teacher reads the student's messages with the privileged text
prepended. Each model's processor expands its own media placeholders; nothing is aligned here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torchaudio
from torch.func import functional_call

from mmopd.config import template_fields
from mmopd.models import ModelBundle, final_hidden_states
from mmopd.sample import MediaError, Sample

MEDIA_PART_TYPES = ("image", "video", "audio")
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class SampleError(ValueError):
    """A sample that cannot be rendered (empty or over-long prompt, no privileged text)."""


@dataclass
class Prepared:
    """One sample rendered for one model: its prompt text and its decoded media by kind."""

    sample: Sample
    text: str
    media: dict[str, list[Any]] = field(default_factory=dict)


def student_messages(sample: Sample) -> list[dict]:
    return sample.messages


def text_view_messages(sample: Sample) -> list[dict]:
    """The privileged text in place of the media: the first media part becomes the text, the rest go."""
    if not sample.privileged:
        raise SampleError(f"sample {sample.id!r}: a text-only teacher needs privileged text, and it has none")
    messages, placed = [], False
    for message in sample.messages:
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part["type"] in MEDIA_PART_TYPES:
                    if not placed:
                        parts.append({"type": "text", "text": sample.privileged + "\n"})
                        placed = True
                    continue
                parts.append(part)
            content = parts
        messages.append({**message, "content": content})
    if not placed:
        messages = opsd_messages(sample, "{privileged}\n")
    return messages


def opsd_messages(sample: Sample, template: str) -> list[dict]:
    """The student's own messages with the privileged context prepended to the first user turn."""
    messages = copy.deepcopy(sample.messages)
    context = opsd_context(sample, template)
    for message in messages:
        if message["role"] == "user":
            if isinstance(message["content"], str):
                message["content"] = context + message["content"]
            else:
                message["content"].insert(0, {"type": "text", "text": context})
            return messages
    raise SampleError(f"sample {sample.id!r}: no user message to add the privileged context to")


TEMPLATE_FIELDS = {"privileged": "privileged text", "answer": "reference answer"}
"""The sample fields an OPSD template may name, e.g. "Reference answer: {answer}\n"."""


def opsd_context(sample: Sample, template: str) -> str:
    """The template filled from the sample; only the fields the template names must be present."""
    values = {"privileged": sample.privileged, "answer": sample.answer}
    for name in sorted(template_fields(template)):
        if not values.get(name):
            what = TEMPLATE_FIELDS.get(name, f"a field {name!r}")
            raise SampleError(f"sample {sample.id!r}: the OPSD template needs the {what} ({{{name}}}), and it has none")
    return template.format(**values)


def has_media_parts(messages: list[dict]) -> bool:
    return any(
        isinstance(m["content"], list) and any(p["type"] in MEDIA_PART_TYPES for p in m["content"]) for m in messages
    )


def media_part_kinds(messages: list[dict]) -> set[str]:
    return {
        part["type"]
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] in MEDIA_PART_TYPES
    }


def prepare(sample: Sample, messages: list[dict], bundle: ModelBundle, processors: dict[str, Any]) -> Prepared:
    """Decode the media the messages refer to and render the prompt with the model's template."""
    if sample.error is not None:
        raise SampleError(f"sample {sample.id!r}: {sample.error}")
    renderer = bundle.processor or bundle.tokenizer
    wants_media = has_media_parts(messages)
    if wants_media and not bundle.is_multimodal:
        raise SampleError(f"sample {sample.id!r}: a text-only model cannot read media")
    unreadable = media_part_kinds(messages) - bundle.media_kinds if wants_media else set()
    if unreadable:
        raise SampleError(f"sample {sample.id!r}: the model cannot read {' or '.join(sorted(unreadable))} media")
    text = renderer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not text.strip() or not any(_message_text(m).strip() for m in messages):
        raise SampleError(f"sample {sample.id!r}: empty prompt")
    media: dict[str, list[Any]] = {}
    if wants_media:
        for ref in sample.media():
            if ref.kind not in processors:
                raise MediaError(sample.id, ref.describe(), f"no processor for {ref.kind} media")
            media.setdefault(ref.kind, []).append(processors[ref.kind].load(ref, sample.id))
    return Prepared(sample, text, media)


def _message_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", p["type"]) for p in content)


def collate(prepared: list[Prepared], bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for a batch of prompts (left, so every prompt ends at the same column)."""
    bundle.tokenizer.padding_side = "left"
    texts = [p.text for p in prepared]
    device = bundle.model.device
    if not bundle.is_multimodal:
        encoded = bundle.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {key: value.to(device) for key, value in encoded.items()}
    kwargs = media_inputs(prepared, bundle.processor)
    encoded = bundle.processor(text=texts, return_tensors="pt", padding=True, **kwargs)
    return {key: value.to(device) for key, value in encoded.items()}


def media_inputs(prepared: list[Prepared], processor: Any) -> dict[str, Any]:
    """The batch's media as keyword arguments of a Hugging Face processor, in prompt order.

    Videos go with their metadata, so the processor knows the sampled frames' fps (Qwen2.5-VL turns it
    into seconds per temporal patch for M-RoPE), and are neither resampled nor resized again. Audio is
    resampled to the model's own feature extractor rate (the processor would refuse any other)."""
    kwargs: dict[str, Any] = {}
    images = [item for p in prepared for item in p.media.get("image", [])]
    if images:
        kwargs["images"] = images
    videos = [item for p in prepared for item in p.media.get("video", [])]
    if videos:
        kwargs["videos"] = [clip.frames for clip in videos]
        kwargs["video_metadata"] = [clip.metadata() for clip in videos]
        # The frames are sampled and sized already: pixel bounds that keep every frame as it is, whatever
        # a checkpoint's processor would otherwise resize to (e.g. at least 128 * 28 * 28 pixels).
        areas = [clip.frames.shape[2] * clip.frames.shape[3] for clip in videos]
        size = {"shortest_edge": min(areas), "longest_edge": max(areas)}
        kwargs["videos_kwargs"] = {"size": size, "do_sample_frames": False}
    audios = [item for p in prepared for item in p.media.get("audio", [])]
    if audios:
        rate = processor.feature_extractor.sampling_rate
        kwargs["audio"] = [_resampled(clip.waveform, clip.sampling_rate, rate) for clip in audios]
        kwargs["sampling_rate"] = rate
    return kwargs


def _resampled(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return waveform
    resampled = torchaudio.functional.resample(torch.from_numpy(waveform), rate, target)  # (S',)
    return resampled.numpy()


def prompt_lengths(inputs: dict[str, torch.Tensor]) -> list[int]:
    return inputs["attention_mask"].sum(dim=1).tolist()


def with_completions(
    prompt: dict[str, torch.Tensor], completions: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Prompt (left-padded to P) + completion ids (right-padded to C): inputs for scoring.

    The hidden state at column P - 1 + j predicts completion token j of every row.
    """
    batch, width = prompt["input_ids"].shape
    longest = max((len(c) for c in completions), default=0)
    device = prompt["input_ids"].device
    ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)  # (B, C)
    mask = torch.zeros((batch, longest), dtype=prompt["attention_mask"].dtype, device=device)  # (B, C)
    for row, completion in enumerate(completions):
        ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long, device=device)
        mask[row, : len(completion)] = 1
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], ids], dim=1)
    inputs["attention_mask"] = torch.cat([prompt["attention_mask"], mask], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        # Completion tokens are text: type 0 (transformers' Qwen2-VL needs the extension).
        if key in prompt:
            inputs[key] = torch.cat([prompt[key], torch.zeros_like(ids, dtype=prompt[key].dtype)], dim=1)
    return inputs


def completion_hidden_states(
    bundle: ModelBundle, prompt: dict[str, torch.Tensor], completions: list[list[int]], weights: dict | None = None
) -> torch.Tensor:
    """Hidden states (N, H) predicting each completion token after a collated prompt; `weights`, when
    given, replaces the model body's own (OPSD's frozen teacher)."""
    inputs = with_completions(prompt, completions, bundle.tokenizer.pad_token_id)
    if weights is None:
        hidden = final_hidden_states(bundle.model, inputs)  # (B, T, H)
    else:
        hidden = functional_call(bundle.model.model, weights, args=(), kwargs={**inputs, "use_cache": False})
        hidden = hidden.last_hidden_state  # (B, T, H)
    return completion_hidden(hidden, prompt["input_ids"].shape[1], completions)


def completion_hidden(hidden: torch.Tensor, prompt_width: int, completions: list[list[int]]) -> torch.Tensor:
    """Hidden states (N, H) at the positions predicting each completion token, rows concatenated."""
    rows = [hidden[row, prompt_width - 1 : prompt_width - 1 + len(c)] for row, c in enumerate(completions)]
    return torch.cat(rows, dim=0)
