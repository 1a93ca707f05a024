"""Atomic checkpoints and exact resume.

A checkpoint is a Hugging Face model directory (config, safetensors, tokenizer/processor) plus
`trainer_state.pt` (optimizer, RNG, data position) and a `manifest.json` of file sizes and SHA-256
digests. It is written into a temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint; listing checks sizes, loading checks digests, and a resumed run deletes
what a crash left half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmopd.crash import crash_point
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
    write_manifest(tmp, {"step": step})
    crash_point("checkpoint")
    publish_dir(tmp, final)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(directory: Path, header: dict[str, Any]) -> None:
    """`directory/manifest.json`: `header` plus every file's size and SHA-256; then everything is fsynced, so the
    directory can be renamed into place (what `is_complete` and `is_intact` check)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps({**header, "files": manifest}, indent=1))
    for path in [*files, directory / MANIFEST]:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory `tmp` to `final` (replacing it) and make the rename durable."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model_dir(bundle: ModelBundle, path: Path) -> None:
    """`bundle.save(path)` through a temporary directory, so `path` is either complete or absent."""
    for stale in path.parent.glob(f".tmp_{path.name}_*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".tmp_{path.name}_{os.getpid()}")
    bundle.save(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) and all(isinstance(v, dict) for v in files.values()) else None


def is_complete(path: Path) -> bool:
    """Every file of the manifest is present with its size (cheap: used whenever checkpoints are listed)."""
    files = _manifest(path)
    return files is not None and all(
        (path / name).is_file() and (path / name).stat().st_size == entry["size"] for name, entry in files.items()
    )


def is_intact(path: Path) -> bool:
    """Complete, and every file's SHA-256 matches the manifest (checked before a checkpoint is loaded)."""
    return is_complete(path) and all(_sha256(path / name) == entry["sha256"] for name, entry in _manifest(path).items())


def remove_partial(directory: Path) -> list[Path]:
    """Delete what a crash left behind: temporary directories and checkpoints missing files; returns them."""
    if not directory.exists():
        return []
    partial = [p for p in directory.glob(".tmp_*") if p.is_dir()]
    partial += [p for p in directory.glob("step_*") if p.is_dir() and not is_complete(p)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(partial)


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.glob("step_*") if p.is_dir() and is_complete(p))


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose digests match its manifest; a corrupt one is reported and passed over."""
    for checkpoint in reversed(list_checkpoints(directory)):
        if is_intact(checkpoint):
            return checkpoint
        print(f"checkpoint {checkpoint} does not match its manifest (corrupt); trying an older one")
    return None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Copy a checkpoint's weights into `model`. transformers reads the directory, so its key
    conventions (which differ from `state_dict()` for some VLMs) are undone; safetensors only."""
    loaded = type(model).from_pretrained(path, dtype=next(model.parameters()).dtype, use_safetensors=True)
    model.load_state_dict(loaded.state_dict())


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, weights_only=True)
