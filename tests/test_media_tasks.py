"""The motion (video) and tones (audio) tasks: deterministic, written as real MP4/WAV files, and truthful
(the decoded media show what the answer and the privileged text say); verifiers are exact."""

from __future__ import annotations

import numpy as np
import pytest

from mmopd.registry import TASKS
from mmopd.tasks.motion import MotionTask
from mmopd.tasks.tones import TonesTask
from mmopd.views import student_messages

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}


def test_media_tasks_are_registered() -> None:
    assert TASKS.get("motion") is MotionTask and TASKS.get("tones") is TonesTask


@pytest.mark.parametrize("make", [MotionTask, TonesTask])
def test_samples_and_files_are_deterministic(make, tmp_path) -> None:
    first, second = make(cache_dir=str(tmp_path / "a")), make(cache_dir=str(tmp_path / "b"))
    for index in range(6):
        a, b = first.sample("train", index), second.sample("train", index)
        assert (a.id, a.messages, a.privileged, a.answer) == (b.id, b.messages, b.privileged, b.answer)
        (ref_a,), (ref_b,) = a.media(), b.media()
        assert (tmp_path / "a").as_posix() in ref_a.root and ref_a.path == ref_b.path
        file_a, file_b = first.folder / ref_a.path, second.folder / ref_b.path
        assert file_a.read_bytes() == file_b.read_bytes()
    assert first.sample("train", 0).media()[0].path != first.sample("eval", 0).media()[0].path


def test_settings_that_change_the_media_use_another_folder(tmp_path) -> None:
    assert MotionTask(cache_dir=str(tmp_path)).folder != MotionTask(cache_dir=str(tmp_path), frame_size=84).folder
    assert TonesTask(cache_dir=str(tmp_path)).folder != TonesTask(cache_dir=str(tmp_path), duration=2.0).folder


def _centre(frame: np.ndarray) -> np.ndarray:
    """(row, column) centre of the bright pixels of an (H, W, 3) frame."""
    rows, columns = np.nonzero(frame.max(axis=-1) > 100)
    return np.array([rows.mean(), columns.mean()])


def _blobs(frame: np.ndarray) -> int:
    """Squares in an (H, W, 3) frame: bright squares sit one per quadrant, so count bright quadrants."""
    half = frame.shape[0] // 2
    bright = frame.max(axis=-1) > 100
    return sum(bool(bright[r : r + half, c : c + half].sum() > 20) for r in (0, half) for c in (0, half))


def test_motion_videos_show_what_the_answer_says(motion, media_processors) -> None:
    seen = set()
    for index in range(16):
        sample = motion.eval_samples()[index]
        clip = media_processors["video"].load(sample.videos[0], sample.id)
        frames = clip.frames.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
        assert frames.shape == (motion.num_frames, motion.frame_size, motion.frame_size, 3)
        assert sample.answer in sample.privileged
        if sample.meta["question"] == "direction":
            row, column = _centre(frames[-1]) - _centre(frames[0])
            moved = {"right": column > 10, "left": column < -10, "down": row > 10, "up": row < -10}
            assert moved[sample.answer] and abs(row if sample.answer in ("left", "right") else column) < 2
        else:
            assert _blobs(frames[0]) == NUMBERS[sample.answer]
        seen.add(sample.meta["question"])
        assert student_messages(sample)[0]["content"][0] == {"type": "video"}
    assert seen == {"direction", "count"}


def _peaks(waveform: np.ndarray, rate: int) -> list[float]:
    """Dominant frequency (Hz) of each sounding stretch of the waveform, in order."""
    hop = rate // 100  # 10 ms frames
    frames = waveform[: len(waveform) // hop * hop].reshape(-1, hop)
    loud = np.sqrt((frames**2).mean(axis=1)) > 0.05  # a 0.5-amplitude sine has RMS 0.35; silence 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(int), [0]])))
    peaks = []
    for start, end in zip(edges[::2] * hop, edges[1::2] * hop):
        spectrum = np.abs(np.fft.rfft(waveform[start:end], n=rate))  # 1 Hz bins
        peaks.append(float(np.argmax(spectrum)))
    return peaks


def test_tones_clips_sound_like_what_the_answer_says(tones, media_processors) -> None:
    seen = set()
    for sample in [*tones.eval_samples(), *tones.train_samples()[:24]]:  # 40 clips: tones never touch
        clip = media_processors["audio"].load(sample.audios[0], sample.id)
        assert clip.sampling_rate == 16_000 and clip.waveform.shape == (16_000,)
        peaks = _peaks(clip.waveform, clip.sampling_rate)
        assert sample.answer in sample.privileged
        if sample.meta["question"] == "higher":
            assert len(peaks) == 2
            assert ("first" if peaks[0] > peaks[1] else "second") == sample.answer
            assert [f"{p:.0f} Hz" in sample.privileged for p in peaks] == [True, True]
        else:
            assert len(peaks) == NUMBERS[sample.answer] and len(set(peaks)) == 1
        seen.add(sample.meta["question"])
    assert seen == {"higher", "beeps"}


@pytest.mark.parametrize("name", ["motion", "tones"])
def test_verifiers_are_exact(name, motion, tones) -> None:
    task = motion if name == "motion" else tones
    for sample in task.eval_samples()[:8]:
        assert task.verify(sample.answer, sample) and task.verify(f" {sample.answer.title()}.", sample)
        assert not task.verify(f"{sample.answer} or not", sample)
        others = {"motion": ["left", "right", "up", "down", "one", "two", "three"], "tones": ["first", "second"]}
        for wrong in others[name] + ["one", "two", "three", "four"]:
            if wrong != sample.answer:
                assert not task.verify(wrong, sample)


@pytest.mark.parametrize("name", ["motion", "tones"])
def test_corpus_covers_every_text_a_sample_holds(name, motion, tones) -> None:
    task = motion if name == "motion" else tones
    corpus = set(task.corpus())
    for sample in task.train_samples()[:40]:
        assert sample.privileged in corpus and sample.answer in corpus
        assert sample.messages[0]["content"][1]["text"] in corpus


def test_bad_task_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="directions"):
        MotionTask(directions=("sideways",), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="questions"):
        TonesTask(questions=("loudness",), cache_dir=str(tmp_path))
