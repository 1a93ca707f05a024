"""Name registries for the plug-in kinds: processors, tasks, losses, teachers, engines.

A plug-in is found, in order, by a name registered in-process (`@TASKS.register("shapes")`),
by an installed package's entry point in the group `mmopd.<kind>`, or by a `module:attr` path.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(item: Any) -> Any:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> Any:
        if ":" in name:
            module, attr = name.split(":", 1)
            return getattr(importlib.import_module(module), attr)
        if name not in self._items:
            self._load_entry_points(name)
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))})")
        return self._items[name]

    def _load_entry_points(self, name: str | None = None) -> None:
        """Import the plug-ins of this kind's entry points (only `name`'s, when given): a run imports what
        it uses, not every installed plug-in's dependencies."""
        for entry in entry_points(group=f"mmopd.{self.kind}"):
            if entry.name not in self._items and name in (None, entry.name):
                self._items[entry.name] = entry.load()


PROCESSORS = Registry("processors")
TASKS = Registry("tasks")
LOSSES = Registry("losses")
