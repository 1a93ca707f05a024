"""Audio processor: path, bytes or samples → a mono float32 `AudioClip` at the model's sampling rate.

Decodes wav/flac/ogg with soundfile (torchaudio's decoders when torchaudio can load files here),
downmixes to mono and resamples with `torchaudio.functional.resample`. The duration is checked from
the header before decoding; a WAV whose header promises more samples than the file holds is refused
as truncated (libsndfile would silently return the part that is there). Features (log-mel) are left
to the model's own Hugging Face feature extractor, so student and teacher may each use their own.
"""

from __future__ import annotations

import importlib.util
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
import torch
import torchaudio

from mmopd.processors import resolve_path
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef

RIFF_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
"""Data-chunk sizes that streaming WAV writers use for "unknown length"; not a sign of truncation."""


@dataclass(frozen=True)
class AudioClip:
    """One decoded audio item, ready for a Hugging Face feature extractor."""

    waveform: np.ndarray
    """(S,) float32 mono samples at `sampling_rate`."""
    sampling_rate: int
    """Samples per second: the processor's `sampling_rate`, the model's."""


@PROCESSORS.register("audio")
@dataclass(frozen=True)
class AudioProcessor:
    """Audio to mono float32 at the model's sampling rate, within a duration limit."""

    kind: ClassVar[str] = "audio"

    sampling_rate: int = 16000
    """The model's sampling rate (Whisper-style encoders such as Qwen2-Audio's use 16 kHz)."""
    max_duration_s: float = 30.0
    """Longest audio accepted, in seconds (Whisper-style encoders see 30 s); see `over_duration`."""
    over_duration: str = "refuse"
    """Audio longer than `max_duration_s`: refuse (a MediaError) | truncate (keep the first max_duration_s)."""
    allow_outside_root: bool = False
    """Allow relative paths that leave their media root (`../`); off so datasets cannot read any file."""

    def __post_init__(self) -> None:
        if self.sampling_rate <= 0 or self.max_duration_s <= 0:
            raise ValueError(f"need sampling_rate > 0 and max_duration_s > 0, got {self}")
        if self.over_duration not in ("refuse", "truncate"):
            raise ValueError(f"over_duration must be refuse or truncate, got {self.over_duration!r}")

    def load(self, ref: MediaRef, sample_id: str) -> AudioClip:
        """Decode `ref` to mono at `sampling_rate`; silence is valid, no samples or NaN/inf are not."""
        source = ref.describe()
        samples, rate = self._decode(ref, sample_id)  # (S, C)
        if samples.shape[0] == 0:
            raise MediaError(sample_id, source, "no samples (zero-length audio)")
        if not np.isfinite(samples).all():
            raise MediaError(sample_id, source, "non-finite samples (NaN or infinity)")
        if rate <= 0:
            raise MediaError(sample_id, source, f"invalid sampling rate {rate}")
        mono = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).mean(dim=1)  # (S,)
        limit = self._limit(mono.shape[0], rate, sample_id, source)
        mono = mono[:limit]
        if rate != self.sampling_rate:
            mono = torchaudio.functional.resample(mono, rate, self.sampling_rate)  # (S',)
        return AudioClip(mono.numpy(), self.sampling_rate)

    def _limit(self, frames: int, rate: int, sample_id: str, source: str) -> int:
        """How many of `frames` samples to keep; over-long audio is refused unless truncating."""
        limit = int(self.max_duration_s * rate)
        if frames > limit and self.over_duration == "refuse":
            raise MediaError(sample_id, source, f"{frames / rate:.1f} s exceeds max_duration_s={self.max_duration_s}")
        return min(frames, limit)

    def _decode(self, ref: MediaRef, sample_id: str) -> tuple[np.ndarray, int]:
        """(samples (S, C), sampling rate) of `ref`; any problem raises `MediaError`."""
        source = ref.describe()
        data = ref.data
        if ref.path is not None:
            path = resolve_path(ref, sample_id, self.allow_outside_root)
            if path.stat().st_size == 0:
                raise MediaError(sample_id, source, "empty file (0 bytes)")
            return self._decode_file(path, sample_id, source)
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise MediaError(sample_id, source, "empty data (0 bytes)")
            return self._decode_file(bytes(data), sample_id, source)
        return samples_array(data, self.sampling_rate, sample_id, source)

    def _decode_file(self, file: Path | bytes, sample_id: str, source: str) -> tuple[np.ndarray, int]:
        head = file[:4096] if isinstance(file, bytes) else _read_head(file, 4096)
        size = len(file) if isinstance(file, bytes) else file.stat().st_size
        missing = wav_missing_bytes(head, size)
        if missing:
            raise MediaError(sample_id, source, f"cannot decode audio: truncated WAV ({missing} bytes missing)")
        try:
            with soundfile.SoundFile(io.BytesIO(file) if isinstance(file, bytes) else file) as sound:
                # The header gives the duration: an over-long file is refused before decoding it.
                frames = self._limit(sound.frames, sound.samplerate, sample_id, source)
                return sound.read(frames, dtype="float32", always_2d=True), sound.samplerate  # (S, C)
        except MediaError:
            raise
        except Exception as error:  # libsndfile: unknown format, malformed file, lost sync...
            if importlib.util.find_spec("torchcodec") is None:  # torchaudio.load needs it
                raise MediaError(sample_id, source, f"cannot decode audio: {error}") from error
            return _decode_torchaudio(file, sample_id, source, error)


def _decode_torchaudio(file: Path | bytes, sample_id: str, source: str, first: Exception) -> tuple[np.ndarray, int]:
    try:
        waveform, rate = torchaudio.load(io.BytesIO(file) if isinstance(file, bytes) else str(file))  # (C, S)
    except Exception as error:
        reason = f"cannot decode audio: soundfile: {first}; torchaudio: {error}"
        raise MediaError(sample_id, source, reason) from error
    return waveform.T.numpy(), int(rate)


def _read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


def wav_missing_bytes(head: bytes, file_size: int) -> int:
    """Bytes a RIFF/WAVE file's data chunk declares beyond the end of the file (0 for other formats,
    complete files, and streaming writers' "unknown" sizes)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, chunk_size = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            if chunk_size in RIFF_UNKNOWN_SIZES:
                return 0
            return max(0, offset + 8 + chunk_size - file_size)
        offset += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    return 0


def samples_array(data: Any, sampling_rate: int, sample_id: str, source: str) -> tuple[np.ndarray, int]:
    """In-memory audio as ((S, C) float32, rate): `(array, rate)`, a `{"array", "sampling_rate"}` dict
    (the form Hugging Face datasets decode to), or a bare array / tensor already at `sampling_rate`.
    Arrays are (S,) or (S, C), soundfile's layout."""
    if isinstance(data, dict) and {"array", "sampling_rate"} <= set(data):
        data = (data["array"], data["sampling_rate"])
    array, rate = data if isinstance(data, tuple) and len(data) == 2 else (data, sampling_rate)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray) or array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.number):
        kind = type(array).__name__ if not isinstance(array, np.ndarray) else f"{array.dtype} {array.shape} array"
        raise MediaError(sample_id, source, f"expected a path, bytes or an (S,) / (S, C) numeric array, got {kind}")
    if np.issubdtype(array.dtype, np.integer):  # PCM integers: scale to [-1, 1) as soundfile does
        array = array / float(np.iinfo(array.dtype).max + 1)
    return (array[:, None] if array.ndim == 1 else array).astype(np.float32), int(rate)
