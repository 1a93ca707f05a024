"""A run imports the plug-ins it uses: looking up one name loads only that entry point, and a text-only
training path (task, processors, trainer) does not import the video decoders."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from mmopd.registry import Registry


def test_get_loads_only_the_named_entry_point(monkeypatch) -> None:
    installed = [
        EntryPoint("plain", "json:dumps", "mmopd.tasks"),
        EntryPoint("broken", "no_such_module_for_mmopd:Task", "mmopd.tasks"),
    ]
    monkeypatch.setattr("mmopd.registry.entry_points", lambda group: installed)
    registry = Registry("tasks")
    import json

    assert registry.get("plain") is json.dumps  # the broken plug-in's module is never imported
    with pytest.raises(ModuleNotFoundError, match="no_such_module_for_mmopd"):
        registry.get("broken")


def test_a_text_training_path_imports_no_video_decoder() -> None:
    code = (
        "import sys\n"
        "import mmopd.bench_worker, mmopd.trainer\n"
        "from mmopd.build import build_processors, build_task\n"
        "from mmopd.config import DataConfig\n"
        "build_processors(DataConfig())\n"
        "build_task(DataConfig(task='shapes'))\n"
        "print(sorted(m for m in ('av', 'decord') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
