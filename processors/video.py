"""Video processor: path, bytes or frames → a `VideoClip` of sampled, resized uint8 frames and their times.

Frames are sampled the way qwen-vl-utils does (its `smart_nframes`, `calculate_video_frame_range` and
`smart_resize`: fps or a fixed count, min/max frames, an even count for the temporal patch, a total
pixel budget shared by the frames). Unlike qwen-vl-utils it decodes with decord and falls back to PyAV
when decord cannot open or decode the file (AV1, some MPEG-TS), decodes and resizes in chunks (memory
stays near the output size) with Pillow's bicubic filter (qwen-vl-utils uses torchvision's: within a
fraction of a grey level, and faster on CPU), and refuses over-long or oversized videos with a `MediaError`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils.vision_process import (
    FRAME_FACTOR,
    VIDEO_MAX_TOKEN_NUM,
    VIDEO_MIN_TOKEN_NUM,
    calculate_video_frame_range,
    smart_nframes,
    smart_resize,
)

from mmopd.processors import resolve_path
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef

DECODE_CHUNK = 16
"""Frames decoded at source resolution at once, before they are resized."""


@dataclass(frozen=True)
class VideoClip:
    """Sampled frames of one video, ready for a Qwen-VL style processor (which must not resize again)."""

    frames: torch.Tensor
    """(T, 3, H, W) uint8 RGB; H and W are multiples of the processor's `factor`, T is even."""
    timestamps: list[float]
    """Time in seconds of each sampled frame in the source."""
    fps: float
    """Frames per second of the sampled frames (Qwen2.5-VL's `second_per_grid_ts` is 2 / fps)."""

    def metadata(self) -> dict[str, Any]:
        """`video_metadata` for a transformers video processor (frames already sampled): its
        `sampled_fps` is `fps`; its timestamps, index / fps, count from the first sampled frame."""
        count = self.frames.shape[0]
        return {"total_num_frames": count, "fps": self.fps, "frames_indices": list(range(count))}


@PROCESSORS.register("video")
@dataclass(frozen=True)
class VideoProcessor:
    """Videos to `VideoClip`s: frames sampled by fps or count, resized within a total pixel budget."""

    kind: ClassVar[str] = "video"

    fps: float = 2.0
    """Frames sampled per second of video (ignored when `nframes` is set); also the frame rate assumed
    for in-memory frames (an array or a list of images)."""
    nframes: int = 0
    """Sample exactly this many frames (rounded to an even count); 0 samples by `fps`."""
    min_frames: int = 4
    """Fewest frames sampled by `fps` (a video with fewer frames gives all of them)."""
    max_frames: int = 768
    """Most frames sampled by `fps`."""
    min_pixels: int = VIDEO_MIN_TOKEN_NUM * 28 * 28
    """Smallest area (height * width) of a resized frame; smaller frames are upscaled."""
    max_pixels: int = VIDEO_MAX_TOKEN_NUM * 28 * 28
    """Largest area of a resized frame; the total budget may make it smaller."""
    total_pixels: int = 20480 * 28 * 28
    """Pixel budget of all sampled frames together: each frame gets at most total_pixels / T * 2."""
    factor: int = 28
    """Both sides of a resized frame are multiples of this (vision patch 14 * spatial merge 2)."""
    max_duration_s: float = 600.0
    """Longest video accepted, in seconds (see `over_duration`)."""
    over_duration: str = "refuse"
    """A video longer than `max_duration_s`: refuse (a MediaError) | truncate (sample only its start)."""
    max_decoded_pixels: int = 7680 * 4320
    """Largest source frame area (height * width) decoded; larger videos are refused after one frame."""
    decoder: str = "auto"
    """auto (decord; PyAV when decord cannot open or decode the file, or is not installed) | decord | pyav."""
    allow_outside_root: bool = False
    """Allow relative paths that leave their media root (`../`); off so datasets cannot read any file."""

    def __post_init__(self) -> None:
        if self.decoder not in DECODER_ORDER:
            raise ValueError(f"decoder must be one of {sorted(DECODER_ORDER)}, got {self.decoder!r}")
        if self.fps <= 0 or self.nframes < 0:
            raise ValueError(f"need fps > 0 and nframes >= 0, got {self.fps} and {self.nframes}")
        if not 0 < self.min_frames <= self.max_frames:
            raise ValueError(f"need 0 < min_frames <= max_frames, got {self.min_frames} and {self.max_frames}")
        if not 0 < self.min_pixels <= self.max_pixels or self.total_pixels <= 0 or self.factor <= 0:
            raise ValueError("need 0 < min_pixels <= max_pixels, total_pixels > 0 and factor > 0")
        if self.max_duration_s <= 0 or self.max_decoded_pixels <= 0:
            raise ValueError("max_duration_s and max_decoded_pixels must be positive")
        if self.over_duration not in ("refuse", "truncate"):
            raise ValueError(f"over_duration must be refuse or truncate, got {self.over_duration!r}")

    def load(self, ref: MediaRef, sample_id: str) -> VideoClip:
        """Decode, sample and resize `ref`; any problem raises `MediaError(sample_id, file, reason)`."""
        source = ref.describe()
        media = self._media(ref, sample_id)
        if isinstance(media, np.ndarray):
            return self._load(_ArrayFrames(media, self.fps), sample_id, source)
        failures = []
        for decoder in DECODER_ORDER[self.decoder]:
            try:
                return self._load(DECODERS[decoder](media), sample_id, source)
            except MediaError:
                raise
            except Exception as error:  # decord and PyAV raise many kinds for broken streams
                lines = str(error).strip().splitlines() or [""]
                failures.append(f"{decoder}: {type(error).__name__}: {lines[0]}")
        raise MediaError(sample_id, source, f"cannot decode video ({'; '.join(failures)})")

    def _load(self, video: _Frames, sample_id: str, source: str) -> VideoClip:
        if video.total_frames <= 0:
            raise MediaError(sample_id, source, "the video holds no frame")
        if not video.fps > 0:  # also catches NaN
            raise MediaError(sample_id, source, f"no usable frame rate ({video.fps})")
        duration = video.total_frames / video.fps
        video_end = None
        if duration > self.max_duration_s:
            if self.over_duration == "refuse":
                raise MediaError(sample_id, source, f"{duration:.1f} s exceeds max_duration_s={self.max_duration_s}")
            video_end = self.max_duration_s
        start, end, count = calculate_video_frame_range({"video_end": video_end}, video.total_frames, video.fps)
        by_fps = {"fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames}
        wanted = {"nframes": self.nframes} if self.nframes else by_fps
        try:
            nframes = smart_nframes(wanted, total_frames=count, video_fps=video.fps)
        except ValueError as error:  # fewer frames than the temporal patch, or than `nframes`
            raise MediaError(sample_id, source, f"too few frames ({count}) to sample: {error}") from error
        indices = torch.linspace(start, end, nframes).round().long().tolist()
        chunks, timestamps, target = [], [], None
        for frames, times in video.read(indices):  # frames (n, H, W, 3) uint8
            if target is None:
                target = self._target_size(frames.shape[1], frames.shape[2], nframes, sample_id, source)
            chunks.append(torch.from_numpy(resize_frames(frames, target)).permute(0, 3, 1, 2))  # (n, 3, H, W)
            timestamps.extend(times)
        if len(timestamps) != nframes:
            raise MediaError(sample_id, source, f"decoded {len(timestamps)} of {nframes} sampled frames (truncated?)")
        return VideoClip(torch.cat(chunks), timestamps, nframes / count * video.fps)

    def _target_size(self, height: int, width: int, nframes: int, sample_id: str, source: str) -> tuple[int, int]:
        if height * width > self.max_decoded_pixels:
            raise MediaError(
                sample_id, source, f"{width}x{height} frames exceed max_decoded_pixels={self.max_decoded_pixels}"
            )
        # qwen-vl-utils' per-frame cap: the budget split over frames, never below min_pixels.
        budget = min(self.max_pixels, self.total_pixels / nframes * FRAME_FACTOR)
        max_pixels = max(budget, int(self.min_pixels * 1.05))
        try:
            return smart_resize(height, width, self.factor, self.min_pixels, max_pixels)
        except ValueError as error:  # an aspect ratio beyond what the vision tower accepts
            raise MediaError(sample_id, source, str(error)) from error

    def _media(self, ref: MediaRef, sample_id: str) -> str | bytes | np.ndarray:
        """A file path or bytes for a decoder, or in-memory frames (T, H, W, 3) uint8."""
        if ref.path is not None:
            path = resolve_path(ref, sample_id, self.allow_outside_root)
            if path.stat().st_size == 0:
                raise MediaError(sample_id, ref.describe(), "empty file (0 bytes)")
            return str(path)
        data = ref.data
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise MediaError(sample_id, ref.describe(), "empty data (0 bytes)")
            return bytes(data)
        if isinstance(data, (np.ndarray, torch.Tensor, list, tuple)):
            return frames_array(data, sample_id, ref.describe())
        raise MediaError(
            sample_id, ref.describe(), f"expected a path, bytes, frames or images, got {type(data).__name__}"
        )


class _Frames(Protocol):
    """A decodable video: frame count, frame rate, and `read(indices)` in chunks of (frames, times)."""

    total_frames: int
    fps: float

    def read(self, indices: list[int]) -> Iterator[tuple[np.ndarray, list[float]]]:
        """Chunks of (frames (n, H, W, 3) uint8, their times in seconds), covering `indices` in order."""
        ...


class _DecordFrames:
    def __init__(self, source: str | bytes):
        import decord

        self._reader = decord.VideoReader(io.BytesIO(source) if isinstance(source, bytes) else source)
        self.total_frames, self.fps = len(self._reader), float(self._reader.get_avg_fps())

    def read(self, indices: list[int]) -> Iterator[tuple[np.ndarray, list[float]]]:
        for begin in range(0, len(indices), DECODE_CHUNK):
            chunk = indices[begin : begin + DECODE_CHUNK]
            frames = self._reader.get_batch(chunk).asnumpy()  # (n, H, W, 3)
            yield frames, self._reader.get_frame_timestamp(chunk)[:, 0].tolist()


class _PyAVFrames:
    """Sequential decoding: slower than decord's seeking, but reads what decord cannot."""

    def __init__(self, source: str | bytes):
        self._source = source
        with self._container() as container:
            if not container.streams.video:
                raise ValueError("no video stream: the file holds no frame")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            # Containers that do not store a frame count: count the packets (no decoding).
            self.total_frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            # Timestamps count from the stream's first frame (MPEG-TS, for one, starts later than 0).
            self._start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0

    def _container(self) -> Any:
        import av

        return av.open(io.BytesIO(self._source) if isinstance(self._source, bytes) else self._source)

    def read(self, indices: list[int]) -> Iterator[tuple[np.ndarray, list[float]]]:
        wanted: dict[int, int] = {}
        for index in indices:
            wanted[index] = wanted.get(index, 0) + 1  # a repeated index gives the frame twice, as decord does
        frames, times = [], []
        with self._container() as container:
            for position, frame in enumerate(container.decode(video=0)):
                if position > indices[-1]:
                    break
                for _ in range(wanted.get(position, 0)):
                    frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                    times.append(frame.time - self._start if frame.time is not None else position / self.fps)
                if len(frames) >= DECODE_CHUNK:
                    yield np.stack(frames), times
                    frames, times = [], []
        if frames:
            yield np.stack(frames), times


DECODERS = {"decord": _DecordFrames, "pyav": _PyAVFrames}
DECODER_ORDER = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}
"""auto: decord seeks fast; PyAV reads what decord's older FFmpeg cannot (AV1, some MPEG-TS files)."""


class _ArrayFrames:
    def __init__(self, frames: np.ndarray, fps: float):
        self._frames, self.total_frames, self.fps = frames, len(frames), fps

    def read(self, indices: list[int]) -> Iterator[tuple[np.ndarray, list[float]]]:
        for begin in range(0, len(indices), DECODE_CHUNK):
            chunk = indices[begin : begin + DECODE_CHUNK]
            yield self._frames[chunk], [index / self.fps for index in chunk]


def resize_frames(frames: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8 frames resized to `target` (height, width) with Pillow's bicubic filter, as
    the image processor does (antialiased when shrinking; faster than torchvision's on CPU here)."""
    height, width = target
    if frames.shape[1:3] == target:
        return np.ascontiguousarray(frames)
    resized = [Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC) for frame in frames]
    return np.stack([np.asarray(image) for image in resized])  # (n, H', W', 3)


def frames_array(data: Any, sample_id: str, source: str) -> np.ndarray:
    """In-memory frames as a (T, H, W, 3) uint8 array: a NumPy array (T, H, W, 3), a torch tensor
    (T, 3, H, W) (each library's usual layout), or a list of PIL images."""
    if isinstance(data, (list, tuple)):
        if not all(isinstance(image, Image.Image) for image in data):
            raise MediaError(sample_id, source, "a list of frames must hold PIL images")
        sizes = {image.size for image in data}
        if len(sizes) > 1:
            raise MediaError(sample_id, source, f"frames differ in size: {sorted(sizes)}")
        return (
            np.stack([np.asarray(image.convert("RGB")) for image in data]) if data else np.zeros((0, 1, 1, 3), np.uint8)
        )
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
    array = data.permute(0, 2, 3, 1).numpy() if isinstance(data, torch.Tensor) and data.ndim == 4 else np.asarray(data)
    if array.ndim != 4 or array.shape[3] != 3 or array.dtype != np.uint8:
        layout = "(T, 3, H, W) tensor" if isinstance(data, torch.Tensor) else "(T, H, W, 3) array"
        raise MediaError(sample_id, source, f"expected a uint8 {layout}, got {array.dtype} {tuple(data.shape)}")
    return array
