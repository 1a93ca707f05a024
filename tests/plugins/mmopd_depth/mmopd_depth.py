"""Depth maps for mmopd, as a third-party plug-in: a .npy depth map (H, W) in metres becomes a
colour-mapped RGB image, so an image student reads it; `near_far` asks whether a square is near or far.

Nothing here is imported by mmopd: it is found through the `mmopd.processors` and `mmopd.tasks`
entry points, and a config feeds depth maps to the student with `data.processors: {image: depth_map}`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import matplotlib
import numpy as np
from PIL import Image

from mmopd.processors import resolve_path
from mmopd.processors.image import ImageProcessor
from mmopd.sample import MediaError, MediaRef, Sample
from mmopd.tasks import LazySamples, normalise_answer

QUESTION = "Is the square near or far?"


@dataclass(frozen=True)
class DepthMapProcessor:
    """Depth maps (a .npy file or an array, (H, W) in metres) to RGB images sized like mmopd's images."""

    kind: ClassVar[str] = "depth"

    near: float = 0.0
    """Depth drawn with the first colour of the colour map."""
    far: float = 10.0
    """Depth drawn with the last colour of the colour map."""
    colormap: str = "viridis"
    """A matplotlib colour map."""

    def load(self, ref: MediaRef, sample_id: str) -> Image.Image:
        depth = self._read(ref, sample_id)
        if depth.ndim != 2 or depth.size == 0 or not np.isfinite(depth).all():
            raise MediaError(sample_id, ref.describe(), f"expected a finite (H, W) depth map, got {depth.shape}")
        scaled = np.clip((depth - self.near) / (self.far - self.near), 0.0, 1.0)  # (H, W)
        rgb = (matplotlib.colormaps[self.colormap](scaled)[..., :3] * 255).round().astype(np.uint8)  # (H, W, 3)
        return ImageProcessor().load(MediaRef(kind="image", data=Image.fromarray(rgb)), sample_id)

    def _read(self, ref: MediaRef, sample_id: str) -> np.ndarray:
        if ref.path is None:
            return np.asarray(ref.data, dtype=np.float32)
        path = resolve_path(ref, sample_id, allow_outside_root=False)
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as error:
            raise MediaError(sample_id, ref.describe(), f"cannot read depth map: {error}") from error


@dataclass(frozen=True)
class NearFarTask:
    """A square 1 m or 9 m away in front of a wall 5 m away: is it near or far?"""

    name: ClassVar[str] = "near_far"

    size: int = 56
    """Side of the depth maps."""
    num_train: int = 1000
    """Training samples."""
    num_eval: int = 32
    """Evaluation samples."""

    def sample(self, split: str, index: int) -> Sample:
        rng = random.Random(f"{split}-{index}")
        answer = rng.choice(["near", "far"])
        depth = np.full((self.size, self.size), 5.0, np.float32)  # (H, W) the wall
        side = rng.randrange(self.size // 2, self.size * 3 // 4)
        top, left = rng.randrange(self.size - side), rng.randrange(self.size - side)
        depth[top : top + side, left : left + side] = 1.0 if answer == "near" else 9.0
        content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
        return Sample(
            id=f"{split}-{index}",
            messages=[{"role": "user", "content": content}],
            images=[MediaRef(kind="image", data=depth)],
            privileged=f"The square is {answer}.",
            answer=answer,
        )

    def train_samples(self) -> LazySamples:
        return LazySamples(self.num_train, lambda index: self.sample("train", index))

    def eval_samples(self) -> LazySamples:
        return LazySamples(self.num_eval, lambda index: self.sample("eval", index))

    def verify(self, completion: str, sample: Sample) -> bool:
        return normalise_answer(completion) == sample.answer

    def corpus(self) -> list[str]:
        return [QUESTION, "The square is near.", "The square is far.", "near", "far"]
