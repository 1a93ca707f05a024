"""Good and bad media files, generated on the spot (PyAV/libx264, NumPy → soundfile, Pillow), for the
processor tests, `mmopd data check` and training over bad samples.

Each `bad_*` function writes one kind of broken file under a directory and returns its path relative
to that directory; `BAD_MEDIA` lists them with the media kind they pose as and a fragment of the
reason a processor gives; `refusal` writes one and returns the processor's MediaError. `write_jsonl`
turns (kind, path) items into a JSONL dataset of the `jsonl` task (training over bad samples reuses it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
from PIL import Image

from mmopd.sample import MediaError, MediaRef


def video_frames(count: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: a bright square that moves right one step per frame over noise."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 64, size=(count, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)
    side = max(height // 3, 2)
    for index in range(count):
        left = (index * 3) % max(width - side, 1)
        frames[index, height // 3 : height // 3 + side, left : left + side] = 255
    return frames


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 10,
    container_format: str | None = None,
    faststart: bool = False,
    codec: str = "libx264",
) -> Path:
    """Encode (T, H, W, 3) uint8 frames (H.264 in MP4 unless the suffix or arguments say otherwise);
    `faststart` puts the MP4 index before the frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header even when there is no frame
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def tone(seconds: float, sampling_rate: int = 16000, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    """(S, C) float32 sine wave at half amplitude, a different frequency per channel."""
    time = np.arange(int(round(seconds * sampling_rate))) / sampling_rate  # (S,)
    waves = [0.5 * np.sin(2 * math.pi * frequency * (channel + 1) * time) for channel in range(channels)]
    return np.stack(waves, axis=1).astype(np.float32)  # (S, C)


def write_audio(path: Path, samples: np.ndarray, sampling_rate: int = 16000, subtype: str | None = None) -> Path:
    """Write (S,) or (S, C) samples; the suffix picks the format (.wav, .flac, .ogg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sampling_rate, subtype=subtype)
    return path


def write_image(path: Path, size: tuple[int, int] = (56, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


# --- bad files: each writes under `root` and returns the path relative to it ---------------------


def bad_truncated_mp4(root: Path) -> str:
    """The first half of a valid MP4 whose index is at the end: the index is lost."""
    data = write_video(root / "full.mp4", video_frames(20)).read_bytes()
    (root / "full.mp4").unlink()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return "truncated.mp4"


def bad_truncated_faststart_mp4(root: Path) -> str:
    """The first half of a valid MP4 whose index is at the start: it opens, then frames run out."""
    data = write_video(root / "full_faststart.mp4", video_frames(40), faststart=True).read_bytes()
    (root / "full_faststart.mp4").unlink()
    (root / "truncated_faststart.mp4").write_bytes(data[: len(data) // 2])
    return "truncated_faststart.mp4"


def bad_corrupt_mp4(root: Path) -> str:
    """A valid MP4 whose every byte after the first 32 is replaced by noise."""
    data = bytearray(write_video(root / "corrupt.mp4", video_frames(20)).read_bytes())
    data[32:] = np.random.default_rng(0).integers(0, 256, len(data) - 32, dtype=np.uint8).tobytes()
    (root / "corrupt.mp4").write_bytes(bytes(data))
    return "corrupt.mp4"


def bad_zero_frame_mp4(root: Path) -> str:
    """An MP4 written with a video stream and no frame (the muxer then drops the empty stream)."""
    write_video(root / "zero_frames.mp4", video_frames(0))
    return "zero_frames.mp4"


def bad_zero_byte_mp4(root: Path) -> str:
    (root / "empty.mp4").write_bytes(b"")
    return "empty.mp4"


def bad_text_as_mp4(root: Path) -> str:
    """A text file with a video extension."""
    (root / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    return "notes.mp4"


def bad_long_video(root: Path) -> str:
    """A valid 6-second video: over the limit of a processor with max_duration_s below 6."""
    write_video(root / "long.mp4", video_frames(60, seed=1), fps=10)
    return "long.mp4"


def bad_truncated_wav(root: Path) -> str:
    """The first 60 bytes of a WAV: the header survives, almost no sample does."""
    data = write_audio(root / "full.wav", tone(1.0)).read_bytes()
    (root / "full.wav").unlink()
    (root / "truncated.wav").write_bytes(data[:60])
    return "truncated.wav"


def bad_corrupt_wav(root: Path) -> str:
    """A RIFF tag followed by noise."""
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (root / "corrupt.wav").write_bytes(b"RIFF" + noise)
    return "corrupt.wav"


def bad_zero_byte_wav(root: Path) -> str:
    (root / "empty.wav").write_bytes(b"")
    return "empty.wav"


def bad_zero_length_wav(root: Path) -> str:
    """A well-formed WAV with no sample."""
    write_audio(root / "no_samples.wav", np.zeros((0, 1), dtype=np.float32))
    return "no_samples.wav"


def bad_nonfinite_wav(root: Path) -> str:
    """A 32-bit float WAV with NaN and infinite samples."""
    samples = tone(0.5)
    samples[100:110] = np.nan
    samples[200] = np.inf
    write_audio(root / "nonfinite.wav", samples, subtype="FLOAT")
    return "nonfinite.wav"


def bad_video_as_wav(root: Path) -> str:
    """An MP4 with an audio extension."""
    write_video(root / "video.wav", video_frames(4), container_format="mp4")
    return "video.wav"


def bad_long_audio(root: Path) -> str:
    """A valid 3-second tone: over the limit of a processor with max_duration_s below 3."""
    write_audio(root / "long.wav", tone(3.0))
    return "long.wav"


def bad_missing(root: Path) -> str:
    return "no_such_file.mp4"


def bad_escaping_path(root: Path) -> str:
    """A real file one directory above the root, named through `../`."""
    write_audio(root.parent / "outside.wav", tone(0.2))
    return "../outside.wav"


# (kind the file poses as, writer, fragment of the reason) for every bad file above
BAD_MEDIA: dict[str, tuple[str, Callable[[Path], str], str]] = {
    "truncated_mp4": ("video", bad_truncated_mp4, "cannot decode"),
    "truncated_faststart_mp4": ("video", bad_truncated_faststart_mp4, "cannot decode"),
    "corrupt_mp4": ("video", bad_corrupt_mp4, "cannot decode"),
    "zero_frame_mp4": ("video", bad_zero_frame_mp4, "no frame"),
    "zero_byte_mp4": ("video", bad_zero_byte_mp4, "0 bytes"),
    "text_as_mp4": ("video", bad_text_as_mp4, "cannot decode"),
    "long_video": ("video", bad_long_video, "max_duration_s"),
    "missing_video": ("video", bad_missing, "not found"),
    "truncated_wav": ("audio", bad_truncated_wav, "cannot decode"),
    "corrupt_wav": ("audio", bad_corrupt_wav, "cannot decode"),
    "zero_byte_wav": ("audio", bad_zero_byte_wav, "0 bytes"),
    "zero_length_wav": ("audio", bad_zero_length_wav, "no samples"),
    "nonfinite_wav": ("audio", bad_nonfinite_wav, "non-finite"),
    "video_as_wav": ("audio", bad_video_as_wav, "cannot decode"),
    "long_audio": ("audio", bad_long_audio, "max_duration_s"),
    "escaping_audio": ("audio", bad_escaping_path, "outside the media root"),
}
LIMITS = {"video": {"max_duration_s": 4.0}, "audio": {"max_duration_s": 2.0}}
"""Processor arguments under which the `long_*` files are over the limit and every good file is fine."""


def bad_names(kind: str) -> list[str]:
    """The names in `BAD_MEDIA` of the bad files posing as `kind` media."""
    return [name for name, (bad_kind, _, _) in BAD_MEDIA.items() if bad_kind == kind]


def refusal(processor: Any, name: str, directory: Path, sample_id: str) -> tuple[str, str, MediaError]:
    """Write bad file `name` under `directory`/data and load it with `processor`: (its relative path,
    the expected reason fragment, the MediaError raised). Raises AssertionError if it was accepted."""
    kind, write, reason = BAD_MEDIA[name]
    root = directory / "data"
    root.mkdir(exist_ok=True)
    relative = write(root)
    try:
        processor.load(MediaRef(kind=kind, path=relative, root=str(root)), sample_id)
    except MediaError as error:
        return relative, reason, error
    raise AssertionError(f"{type(processor).__name__} accepted the bad file {relative} ({name})")


def write_jsonl(path: Path, items: Sequence[tuple[str, str]]) -> Path:
    """A `jsonl` task file with one sample per (kind, relative path) item, in order, ids "s0", "s1"..."""
    lines = []
    for index, (kind, media_path) in enumerate(items):
        content = [{"type": kind}, {"type": "text", "text": f"What is in this {kind}?"}]
        record = {"id": f"s{index}", "messages": [{"role": "user", "content": content}], f"{kind}s": [media_path]}
        record.update(privileged=f"A {kind} numbered {index}.", answer=str(index))
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path
