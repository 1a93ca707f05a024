"""The audio processor: mono at the model's rate with the pitch kept, every input form, the duration
limit, silence accepted, and a MediaError naming sample and file for every bad audio item."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from media_corpus import LIMITS, bad_names, refusal, tone, write_audio
from transformers import WhisperFeatureExtractor

from mmopd.processors.audio import AudioClip, AudioProcessor, wav_missing_bytes
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef

SAMPLE_ID = "utterance-3"


def peak_frequencies(clip: AudioClip, count: int) -> list[float]:
    """The `count` strongest frequencies, in Hz, lowest first."""
    spectrum = np.abs(np.fft.rfft(clip.waveform))  # (S // 2 + 1,)
    frequencies = np.fft.rfftfreq(len(clip.waveform), 1 / clip.sampling_rate)
    return sorted(frequencies[np.argsort(spectrum)[-count:]].tolist())


def load(processor: AudioProcessor, path: Path) -> AudioClip:
    return processor.load(MediaRef(kind="audio", path=path.name, root=str(path.parent)), SAMPLE_ID)


def test_registered_under_audio() -> None:
    assert PROCESSORS.get("audio") is AudioProcessor
    assert AudioProcessor().kind == "audio"


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
@pytest.mark.parametrize("source_rate", [8000, 16000, 44100, 48000])
def test_any_format_and_rate_becomes_mono_at_the_model_rate_with_pitch_kept(
    tmp_path: Path, suffix: str, source_rate: int
) -> None:
    path = write_audio(tmp_path / f"tone{suffix}", tone(1.0, source_rate, frequency=440.0, channels=2), source_rate)
    clip = load(AudioProcessor(sampling_rate=16000), path)
    assert clip.sampling_rate == 16000
    assert clip.waveform.dtype == np.float32 and clip.waveform.shape == (16000,)
    assert peak_frequencies(clip, 2) == pytest.approx([440.0, 880.0], abs=2.0)  # one per source channel


def test_downmix_is_the_channel_mean() -> None:
    left, right = tone(0.25)[:, 0], 0.25 * np.ones(4000, np.float32)
    clip = AudioProcessor().load(MediaRef(kind="audio", data=(np.stack([left, right], axis=1), 16000)), SAMPLE_ID)
    np.testing.assert_allclose(clip.waveform, (left + right) / 2, atol=1e-6)


def test_path_bytes_and_array_inputs_agree(tmp_path: Path) -> None:
    samples = tone(0.5, 22050)
    path = write_audio(tmp_path / "tone.wav", samples, 22050, subtype="FLOAT")
    processor = AudioProcessor()
    expected = load(processor, path).waveform
    for data in (
        path.read_bytes(),
        (samples, 22050),
        {"array": samples[:, 0], "sampling_rate": 22050, "path": None},
        (torch.from_numpy(samples[:, 0]), 22050),
    ):
        clip = processor.load(MediaRef(kind="audio", data=data), SAMPLE_ID)
        np.testing.assert_allclose(clip.waveform, expected, atol=1e-6)


def test_integer_pcm_arrays_are_scaled_like_soundfile() -> None:
    pcm = (tone(0.1)[:, 0] * 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, 16000, format="WAV", subtype="PCM_16")
    from_file = AudioProcessor().load(MediaRef(kind="audio", data=buffer.getvalue()), SAMPLE_ID)
    from_array = AudioProcessor().load(MediaRef(kind="audio", data=pcm), SAMPLE_ID)  # bare: at the model's rate
    np.testing.assert_array_equal(from_file.waveform, from_array.waveform)


def test_content_decides_the_format_not_the_extension(tmp_path: Path) -> None:
    wav = write_audio(tmp_path / "tone.wav", tone(0.5))
    (tmp_path / "really_a_wav.ogg").write_bytes(wav.read_bytes())
    assert load(AudioProcessor(), tmp_path / "really_a_wav.ogg").waveform.shape == (8000,)


def test_silence_is_valid_audio(tmp_path: Path) -> None:
    clip = load(AudioProcessor(), write_audio(tmp_path / "silence.wav", np.zeros((8000, 1), np.float32)))
    assert clip.waveform.shape == (8000,) and not clip.waveform.any()


def test_over_long_audio_is_refused_or_truncated(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "long.flac", tone(3.0, 44100), 44100)
    with pytest.raises(MediaError, match=r"long\.flac.*3\.0 s exceeds max_duration_s=2"):
        load(AudioProcessor(max_duration_s=2.0), path)
    clip = load(AudioProcessor(max_duration_s=2.0, over_duration="truncate"), path)
    assert clip.waveform.shape == (32000,)
    with pytest.raises(MediaError, match="max_duration_s"):
        AudioProcessor(max_duration_s=2.0).load(MediaRef(kind="audio", data=tone(3.0)[:, 0]), SAMPLE_ID)


def test_clip_goes_through_whisper_features() -> None:
    clip = AudioProcessor().load(MediaRef(kind="audio", data=(tone(2.0, 48000), 48000)), SAMPLE_ID)
    features = WhisperFeatureExtractor()(clip.waveform, sampling_rate=clip.sampling_rate, return_tensors="pt")
    assert features["input_features"].shape == (1, 80, 3000)
    assert torch.isfinite(features["input_features"]).all()


@pytest.mark.parametrize("name", bad_names("audio"))
def test_bad_audio_raises_media_error_naming_sample_and_file(tmp_path: Path, name: str) -> None:
    relative, reason, error = refusal(AudioProcessor(**LIMITS["audio"]), name, tmp_path, SAMPLE_ID)
    assert error.sample_id == SAMPLE_ID and error.source == relative and reason in error.reason


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "0 bytes"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "cannot decode"),
        (np.zeros(0, np.float32), "no samples"),
        (np.array([0.1, np.nan], np.float32), "non-finite"),
        ((np.zeros(10, np.float32), 0), "sampling rate"),
        (np.zeros((2, 3, 4), np.float32), "array"),
        (["not", "audio"], "list"),
    ],
)
def test_bad_in_memory_audio(data, reason: str) -> None:
    with pytest.raises(MediaError, match="in-memory audio") as caught:
        AudioProcessor().load(MediaRef(kind="audio", data=data), SAMPLE_ID)
    assert reason in caught.value.reason


def test_truncated_wav_detection_ignores_streaming_sizes() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(0.1), 16000, format="WAV")
    wav = buffer.getvalue()
    assert wav_missing_bytes(wav, len(wav)) == 0
    assert wav_missing_bytes(wav[:1000], 1000) == len(wav) - 1000
    data_offset = wav.index(b"data")
    streaming = wav[: data_offset + 4] + b"\xff\xff\xff\xff" + wav[data_offset + 8 : 1000]
    assert wav_missing_bytes(streaming, len(streaming)) == 0
    assert wav_missing_bytes(b"fLaC" + bytes(100), 104) == 0


def test_invalid_settings_are_refused() -> None:
    for settings in (dict(sampling_rate=0), dict(max_duration_s=0), dict(over_duration="cut")):
        with pytest.raises(ValueError):
            AudioProcessor(**settings)
