"""Tasks: where samples come from and how a completion is judged.

A task implements `Task` (train and eval samples, a verifier, the text it can produce) and registers
under a name in `mmopd.registry.TASKS`. Synthetic tasks generate samples lazily from (seed, split,
index) with `LazySamples`, so a 100,000-sample split costs nothing until it is read.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, overload

from mmopd.sample import Sample


class Task(Protocol):
    """A source of samples with a verifier."""

    @property
    def name(self) -> str:
        """The registered name of the task."""
        ...

    def train_samples(self) -> Sequence[Sample]:
        """The samples the student trains on."""
        ...

    def eval_samples(self) -> Sequence[Sample]:
        """The held-out samples accuracy is reported on (may be empty)."""
        ...

    def verify(self, completion: str, sample: Sample) -> bool:
        """Whether `completion` answers `sample` correctly."""
        ...

    def corpus(self) -> Iterable[str]:
        """Every text the task can produce (prompts, privileged text, answers), to train a small
        tokenizer that covers the task."""
        ...


NUMBER_WORDS = ("zero", "one", "two", "three", "four")
"""Counts as synthetic tasks spell them in answers."""


def matches_answer(completion: str, sample: Sample) -> bool:
    """The exact-match verifier of synthetic tasks: the normalised completion equals the reference answer."""
    return sample.answer is not None and normalise_answer(completion) == sample.answer


def normalise_answer(text: str) -> str:
    """Lower-case, collapse whitespace and drop trailing `.!?`, so "Red." and " red " both match "red"."""
    collapsed = " ".join(text.split()).lower()
    return collapsed.rstrip(".!?").rstrip()


class LazySamples(Sequence[Sample]):
    """A read-only sequence whose item `index` is built by `make(index)` when it is read."""

    def __init__(self, length: int, make: Callable[[int], Sample]):
        self._length = length
        self._make = make

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self._make(position) for position in range(*index.indices(self._length))]
        index = operator.index(index)  # accept NumPy and torch integers from samplers, refuse floats
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError(f"sample index {index} out of range for {self._length} samples")
        return self._make(position)


def media_cache(cache_dir: str, name: str, fingerprint: object) -> Path:
    """The folder a synthetic task writes its media files into: `cache_dir` (default `~/.cache/mmopd`),
    then one sub-folder per task and generating parameters, so files from other settings never mix."""
    root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "mmopd"
    digest = hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:12]
    return root / f"{name}-{digest}"


def write_once(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` with `write(tmp)` unless it exists; the rename makes a half-written file impossible,
    also when two processes generate the same sample."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix writers look at
    write(tmp)
    os.replace(tmp, path)


def check_choices(field_name: str, chosen: tuple[str, ...], known: Sequence[str] | dict[str, object]) -> None:
    """A task argument that picks from `known` must be non-empty and name only known items."""
    if not chosen:
        raise ValueError(f"{field_name} must not be empty")
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise ValueError(f"unknown {field_name} {unknown}; known: {', '.join(known)}")
