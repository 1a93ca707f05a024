"""JSONL task: your own data, one sample per line, media paths relative to the file.

Each line is a JSON object: `messages` (required; chat messages whose content is a string or a list
of `{"type": "text", "text": ...}` / `{"type": "image"|"video"|"audio"}` parts), and optionally `id`,
`images` / `videos` / `audios` (paths, one per media part, in order), `privileged`, `answer`,
`context_answer`, `meta`.
Every line is validated when the file is read; an error names the file and line. With
`on_error: skip` (set from `data.on_error`) a bad line becomes a sample that fails when drawn, so it
is skipped and listed in `skipped.txt` with the same reason, and the run goes on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from mmopd.registry import TASKS
from mmopd.sample import MediaRef, Sample
from mmopd.tasks import normalise_answer

MEDIA_LIST_KEY = {"image": "images", "video": "videos", "audio": "audios"}
PART_TYPES = ("text", *MEDIA_LIST_KEY)
KNOWN_KEYS = ("id", "messages", "images", "videos", "audios", "privileged", "answer", "context_answer", "meta")


class JsonlError(ValueError):
    """A malformed JSONL file or line; the message starts with `path:line:`."""


@TASKS.register("jsonl")
@dataclass(frozen=True)
class JsonlTask:
    """Samples read from JSONL files (format in the module docstring)."""

    name: ClassVar[str] = "jsonl"

    train_path: str = ""
    """JSONL file of training samples (required)."""
    eval_path: str = ""
    """JSONL file of evaluation samples; empty for no evaluation set."""
    allow_outside_root: bool = False
    """Allow media paths that leave the JSONL file's directory (`../`, absolute paths)."""
    on_error: str = "raise"
    """A malformed line: raise (when the file is read) | skip (kept as a sample that fails when drawn)."""

    def __post_init__(self) -> None:
        if not self.train_path:
            raise ValueError("JsonlTask needs train_path, a JSONL file of training samples")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be raise or skip, got {self.on_error!r}")
        # Read both files now, so a bad line fails when the run is built rather than mid-training.
        self.train_samples()
        self.eval_samples()

    def train_samples(self) -> Sequence[Sample]:
        return self._train

    def eval_samples(self) -> Sequence[Sample]:
        return self._eval

    def verify(self, completion: str, sample: Sample) -> bool:
        return sample.answer is not None and normalise_answer(completion) == normalise_answer(sample.answer)

    def corpus(self) -> Iterator[str]:
        for sample in (*self._train, *self._eval):
            for message in sample.messages:
                content = message["content"]
                if isinstance(content, str):
                    yield content
                else:
                    yield from (part["text"] for part in content if part["type"] == "text")
            if sample.privileged is not None:
                yield sample.privileged
            yield from (text for text in (sample.answer, sample.context_answer) if text is not None)

    # cached_property writes to the instance dict directly, so it works on a frozen dataclass.
    @cached_property
    def _train(self) -> tuple[Sample, ...]:
        return tuple(load_samples(Path(self.train_path), self.allow_outside_root, self.on_error))

    @cached_property
    def _eval(self) -> tuple[Sample, ...]:
        if not self.eval_path:
            return ()
        return tuple(load_samples(Path(self.eval_path), self.allow_outside_root, self.on_error))


def load_samples(path: Path, allow_outside_root: bool = False, on_error: str = "raise") -> list[Sample]:
    """Read and validate every line of a JSONL file; media paths resolve against its directory.
    A bad line raises `JsonlError`, or with `on_error="skip"` becomes a sample carrying the error."""
    root = path.resolve().parent
    samples: list[Sample] = []
    first_line_of_id: dict[str, int] = {}
    with path.open("rb") as file:  # bytes, so a non-UTF-8 line is reported with its line number
        for line_number, raw_line in enumerate(file, start=1):
            default_id = f"{path.stem}:{line_number}"
            try:
                sample = _parse_line(raw_line, line_number, default_id, root, allow_outside_root)
                if sample is not None and sample.id in first_line_of_id:
                    first = first_line_of_id[sample.id]
                    raise JsonlError(f"duplicate id {sample.id!r} (first on line {first})")
            except JsonlError as error:
                if on_error == "raise":
                    raise JsonlError(f"{path}:{line_number}: {error}") from error
                sample = Sample(id=default_id, messages=[], error=f"{path}:{line_number}: {error}")
            if sample is not None:
                first_line_of_id.setdefault(sample.id, line_number)
                samples.append(sample)
    return samples


def _parse_line(raw_line: bytes, line_number: int, default_id: str, root: Path, allow_outside_root: bool):
    """The sample of one line, or None for a blank line; raises `JsonlError` (without the location)."""
    try:
        line = raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise JsonlError(f"not UTF-8 text ({error}); JSONL files must be UTF-8") from error
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise JsonlError(f"invalid JSON at column {error.colno}: {error.msg}") from error
    return _parse_record(record, default_id, root, allow_outside_root)


def _parse_record(record: Any, default_id: str, root: Path, allow_outside_root: bool) -> Sample:
    if not isinstance(record, dict):
        raise JsonlError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(KNOWN_KEYS))
    if unknown:
        raise JsonlError(f"unknown keys {unknown} (known: {', '.join(KNOWN_KEYS)}); put extra fields under 'meta'")
    if "messages" not in record:
        raise JsonlError("missing 'messages'")
    media_part_count = _check_messages(record["messages"])
    media: dict[str, list[MediaRef]] = {}
    for kind, key in MEDIA_LIST_KEY.items():
        paths = record.get(key, [])
        if not isinstance(paths, list) or not all(isinstance(item, str) and item for item in paths):
            raise JsonlError(f"'{key}' must be a list of non-empty path strings")
        if len(paths) != media_part_count[kind]:
            raise JsonlError(
                f"messages have {media_part_count[kind]} {kind} part(s) but '{key}' lists {len(paths)} path(s)"
            )
        for item in paths:
            # Lexical check (no file access) for early feedback; the processor re-checks on the real path.
            if not allow_outside_root and not Path(os.path.normpath(root / item)).is_relative_to(root):
                raise JsonlError(f"{kind} path {item!r} leaves the file's directory (allow_outside_root is off)")
        media[key] = [MediaRef(kind=kind, path=item, root=str(root)) for item in paths]
    sample_id = record.get("id", default_id)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        raise JsonlError(f"'id' must be a string or an integer, got {type(sample_id).__name__}")
    for key in ("privileged", "answer", "context_answer"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise JsonlError(f"'{key}' must be a string, got {type(record[key]).__name__}")
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise JsonlError(f"'meta' must be an object, got {type(meta).__name__}")
    return Sample(
        id=str(sample_id),
        messages=record["messages"],
        **media,
        privileged=record.get("privileged"),
        answer=record.get("answer"),
        context_answer=record.get("context_answer"),
        meta=meta,
    )


def _check_messages(messages: Any) -> dict[str, int]:
    """Raise JsonlError for malformed chat messages; return the number of media parts per kind."""
    if not isinstance(messages, list) or not messages:
        raise JsonlError("'messages' must be a non-empty list of chat messages")
    media_part_count = dict.fromkeys(MEDIA_LIST_KEY, 0)
    for message_index, message in enumerate(messages):
        where = f"messages[{message_index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise JsonlError(f"{where} must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise JsonlError(f"{where}.content must be a string or a list of parts")
        for part_index, part in enumerate(content):
            part_type = part.get("type") if isinstance(part, dict) else None
            if part_type not in PART_TYPES:
                raise JsonlError(f"{where}.content[{part_index}] must be an object with 'type' in {PART_TYPES}")
            if part_type == "text" and not isinstance(part.get("text"), str):
                raise JsonlError(f"{where}.content[{part_index}] is a text part without a string 'text'")
            if part_type != "text":
                media_part_count[part_type] += 1
    return media_part_count
