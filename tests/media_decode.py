"""Time the video and audio processors on generated files: `python tests/media_decode.py`.

Video: 60 s of 640x360 at 30 fps (H.264), smooth and noisy content, sampled at 2 fps by decord and by
PyAV; audio: 30 s of 44.1 kHz stereo FLAC to 16 kHz mono. Prints the best of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media_corpus import tone, video_frames, write_audio, write_video  # noqa: E402

from mmopd.processors.audio import AudioProcessor  # noqa: E402
from mmopd.processors.video import VideoProcessor  # noqa: E402
from mmopd.sample import MediaRef  # noqa: E402


def smooth_frames(count: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 gradients that scroll with time: cheap to encode, like real footage."""
    t, y, x = np.arange(count)[:, None, None], np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    shape = (count, height, width)
    channels = [(x + 4 * t) % 256, (y + 2 * t) % 256, (x + y + 0 * t) % 256]
    return np.stack([np.broadcast_to(c, shape) for c in channels], axis=-1).astype(np.uint8)


def best_seconds(processor, path: Path, repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` loads of `path`, and what it returned."""
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = processor.load(MediaRef(processor.kind, path=str(path)), "benchmark")
        times.append(time.perf_counter() - began)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        videos = {
            "smooth": write_video(root / "smooth.mp4", smooth_frames(1800, 360, 640), fps=30),
            "noise": write_video(root / "noise.mp4", video_frames(1800, width=640, height=360), fps=30),
        }
        for content, path in videos.items():
            for decoder in ("decord", "pyav"):
                seconds, clip = best_seconds(VideoProcessor(fps=2.0, decoder=decoder), path, args.repeats)
                size = path.stat().st_size / 1e6
                print(f"video {content} ({size:.1f} MB) {decoder}: {tuple(clip.frames.shape)} in {seconds:.2f} s")
        audio = write_audio(root / "speech.flac", tone(30.0, 44100, channels=2), 44100)
        seconds, clip = best_seconds(AudioProcessor(), audio, args.repeats)
        print(f"audio 30 s 44.1 kHz stereo FLAC: {clip.waveform.shape} at 16 kHz in {seconds:.3f} s")


if __name__ == "__main__":
    main()
