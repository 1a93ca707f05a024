"""Image processor: path, bytes or PIL image → validated RGB PIL image sized for a Qwen-VL style model.

The target size comes from qwen-vl-utils' `smart_resize` (both sides divisible by patch x merge,
area within [min_pixels, max_pixels], aspect ratio kept), so the student's processor does no further
resizing. The pixel count is checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image, ImageOps
from qwen_vl_utils.vision_process import smart_resize

from mmopd.processors import resolve_path
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef


@PROCESSORS.register("image")
@dataclass(frozen=True)
class ImageProcessor:
    """Images to RGB PIL images whose sides are multiples of `factor` and area within the pixel bounds."""

    kind: ClassVar[str] = "image"

    min_pixels: int = 56 * 56
    """Smallest area (height * width) of a resized image; smaller images are upscaled."""
    max_pixels: int = 448 * 448
    """Largest area (height * width) of a resized image; larger images are downscaled."""
    max_decoded_pixels: int = 64_000_000
    """Largest area an image may declare in its header; larger ones are refused before decoding."""
    factor: int = 28
    """Both sides of the resized image are multiples of this (vision patch 14 * spatial merge 2)."""
    allow_outside_root: bool = False
    """Allow relative paths that leave their media root (`../`); off so datasets cannot read any file."""
    blank: bool = False
    """Replace every decoded image by a black one of the same size: an image-free ablation, and the fault that
    configs/recipes/blind_teacher.yaml gives its teacher (teacher.processor_args.image.blank) to show that
    teacher.blind_check stops a teacher that cannot see. Never on for a real run."""

    def __post_init__(self) -> None:
        if self.factor <= 0:
            raise ValueError(f"factor must be positive, got {self.factor}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")
        if self.max_decoded_pixels <= 0:
            raise ValueError(f"max_decoded_pixels must be positive, got {self.max_decoded_pixels}")

    def load(self, ref: MediaRef, sample_id: str) -> Image.Image:
        """Decode `ref` into an RGB image of the target size; any problem raises `MediaError`."""
        image = self._decode(ref, sample_id)
        width, height = image.size
        try:
            target_height, target_width = smart_resize(
                height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        except ValueError as error:  # an aspect ratio beyond what the vision tower accepts
            raise MediaError(sample_id, ref.describe(), str(error)) from error
        if (target_width, target_height) != (width, height):
            image = image.resize((target_width, target_height), Image.Resampling.BICUBIC)
        if self.blank:
            return Image.new("RGB", image.size)
        return image

    def _decode(self, ref: MediaRef, sample_id: str) -> Image.Image:
        source = ref.describe()
        try:
            # PIL only warns between its own limit and twice it; treat that as the error it is.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if ref.path is None and isinstance(ref.data, Image.Image):
                    return self._to_rgb(ref.data, sample_id, source)  # the caller's image: never close it
                with self._open(ref, sample_id) as image:
                    return self._to_rgb(image, sample_id, source)
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise MediaError(sample_id, source, f"refused as a decompression bomb: {error}") from error
        except Exception as error:  # PIL raises OSError, SyntaxError, zlib/struct errors... for bad files
            raise MediaError(sample_id, source, f"cannot decode image: {type(error).__name__}: {error}") from error

    def _open(self, ref: MediaRef, sample_id: str) -> Image.Image:
        if ref.path is not None:
            path = resolve_path(ref, sample_id, self.allow_outside_root)
            if path.stat().st_size == 0:
                raise MediaError(sample_id, ref.describe(), "empty file (0 bytes)")
            return Image.open(path)
        if isinstance(ref.data, (bytes, bytearray, memoryview)):
            if len(ref.data) == 0:
                raise MediaError(sample_id, ref.describe(), "empty data (0 bytes)")
            return Image.open(io.BytesIO(ref.data))
        raise MediaError(
            sample_id, ref.describe(), f"expected a path, bytes or a PIL image, got {type(ref.data).__name__}"
        )

    def _to_rgb(self, image: Image.Image, sample_id: str, source: str) -> Image.Image:
        width, height = image.size  # from the header: no pixel has been decoded yet
        if width * height > self.max_decoded_pixels:
            raise MediaError(
                sample_id, source, f"{width}x{height} exceeds max_decoded_pixels={self.max_decoded_pixels}"
            )
        if width == 0 or height == 0:
            raise MediaError(sample_id, source, f"empty image ({width}x{height})")
        image.load()  # decode every pixel here so a truncated file fails now, not inside a later resize
        image = ImageOps.exif_transpose(image)  # phone photos store rotation as metadata
        if image.has_transparency_data:
            # Dropping alpha would expose whatever colour transparent pixels hold (often black).
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return image.convert("RGB")
