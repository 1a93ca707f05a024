"""Motion: a synthetic video question task ("Which way does the square move?", "How many squares are
there?") with an exact verifier.

Each video is a real H.264 MP4 (PyAV, libx264), written once into a cache folder and generated
deterministically from (seed, split, index). Squares are large (40% of the frame side for a moving one)
because a 2-layer vision tower stalls on small visual signals (DESIGN, measured). The privileged text
states the motion or the count exactly, so a text-only teacher knows the answer without the video.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np

from mmopd.registry import TASKS
from mmopd.sample import MediaRef, Sample
from mmopd.tasks import NUMBER_WORDS, LazySamples, check_choices, matches_answer, media_cache, write_once

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 20),
    "white": (255, 255, 255),
}
GENERATOR_VERSION = 1  # part of the cache folder name: bump it when the frames of a sample change
DIRECTIONS = ("left", "right", "up", "down")
QUESTION_TEXT = {"direction": "Which way does the square move?", "count": "How many squares are there?"}


@TASKS.register("motion")
@dataclass(frozen=True)
class MotionTask:
    """Questions about the direction of one moving square, or the number of squares, in a short video."""

    name: ClassVar[str] = "motion"

    frame_size: int = 56
    """Side of the square frames, in pixels (a multiple of 28 keeps one vision token per 28x28 block)."""
    num_frames: int = 8
    """Frames per video."""
    fps: float = 4.0
    """Frame rate written into the MP4 file."""
    questions: tuple[str, ...] = ("direction", "count")
    """Question kinds asked: "direction" (left, right, up, down) and/or "count" (one to `max_squares`)."""
    directions: tuple[str, ...] = DIRECTIONS
    """Directions a square may move in."""
    max_squares: int = 3
    """Count questions show one to this many still squares (at most 4)."""
    num_train: int = 20_000
    """Number of training samples."""
    num_eval: int = 256
    """Number of evaluation samples."""
    seed: int = 0
    """Seed of the generator; each sample depends only on (seed, split, index)."""
    cache_dir: str = ""
    """Folder the MP4 files are written into (default ~/.cache/mmopd); each file is written once."""

    def __post_init__(self) -> None:
        for field_name in ("questions", "directions"):
            object.__setattr__(self, field_name, tuple(getattr(self, field_name)))
        check_choices("questions", self.questions, QUESTION_TEXT)
        check_choices("directions", self.directions, DIRECTIONS)
        if self.frame_size < 28 or self.frame_size % 2:
            raise ValueError(f"frame_size must be even and at least 28, got {self.frame_size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be at least 2, got {self.num_frames}")
        if not 1 <= self.max_squares <= 4:
            raise ValueError(f"max_squares must be between 1 and 4, got {self.max_squares}")
        if self.fps <= 0 or self.num_train < 0 or self.num_eval < 0:
            raise ValueError("fps must be positive and num_train, num_eval non-negative")

    @property
    def folder(self) -> Path:
        fingerprint = (self.frame_size, self.num_frames, self.fps, self.questions, self.directions)
        return media_cache(self.cache_dir, "motion", (GENERATOR_VERSION, *fingerprint, self.max_squares, self.seed))

    def train_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_train, lambda index: self.sample("train", index))

    def eval_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_eval, lambda index: self.sample("eval", index))

    def sample(self, split: str, index: int) -> Sample:
        """Sample `index` of `split`, the same on every call, process and machine; writes its MP4 once."""
        rng = random.Random(f"{self.seed}/{split}/{index}")
        question = rng.choice(self.questions)
        colour = rng.choice(list(COLOUR_RGB))
        if question == "direction":
            direction = rng.choice(self.directions)
            frames = self._moving(rng, colour, direction)
            answer, privileged = direction, f"The video shows a {colour} square moving {direction}."
        else:
            count = rng.randint(1, self.max_squares)
            frames = self._still(rng, colour, count)
            answer = NUMBER_WORDS[count]
            privileged = f"The video shows {answer} {colour} square{'s' if count > 1 else ''}."
        relative = f"{split}/{index}.mp4"
        write_once(self.folder / relative, lambda path: write_mp4(path, frames, self.fps))
        return Sample(
            id=f"motion/{split}/{index}",
            messages=[
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION_TEXT[question]}]}
            ],
            videos=[MediaRef(kind="video", path=relative, root=str(self.folder))],
            privileged=privileged,
            answer=answer,
            meta={"question": question, "colour": colour},
        )

    def verify(self, completion: str, sample: Sample) -> bool:
        return matches_answer(completion, sample)

    def corpus(self) -> Iterator[str]:
        yield from (QUESTION_TEXT[q] for q in self.questions)
        for colour in COLOUR_RGB:
            for direction in self.directions:
                yield f"The video shows a {colour} square moving {direction}."
            for count in range(1, self.max_squares + 1):
                yield f"The video shows {NUMBER_WORDS[count]} {colour} square{'s' if count > 1 else ''}."
        yield from self.directions
        yield from NUMBER_WORDS[1 : self.max_squares + 1]

    def _moving(self, rng: random.Random, colour: str, direction: str) -> np.ndarray:
        """One square crossing the frame from edge to edge: (T, H, W, 3) uint8 on black."""
        size = self.frame_size
        side = round(size * 0.4)
        across = rng.randint(0, size - side)  # the coordinate that stays fixed
        frames = np.zeros((self.num_frames, size, size, 3), dtype=np.uint8)
        for t in range(self.num_frames):
            along = round(t * (size - side) / (self.num_frames - 1))  # 0 → far edge
            if direction in ("left", "up"):
                along = size - side - along
            top, left = (across, along) if direction in ("left", "right") else (along, across)
            frames[t, top : top + side, left : left + side] = COLOUR_RGB[colour]
        return frames

    def _still(self, rng: random.Random, colour: str, count: int) -> np.ndarray:
        """`count` squares, one per quadrant, standing still: (T, H, W, 3) uint8 on black."""
        size = self.frame_size
        half = size // 2
        side = round(half * 0.7)
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        for quadrant in rng.sample(range(4), count):
            top = (quadrant // 2) * half + rng.randint(0, half - side)
            left = (quadrant % 2) * half + rng.randint(0, half - side)
            frame[top : top + side, left : left + side] = COLOUR_RGB[colour]
        return np.repeat(frame[None], self.num_frames, axis=0)


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Frames (T, H, W, 3) uint8 RGB as an H.264 MP4 (yuv420p, near-lossless crf 10)."""
    import av  # only when clips are written: importing the task (every run does) stays free of PyAV

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
