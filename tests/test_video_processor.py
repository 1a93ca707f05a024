"""The video processor: qwen-vl-utils' sampling and sizing, timestamps that match the content, decord and
PyAV agreeing, every input form, and a MediaError naming sample and file for every bad video."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY
from media_corpus import LIMITS, bad_names, refusal, video_frames, write_video
from PIL import Image
from transformers import Qwen2VLVideoProcessor

from mmopd.config import ModelConfig
from mmopd.models import build_tiny
from mmopd.processors.video import VideoClip, VideoProcessor
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef

SAMPLE_ID = "clip-7"
SMALL = dict(min_pixels=28 * 28, max_pixels=56 * 56, total_pixels=56 * 56 * 8)
"""Frame sizes for CPU tests: 56x56 frames pass through unresized."""


def brightness_video(path: Path, count: int = 30, fps: int = 10, side: int = 56) -> Path:
    """Frame i is flat grey at level 8 * i, so a decoded frame tells which source frame it was."""
    levels = (np.arange(count) * 8).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (count, side, side, 3)).copy()  # (T, H, W, 3)
    return write_video(path, frames, fps=fps)


def source_index(frames: torch.Tensor) -> list[int]:
    """The source frame each decoded frame of a `brightness_video` came from."""
    return (frames.float().mean(dim=(1, 2, 3)) / 8).round().long().tolist()


def load(processor: VideoProcessor, path: Path) -> VideoClip:
    return processor.load(MediaRef(kind="video", path=path.name, root=str(path.parent)), SAMPLE_ID)


def test_registered_under_video() -> None:
    assert PROCESSORS.get("video") is VideoProcessor
    assert VideoProcessor().kind == "video"


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_timestamps_and_fps_match_the_frames_sampled(tmp_path: Path, decoder: str) -> None:
    video = brightness_video(tmp_path / "grey.mp4", count=30, fps=10)  # 3 s
    clip = load(VideoProcessor(fps=2.0, decoder=decoder, **SMALL), video)
    assert clip.frames.shape == (6, 3, 56, 56) and clip.frames.dtype == torch.uint8
    assert clip.fps == pytest.approx(2.0)
    indices = source_index(clip.frames)
    assert indices == [0, 6, 12, 17, 23, 29]  # qwen-vl-utils: linspace(0, T - 1, n).round()
    assert clip.timestamps == pytest.approx([index / 10 for index in indices], abs=1e-3)


def test_decord_and_pyav_give_the_same_clip(tmp_path: Path) -> None:
    video = write_video(tmp_path / "moving.mp4", video_frames(25, width=80, height=60), fps=5)
    decord_clip = load(VideoProcessor(nframes=8, decoder="decord", **SMALL), video)
    pyav_clip = load(VideoProcessor(nframes=8, decoder="pyav", **SMALL), video)
    assert decord_clip.frames.shape == pyav_clip.frames.shape
    # Both decode with FFmpeg; their YUV→RGB conversions may round differently.
    assert (decord_clip.frames.int() - pyav_clip.frames.int()).abs().float().mean() < 2.0
    assert decord_clip.timestamps == pytest.approx(pyav_clip.timestamps, abs=1e-3)
    assert decord_clip.fps == pyav_clip.fps


@pytest.mark.parametrize(
    "name, codec",
    [
        ("grey.mkv", "libsvtav1"),  # decord's FFmpeg has no AV1 decoder: it cannot open the file
        ("grey.ts", "libx264"),  # decord opens MPEG-TS but fails to seek in it
    ],
)
def test_auto_falls_back_to_pyav_when_decord_fails(tmp_path: Path, name: str, codec: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    levels = (np.arange(20) * 8).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (20, 64, 64, 3)).copy()  # (T, H, W, 3)
    video = write_video(tmp_path / name, frames, fps=10, codec=codec)
    with pytest.raises(MediaError, match="decord"):
        load(VideoProcessor(nframes=4, decoder="decord", **SMALL), video)
    clip = load(VideoProcessor(nframes=4, **SMALL), video)
    assert source_index(clip.frames) == [0, 6, 13, 19]
    assert clip.timestamps == pytest.approx([index / 10 for index in (0, 6, 13, 19)], abs=0.06)


@pytest.mark.parametrize(
    "settings, seconds, expected_frames",
    [
        (dict(fps=2.0), 6.0, 12),
        (dict(fps=2.0, max_frames=8), 6.0, 8),
        (dict(fps=2.0, min_frames=10), 2.0, 10),  # min_frames wins over fps...
        (dict(fps=2.0, min_frames=10), 0.5, 4),  # ...but never more frames than the video has (even count)
        (dict(fps=1.0), 3.0, 2),  # 3 frames by fps, rounded down to the temporal patch
        (dict(nframes=7), 6.0, 8),  # nframes rounds to an even count
    ],
)
def test_frame_count_follows_qwen_vl_utils(
    tmp_path: Path, settings: dict, seconds: float, expected_frames: int
) -> None:
    video = brightness_video(tmp_path / "grey.mp4", count=int(seconds * 10), fps=10)
    clip = load(VideoProcessor(**{"min_frames": 2, **SMALL, **settings}), video)
    assert clip.frames.shape[0] == expected_frames
    assert clip.frames.shape[0] % 2 == 0
    assert clip.timestamps == sorted(clip.timestamps)


@pytest.mark.parametrize("width, height", [(64, 48), (200, 120), (30, 90)])
@pytest.mark.parametrize("total_pixels", [56 * 56 * 4, 112 * 112 * 16])
def test_frames_fit_the_factor_and_the_pixel_budget(tmp_path: Path, width: int, height: int, total_pixels: int) -> None:
    video = write_video(tmp_path / "v.mp4", video_frames(16, width=width, height=height), fps=8)
    processor = VideoProcessor(nframes=8, min_pixels=28 * 28, max_pixels=112 * 112, total_pixels=total_pixels)
    clip = load(processor, video)
    frames, _, out_height, out_width = clip.frames.shape
    assert out_height % 28 == 0 and out_width % 28 == 0
    per_frame = max(min(processor.max_pixels, total_pixels / frames * 2), processor.min_pixels * 1.05)
    assert processor.min_pixels <= out_height * out_width <= per_frame


def test_clip_goes_through_the_qwen_video_processor_unresized(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", video_frames(20, width=90, height=70), fps=10)
    clip = load(VideoProcessor(nframes=4, **SMALL), video)
    frames, _, height, width = clip.frames.shape
    hf = Qwen2VLVideoProcessor(min_pixels=SMALL["min_pixels"], max_pixels=SMALL["max_pixels"])
    grid = hf(videos=[clip.frames], return_tensors="pt")["video_grid_thw"]
    assert grid.tolist() == [[frames // 2, height // 14, width // 14]]


def test_tiny_qwen25_vl_reads_the_clip_at_its_frame_rate(tmp_path: Path, tokenizer) -> None:
    spec = ModelConfig(family="qwen2_5_vl", vision_depth=1, vision_hidden_size=32, vision_heads=2, **TINY)
    bundle = build_tiny(spec, tokenizer)
    video = write_video(tmp_path / "v.mp4", video_frames(30, width=90, height=70), fps=10)
    clip = load(VideoProcessor(fps=2.0, **SMALL), video)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour is it?"}]}]
    text = bundle.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    size = {"shortest_edge": SMALL["min_pixels"], "longest_edge": SMALL["max_pixels"]}
    inputs = bundle.processor(
        text=[text], videos=[clip.frames], video_metadata=[clip.metadata()], size=size, return_tensors="pt"
    )
    frames, _, height, width = clip.frames.shape
    assert inputs["video_grid_thw"].tolist() == [[frames // 2, height // 14, width // 14]]
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2 / clip.fps])
    assert torch.isfinite(bundle.model(**inputs).logits).all()


def test_path_bytes_and_array_inputs(tmp_path: Path) -> None:
    video = brightness_video(tmp_path / "grey.mp4")
    processor = VideoProcessor(nframes=4, **SMALL)
    from_path = load(processor, video)
    from_bytes = processor.load(MediaRef(kind="video", data=video.read_bytes()), SAMPLE_ID)
    assert torch.equal(from_path.frames, from_bytes.frames) and from_path.timestamps == from_bytes.timestamps
    frames = video_frames(6, width=56, height=56)  # (T, H, W, 3)
    from_array = processor.load(MediaRef(kind="video", data=frames), SAMPLE_ID)
    from_tensor = processor.load(MediaRef(kind="video", data=torch.from_numpy(frames).permute(0, 3, 1, 2)), SAMPLE_ID)
    from_images = processor.load(MediaRef(kind="video", data=[Image.fromarray(f) for f in frames]), SAMPLE_ID)
    expected = torch.from_numpy(frames[[0, 2, 3, 5]]).permute(0, 3, 1, 2)  # linspace(0, 5, 4).round()
    for clip in (from_array, from_tensor, from_images):
        assert torch.equal(clip.frames, expected)
        assert clip.timestamps == pytest.approx([0.0, 1.0, 1.5, 2.5])  # in-memory frames are at `fps` (2)


def test_content_decides_the_format_not_the_extension(tmp_path: Path) -> None:
    video = brightness_video(tmp_path / "grey.mp4")
    (tmp_path / "really_an_mp4.avi").write_bytes(video.read_bytes())
    assert load(VideoProcessor(nframes=4, **SMALL), tmp_path / "really_an_mp4.avi").frames.shape[0] == 4


def test_over_long_video_is_refused_or_truncated(tmp_path: Path) -> None:
    video = brightness_video(tmp_path / "grey.mp4", count=30, fps=10)  # 3 s
    with pytest.raises(MediaError, match=r"grey\.mp4.*max_duration_s=2"):
        load(VideoProcessor(max_duration_s=2.0, **SMALL), video)
    clip = load(VideoProcessor(max_duration_s=2.0, over_duration="truncate", **SMALL), video)
    assert max(clip.timestamps) <= 2.0 and max(source_index(clip.frames)) <= 20


def test_oversized_frames_are_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "wide.mp4", video_frames(4, width=320, height=240))
    with pytest.raises(MediaError, match=r"wide\.mp4.*max_decoded_pixels"):
        load(VideoProcessor(max_decoded_pixels=320 * 200, **SMALL), video)


def test_single_frame_video_is_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "still.mp4", video_frames(1))
    with pytest.raises(MediaError, match=r"still\.mp4.*too few frames \(1\)"):
        load(VideoProcessor(**SMALL), video)


@pytest.mark.parametrize("name", bad_names("video"))
def test_bad_videos_raise_media_error_naming_sample_and_file(tmp_path: Path, name: str) -> None:
    relative, reason, error = refusal(VideoProcessor(**LIMITS["video"]), name, tmp_path, SAMPLE_ID)
    assert error.sample_id == SAMPLE_ID and error.source == relative and reason in error.reason


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "0 bytes"),
        (b"\x00\x00\x00\x18ftypmp42 not really", "cannot decode"),
        (np.zeros((0, 56, 56, 3), np.uint8), "no frame"),
        (np.zeros((4, 56, 56, 3), np.float32), "uint8"),
        (np.zeros((4, 56, 56), np.uint8), "uint8"),
        ([Image.new("RGB", (56, 56)), Image.new("RGB", (28, 56))], "differ in size"),
        ({"frames": 1}, "dict"),
    ],
)
def test_bad_in_memory_videos(data, reason: str) -> None:
    with pytest.raises(MediaError, match="in-memory video") as caught:
        VideoProcessor(**SMALL).load(MediaRef(kind="video", data=data), SAMPLE_ID)
    assert reason in caught.value.reason


def test_invalid_settings_are_refused() -> None:
    for settings in (dict(fps=0), dict(min_frames=8, max_frames=4), dict(decoder="ffmpeg"), dict(over_duration="cut")):
        with pytest.raises(ValueError):
            VideoProcessor(**settings)
