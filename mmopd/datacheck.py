"""`mmopd data check`: decode every sample's media with the configured processors and list the bad ones.

Training skips (or stops at) a bad sample when it meets it (`data.on_error`); this finds them all
beforehand, with the same processors and settings, so they can be fixed. Each report names the split,
the sample's index and id, the field (`videos[0]`), the file and the processor's reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmopd.build import build_processors, build_task
from mmopd.config import Config, DataConfig
from mmopd.registry import TASKS
from mmopd.sample import MediaError, Sample
from mmopd.tasks.jsonl import load_samples

MEDIA_FIELDS = ("images", "videos", "audios")


@dataclass(frozen=True)
class BadMedia:
    """One media item that a processor refused."""

    split: str
    index: int
    id: str
    field: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.split}[{self.index}] {self.id!r} {self.field} {self.file}: {self.reason}"


@dataclass
class CheckReport:
    checked: int = 0
    """Samples checked."""
    media: int = 0
    """Media items decoded."""
    bad: list[BadMedia] = dataclasses.field(default_factory=list)
    """Every refused media item, in sample order."""

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "bad": [dataclasses.asdict(item) for item in self.bad]}


def check_samples(
    samples: Sequence[Sample], processors: dict[str, Any], split: str, report: CheckReport, max_samples: int = 0
) -> None:
    """Decode the media of `samples` (the first `max_samples` when not 0) into `report`."""
    count = min(len(samples), max_samples) if max_samples else len(samples)
    for index in range(count):
        sample = samples[index]
        report.checked += 1
        for field, position, ref, reason in _sample_problems(sample, processors):
            report.media += 1
            if reason is not None:
                report.bad.append(BadMedia(split, index, sample.id, f"{field}[{position}]", ref.describe(), reason))


def _sample_problems(sample: Sample, processors: dict[str, Any]) -> Iterator[tuple[str, int, Any, str | None]]:
    """(field, position, ref, reason or None) for every media item of `sample`."""
    for field in MEDIA_FIELDS:
        for position, ref in enumerate(getattr(sample, field)):
            processor = processors.get(ref.kind)
            if processor is None:
                yield field, position, ref, f"no processor for {ref.kind} media (known: {sorted(processors)})"
                continue
            try:
                processor.load(ref, sample.id)
            except MediaError as error:
                yield field, position, ref, error.reason
            except Exception as error:  # a processor bug would stop training too: report it here
                yield field, position, ref, f"processor failed: {type(error).__name__}: {error}"
            else:
                yield field, position, ref, None


def check_config(config: Config, max_samples: int = 0) -> CheckReport:
    """Check the train and eval samples of the configured task with the configured processors."""
    processors = build_processors(config.data)
    task = build_task(_paths_checked_by_processors(config.data))
    report = CheckReport()
    check_samples(task.train_samples(), processors, "train", report, max_samples)
    check_samples(task.eval_samples(), processors, "eval", report, max_samples)
    return report


def check_jsonl(path: Path, max_samples: int = 0) -> CheckReport:
    """Check a JSONL file in the `jsonl` task format with the default processors."""
    report = CheckReport()
    samples = load_samples(path, allow_outside_root=True)  # escaping paths: reported per sample below
    check_samples(samples, build_processors(DataConfig()), "train", report, max_samples)
    return report


def _paths_checked_by_processors(config: DataConfig) -> DataConfig:
    """A task that refuses escaping paths when it reads its files (the jsonl task) would stop at the
    first one; let it read them, since the processors refuse them again, per sample, on the real path."""
    factory = TASKS.get(config.task)
    if dataclasses.is_dataclass(factory) and "allow_outside_root" in {f.name for f in dataclasses.fields(factory)}:
        return dataclasses.replace(config, task_args={**config.task_args, "allow_outside_root": True})
    return config
