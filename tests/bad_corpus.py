"""A bad-input corpus, generated on the fly: one JSONL dataset mixing good samples with every kind of
broken image, video, text, JSONL line and path, each with the fragment its per-sample error must contain.

Used by tests/test_bad_inputs.py and the soak (tests/soak.py). A new kind of bad input is one more
`BadInput` row in `BAD_INPUTS`; a media file is written by a function of the path (see `media_line`).
`write_poisoned_teacher` makes the loss NaN on exactly the samples whose privileged text holds `POISON`.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import media_corpus
import torch
from PIL import Image

from mmopd.build import build_task, build_tokenizer
from mmopd.config import Config
from mmopd.models import build_tiny

QUESTION = "What colour is the shape?"
POISON = "<|vision_pad|>"  # a media token: the student never samples it, so only the data brings it in


@dataclass(frozen=True)
class BadInput:
    """One broken sample: `line(root, id)` writes what it needs under `root` and returns its JSONL line."""

    name: str
    reason: str  # a fragment of the error this sample must be skipped with
    line: Callable[[Path, str], str | bytes]
    rejected_line: bool = False  # the JSONL reader refuses the line itself: the sample is named `data:LINE`


def row(sample_id: str, kind: str | None = None, path: str | None = None, text: str = QUESTION, **extra) -> str:
    """A JSONL line asking `text` about one media item (or none), with privileged text and an answer."""
    content: list[dict] = [{"type": "text", "text": text}]
    fields: dict = {}
    if kind is not None:
        content.insert(0, {"type": kind})
        fields = {f"{kind}s": [path]}
    record = {"id": sample_id, "messages": [{"role": "user", "content": content}], **fields}
    record.update(privileged="The image shows a red square.", answer="red")
    record.update(extra)
    return json.dumps(record)


def media_line(kind: str, filename: str, write: Callable[[Path], None]) -> Callable[[Path, str], str]:
    """A `BadInput.line` that writes a media file with `write(path)` and refers to it."""

    def line(root: Path, sample_id: str) -> str:
        write(root / f"{sample_id}-{filename}")
        return row(sample_id, kind, f"{sample_id}-{filename}")

    return line


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def noise(size: int = 64) -> Image.Image:
    return Image.effect_noise((size, size), 64).convert("RGB")


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring `width` x `height` and no pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _truncated(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data[: len(data) // 2])


def _corrupt_png(path: Path) -> None:
    data = bytearray(png_bytes(noise()))
    data[100:-20] = bytes(len(data) - 120)  # header kept, compressed pixels zeroed
    path.write_bytes(bytes(data))


def _bomb(path: Path) -> None:
    Image.new("1", (9000, 9000)).save(path)  # 81 Mpixels (> max_decoded_pixels) in ~10 kB


def _escaping_symlink(root: Path, sample_id: str) -> str:
    outside = root.parent / f"{sample_id}-outside.png"
    outside.write_bytes(png_bytes(noise()))
    (root / f"{sample_id}.png").symlink_to(outside)
    return row(sample_id, "image", f"{sample_id}.png")


def _directory(root: Path, sample_id: str) -> str:
    (root / f"{sample_id}.png").mkdir()
    return row(sample_id, "image", f"{sample_id}.png")


BAD_INPUTS: list[BadInput] = [
    BadInput("truncated-png", "cannot decode image", media_line("image", "x.png", _truncated(png_bytes(noise())))),
    BadInput("corrupt-png", "cannot decode image", media_line("image", "x.png", _corrupt_png)),
    BadInput(
        "truncated-jpeg", "cannot decode image", media_line("image", "x.jpg", _truncated(png_bytes(noise(), "JPEG")))
    ),
    BadInput("zero-byte-png", "empty file (0 bytes)", media_line("image", "x.png", lambda p: p.write_bytes(b""))),
    BadInput("text-named-png", "cannot identify image", media_line("image", "x.png", lambda p: p.write_text("hi\n"))),
    BadInput("bomb-png", "max_decoded_pixels", media_line("image", "x.png", _bomb)),
    BadInput(
        "bomb-header-png",
        "decompression bomb",
        media_line("image", "x.png", lambda p: p.write_bytes(header_only_png(20_000, 20_000))),
    ),
    BadInput("missing-png", "file not found", lambda root, i: row(i, "image", "nowhere.png")),
    BadInput("directory-png", "is a directory", _directory),
    BadInput(
        "dotdot-path",
        "leaves the file's directory",
        lambda root, i: row(i, "image", "../outside.png"),
        rejected_line=True,
    ),
    BadInput(
        "absolute-path",
        "leaves the file's directory",
        lambda root, i: row(i, "image", "/etc/hostname"),
        rejected_line=True,
    ),
    BadInput("symlink-out", "outside the media root", _escaping_symlink),
    BadInput("empty-text", "empty prompt", lambda root, i: row(i, text="")),
    BadInput("blank-text", "empty prompt", lambda root, i: row(i, text=" \n\t ")),
    BadInput("no-privileged", "needs privileged text", lambda root, i: row(i, "image", "good.png", privileged=None)),
    BadInput("over-long-text", "exceeds data.max_prompt_tokens", lambda root, i: row(i, text="red " * 400)),
    BadInput(
        "non-utf8",
        "not UTF-8",
        lambda root, i: row(i, text="Latin-1 caf@").encode().replace(b"@", "\u00e9".encode("latin-1")),
        rejected_line=True,
    ),
    BadInput("not-an-object", "expected a JSON object", lambda root, i: json.dumps([i, "red"]), rejected_line=True),
    BadInput("invalid-json", "invalid JSON", lambda root, i: row(i)[:-5], rejected_line=True),
    BadInput(
        "string-line", "expected a JSON object", lambda root, i: json.dumps(f"{i} is a string"), rejected_line=True
    ),
    BadInput(
        "count-mismatch",
        "1 image part(s) but 'images' lists 0",
        lambda root, i: json.dumps({**json.loads(row(i, "image", "good.png")), "images": []}),
        rejected_line=True,
    ),
]
# Broken videos, written by tests/media_corpus.py (shared with `mmopd data check`'s tests). The corpus's
# student reads images and videos; broken audio files are decoded and reported by tests/test_datacheck.py.
BAD_INPUTS += [
    BadInput(name.replace("_", "-"), reason, lambda root, i, kind=kind, write=write: row(i, kind, write(root)))
    for name, (kind, write, reason) in media_corpus.BAD_MEDIA.items()
    if kind == "video"
]
PROCESSOR_ARGS = media_corpus.LIMITS
"""`data.processor_args` under which the over-long video and audio files are over the limit."""


def good_rows(root: Path, count: int) -> list[str]:
    """`count` good samples: a red square as PNG, and the same PNG under a .jpg name (content decides)."""
    image = Image.new("RGB", (56, 56), (255, 255, 255))
    image.paste((255, 0, 0), (14, 14, 42, 42))
    (root / "good.png").write_bytes(png_bytes(image))
    (root / "good-named.jpg").write_bytes(png_bytes(image))
    return [row(f"good-{i}", "image", "good.png" if i % 2 else "good-named.jpg") for i in range(count)]


def write_dataset(root: Path, bad: list[BadInput], good: int = 4) -> tuple[Path, dict[str, str]]:
    """`root/data.jsonl` interleaving `good` good samples with `bad`; returns it and {sample id: reason}
    of the bad ones (a line that is no JSON object gets the id `data:LINE`)."""
    root.mkdir(parents=True, exist_ok=True)
    lines: list[bytes] = [line.encode() for line in good_rows(root, good)]
    expected = {}
    for entry in bad:
        line = entry.line(root, entry.name)
        lines.append(line if isinstance(line, bytes) else line.encode())
        expected[f"data:{len(lines)}" if entry.rejected_line else entry.name] = entry.reason
    path = root / "data.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path, expected


def write_poisoned_teacher(config: Config, directory: Path) -> None:
    """Save `config.teacher.model` (tiny, on the tokenizer the run will build) with a NaN embedding for
    `POISON`: a corrupt teacher checkpoint whose loss is NaN on exactly the samples that mention it."""
    tokenizer = build_tokenizer(config, build_task(config.data))
    teacher = build_tiny(config.teacher.model, tokenizer)
    with torch.no_grad():
        teacher.model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(POISON)] = float("nan")
    teacher.save(directory)
