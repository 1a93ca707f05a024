"""`mmopd data check`: every bad file of the generated corpus is reported with its index, field, file and
reason, good files (silence included) are not, and the exit code says which happened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from media_corpus import BAD_MEDIA, LIMITS, tone, video_frames, write_audio, write_image, write_jsonl, write_video

from mmopd.cli import main
from mmopd.datacheck import CheckReport, check_samples
from mmopd.sample import MediaRef, Sample
from mmopd.tasks.jsonl import load_samples


def good_media(root: Path) -> list[tuple[str, str]]:
    write_video(root / "clips" / "moving.mp4", video_frames(20))
    write_audio(root / "speech.flac", tone(1.0, 44100, channels=2), 44100)
    write_audio(root / "silence.wav", np.zeros((16000, 1), np.float32))  # silence is valid audio
    write_image(root / "red.png")
    return [("video", "clips/moving.mp4"), ("audio", "speech.flac"), ("audio", "silence.wav"), ("image", "red.png")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[str, str, str]]]:
    """A JSONL file mixing every bad file with good ones; {line index: (field, file, reason)} of the bad."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    root.mkdir()
    good = good_media(root)
    bad = [(kind, write(root), reason) for kind, write, reason in BAD_MEDIA.values()]
    items = [good[0], *[(kind, path) for kind, path, _ in bad[:7]], good[1], good[2], *[(k, p) for k, p, _ in bad[7:]]]
    items.append(good[3])
    expected = {}
    for index, (kind, path) in enumerate(items):
        reason = next((reason for k, p, reason in bad if (k, p) == (kind, path)), None)
        if reason is not None:
            expected[index] = (f"{kind}s[0]", path, reason)
    return write_jsonl(root / "train.jsonl", items), expected


def run_check(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(["data", "check", *argv])
    return code, capsys.readouterr().out


def test_config_check_reports_every_bad_file_and_only_those(tmp_path: Path, corpus, capsys) -> None:
    jsonl, expected = corpus
    held_out = write_jsonl(jsonl.parent / "eval.jsonl", [("video", "clips/moving.mp4"), ("audio", "missing.wav")])
    task_args = {"train_path": str(jsonl), "eval_path": str(held_out)}
    config = {"data": {"task": "jsonl", "task_args": task_args, "processor_args": LIMITS}}
    (tmp_path / "check.yaml").write_text(yaml.safe_dump(config))
    code, out = run_check(capsys, str(tmp_path / "check.yaml"), "--json")
    report = json.loads(out)
    assert code == 1
    assert report["checked"] == len(jsonl.read_text().splitlines()) + 2
    assert [(item["index"], item["file"]) for item in report["bad"] if item["split"] == "eval"] == [(1, "missing.wav")]
    found = {item["index"]: item for item in report["bad"] if item["split"] == "train"}
    assert sorted(found) == sorted(expected)
    for index, (field, file, reason) in expected.items():
        assert found[index]["field"] == field and found[index]["file"] == file
        assert reason in found[index]["reason"], (file, found[index]["reason"])
        assert {"index", "field", "file", "reason"} <= set(found[index])


def test_jsonl_check_uses_default_processors_and_prints_one_line_per_bad_file(corpus, capsys) -> None:
    jsonl, expected = corpus
    code, out = run_check(capsys, "--jsonl", str(jsonl))
    lines = out.strip().splitlines()
    # Default limits (600 s of video, 30 s of audio) accept the two "long" files.
    over_limit = {index for index, (_, _, reason) in expected.items() if reason == "max_duration_s"}
    assert code == 1 and len(over_limit) == 2
    assert len(lines) == len(expected) - len(over_limit) + 1
    for index, (field, file, _) in expected.items():
        reported = any(f"train[{index}] " in line and f"{field} {file}:" in line for line in lines)
        assert reported == (index not in over_limit)
    assert lines[-1].endswith(f": {len(expected) - 2} bad")


def test_good_dataset_exits_zero(tmp_path: Path, capsys) -> None:
    jsonl = write_jsonl(tmp_path / "good.jsonl", good_media(tmp_path))
    code, out = run_check(capsys, "--jsonl", str(jsonl), "--json")
    assert code == 0 and json.loads(out) == {"checked": 4, "bad": []}


def test_max_samples_limits_each_split(corpus, capsys) -> None:
    jsonl, _ = corpus
    code, out = run_check(capsys, "--jsonl", str(jsonl), "--json", "--max-samples", "1")
    assert code == 0 and json.loads(out)["checked"] == 1  # line 0 is a good video


def test_unreadable_dataset_and_bad_arguments_exit_two(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.jsonl").write_text('{"messages": [}\n')
    assert main(["data", "check", "--jsonl", str(tmp_path / "broken.jsonl")]) == 2
    assert main(["data", "check", "--jsonl", str(tmp_path / "absent.jsonl")]) == 2
    assert main(["data", "check"]) == 2
    assert main(["data", "check", "--jsonl", str(tmp_path / "broken.jsonl"), "--max-samples", "-1"]) == 2
    assert main(["data", "check", "configs/debug.yaml", "--jsonl", str(tmp_path / "broken.jsonl")]) == 2
    assert "broken.jsonl:1" in capsys.readouterr().err


def test_jsonl_task_passes_videos_and_audios_through_with_kind_and_root(tmp_path: Path) -> None:
    record = {
        "messages": [{"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "audio"}]}],
        "videos": ["clips/a.mp4"],
        "audios": ["a.wav", "sub/b.flac"],
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    (sample,) = load_samples(tmp_path / "train.jsonl")
    root = str(tmp_path.resolve())
    assert sample.videos == [MediaRef(kind="video", path="clips/a.mp4", root=root)]
    assert sample.audios == [
        MediaRef(kind="audio", path="a.wav", root=root),
        MediaRef("audio", "sub/b.flac", None, root),
    ]


def test_media_without_a_processor_and_failing_processors_are_reported() -> None:
    class Crashing:
        kind = "image"

        def load(self, ref, sample_id):
            raise RuntimeError("plug-in bug")

    sample = Sample(
        id="x", messages=[], images=[MediaRef(kind="image", data=b"1")], audios=[MediaRef(kind="audio", data=b"2")]
    )
    report = CheckReport()
    check_samples([sample], {"image": Crashing()}, "eval", report)
    assert [(item.field, item.split) for item in report.bad] == [("images[0]", "eval"), ("audios[0]", "eval")]
    assert "plug-in bug" in report.bad[0].reason and "no processor for audio" in report.bad[1].reason
