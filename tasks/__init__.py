"""Tasks: where samples come from and how a completion is judged.

A task implements `Task` (train and eval samples, a verifier, the text it can produce) and registers
under a name in `mmopd.registry.TASKS`. Synthetic tasks generate samples lazily from (seed, split,
index) with `LazySamples`, so a 100,000-sample split costs nothing until it is read.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
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
