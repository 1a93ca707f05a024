"""Tones: a synthetic audio question task ("Which tone is higher, the first or the second?", "How many
beeps are there?") with an exact verifier.

Each clip is a WAV file (NumPy sine tones written with soundfile), written once into a cache folder and
generated deterministically from (seed, split, index). The signal is made large for a 2-layer
Whisper-style encoder: of two tones one is low and one high (a factor of 4 or more apart), and beeps
have a fixed length with silence between them, so the sounding share of the clip grows with their count. The
privileged text states the pitches or the count, so a text-only teacher knows the answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile

from mmopd.registry import TASKS
from mmopd.sample import MediaRef, Sample
from mmopd.tasks import NUMBER_WORDS, LazySamples, check_choices, matches_answer, media_cache, write_once

LOW, HIGH = (250, 315, 400), (1600, 2000, 2500)  # Hz: two bands at least a factor 4 apart
FREQUENCIES = (*LOW, *HIGH)
GENERATOR_VERSION = 2  # part of the cache folder name: bump it when the sound of a sample changes
BEEP_SECONDS = 0.2  # long enough that the sounding share of the clip (0.2-0.8) tells the count
QUESTION_TEXT = {"higher": "Which tone is higher, the first or the second?", "beeps": "How many beeps are there?"}
FADE_SECONDS = 0.005  # raised-cosine edges: no clicks, whose broadband energy would blur the pitch


@TASKS.register("tones")
@dataclass(frozen=True)
class TonesTask:
    """Questions about which of two tones is higher, or how many beeps a clip holds."""

    name: ClassVar[str] = "tones"

    sampling_rate: int = 16_000
    """Sampling rate of the written WAV files, in Hz."""
    duration: float = 1.0
    """Length of every clip, in seconds (keep it within the student's `audio_seconds`)."""
    questions: tuple[str, ...] = ("higher", "beeps")
    """Question kinds asked: "higher" (first or second) and/or "beeps" (one to `max_beeps`)."""
    max_beeps: int = 4
    """Beep questions play one to this many beeps (at most 4)."""
    num_train: int = 20_000
    """Number of training samples."""
    num_eval: int = 256
    """Number of evaluation samples."""
    seed: int = 0
    """Seed of the generator; each sample depends only on (seed, split, index)."""
    cache_dir: str = ""
    """Folder the WAV files are written into (default ~/.cache/mmopd); each file is written once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "questions", tuple(self.questions))
        check_choices("questions", self.questions, QUESTION_TEXT)
        if not 1 <= self.max_beeps <= 4:
            raise ValueError(f"max_beeps must be between 1 and 4, got {self.max_beeps}")
        if self.duration < 0.5 or self.sampling_rate < 8_000:
            raise ValueError("duration must be at least 0.5 s and sampling_rate at least 8000 Hz")
        if self.num_train < 0 or self.num_eval < 0:
            raise ValueError(f"num_train and num_eval must be >= 0, got {self.num_train} and {self.num_eval}")

    @property
    def folder(self) -> Path:
        fingerprint = (GENERATOR_VERSION, self.sampling_rate, self.duration, self.questions, self.max_beeps, self.seed)
        return media_cache(self.cache_dir, "tones", fingerprint)

    def train_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_train, lambda index: self.sample("train", index))

    def eval_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_eval, lambda index: self.sample("eval", index))

    def sample(self, split: str, index: int) -> Sample:
        """Sample `index` of `split`, the same on every call, process and machine; writes its WAV once."""
        rng = random.Random(f"{self.seed}/{split}/{index}")
        question = rng.choice(self.questions)
        if question == "higher":
            first, second = _two_pitches(rng)
            waveform = self._tones(rng, [first, second], self.duration * 0.45)
            answer = "first" if first > second else "second"
            privileged = _describe_pitches(first, second)
        else:
            count = rng.randint(1, self.max_beeps)
            frequency = rng.choice(FREQUENCIES)
            waveform = self._tones(rng, [frequency] * count, BEEP_SECONDS)
            answer = NUMBER_WORDS[count]
            privileged = _describe_beeps(count, frequency)
        relative = f"{split}/{index}.wav"
        write_once(self.folder / relative, lambda path: soundfile.write(path, waveform, self.sampling_rate))
        return Sample(
            id=f"tones/{split}/{index}",
            messages=[
                {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": QUESTION_TEXT[question]}]}
            ],
            audios=[MediaRef(kind="audio", path=relative, root=str(self.folder))],
            privileged=privileged,
            answer=answer,
            meta={"question": question},
        )

    def verify(self, completion: str, sample: Sample) -> bool:
        return matches_answer(completion, sample)

    def corpus(self) -> Iterator[str]:
        yield from (QUESTION_TEXT[q] for q in self.questions)
        for first in FREQUENCIES:
            for second in FREQUENCIES:
                if first != second:
                    yield _describe_pitches(first, second)
            for count in range(1, self.max_beeps + 1):
                yield _describe_beeps(count, first)
        yield from ("first", "second", *NUMBER_WORDS[1 : self.max_beeps + 1])

    def _tones(self, rng: random.Random, frequencies: list[int], seconds: float) -> np.ndarray:
        """Tones of `seconds` each, one per equal slot of the clip, placed with jitter: (S,) float32."""
        total = round(self.duration * self.sampling_rate)
        waveform = np.zeros(total, dtype=np.float32)
        slot = total // len(frequencies)
        margin = slot // 20  # each tone keeps 5% of its slot silent on both sides: never two tones touch
        length = min(round(seconds * self.sampling_rate), slot - 2 * margin)
        for position, frequency in enumerate(frequencies):
            start = position * slot + margin + rng.randint(0, slot - 2 * margin - length)
            time = np.arange(length) / self.sampling_rate
            tone = 0.5 * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi))
            waveform[start : start + length] = tone * _envelope(length, self.sampling_rate)
        return waveform


def _two_pitches(rng: random.Random) -> tuple[int, int]:
    """A low and a high pitch, in random order."""
    pair = [rng.choice(LOW), rng.choice(HIGH)]
    rng.shuffle(pair)
    return pair[0], pair[1]


def _envelope(length: int, rate: int) -> np.ndarray:
    edge = max(1, int(FADE_SECONDS * rate))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
    envelope = np.ones(length)
    envelope[:edge], envelope[-edge:] = ramp, ramp[::-1]
    return envelope


def _describe_pitches(first: int, second: int) -> str:
    higher = "first" if first > second else "second"
    return f"A {first} Hz tone, then a {second} Hz tone: the {higher} is higher."


def _describe_beeps(count: int, frequency: int) -> str:
    return f"The audio plays {NUMBER_WORDS[count]} beep{'s' if count > 1 else ''} at {frequency} Hz."
