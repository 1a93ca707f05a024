"""Atomic checkpoints and exact resume.

A checkpoint is a Hugging Face model directory (config, safetensors, tokenizer/processor) plus
`trainer_state.pt` (optimizer, RNG, data position) and a `manifest.json` of file sizes. It is
written into a temporary directory and renamed into place, so a crash never leaves a half-written
checkpoint; a checkpoint whose files do not match its manifest is ignored on load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmopd.models import ModelBundle

STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        # As plain lists: weights_only loading refuses pickled numpy arrays.
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def save_checkpoint(directory: Path, step: int, bundle: ModelBundle, state: dict[str, Any], keep: int) -> Path:
    """Write `directory/step_XXXXXXX` atomically and prune to the `keep` newest."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:07d}"
    tmp = directory / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    bundle.save(tmp)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(tmp)): p.stat().st_size for p in files}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": manifest}, indent=1))
    for path in [*files, tmp / MANIFEST]:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    manifest = path / MANIFEST
    if not manifest.exists():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((path / name).is_file() and (path / name).stat().st_size == size for name, size in files.items())


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.glob("step_*") if p.is_dir() and is_complete(p))


def latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Copy a checkpoint's weights into `model`. transformers reads the directory, so its key
    conventions (which differ from `state_dict()` for some VLMs) are undone; safetensors only."""
    loaded = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype, use_safetensors=True)
    model.load_state_dict(loaded.state_dict())


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, weights_only=True)
