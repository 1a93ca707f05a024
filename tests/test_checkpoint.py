"""Checkpoints: written atomically with a manifest of sizes and digests; a corrupt one is passed over
on load, what a crash left half-written is removed, and trainer state never unpickles code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from mmopd.checkpoint import (
    STATE_FILE,
    is_complete,
    is_intact,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    remove_partial,
    save_checkpoint,
)


@pytest.fixture()
def checkpoints(tmp_path, text_teacher) -> Path:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, text_teacher, {"loop": {"step": step}}, keep=3)
    return tmp_path


def test_a_corrupt_checkpoint_is_passed_over(checkpoints):
    newest = checkpoints / "step_0000003"
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed: only the digest can tell
    weights.write_bytes(bytes(data))
    assert is_complete(newest) and not is_intact(newest)
    assert latest_checkpoint(checkpoints) == checkpoints / "step_0000002"


def test_what_a_crash_leaves_is_removed_and_never_loaded(checkpoints):
    (checkpoints / ".tmp_step_0000004_123").mkdir()  # killed before the rename
    (checkpoints / "step_0000003" / STATE_FILE).unlink()  # killed while pruning
    assert [p.name for p in remove_partial(checkpoints)] == [".tmp_step_0000004_123", "step_0000003"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000001", "step_0000002"]
    assert load_state(latest_checkpoint(checkpoints))["loop"] == {"step": 2}


def test_keep_prunes_to_the_newest(tmp_path, text_teacher):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, text_teacher, {"loop": {}}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]


def test_trainer_state_is_loaded_without_unpickling_code(tmp_path, code_in_a_pickle):
    payload, marker = code_in_a_pickle
    torch.save({"step": 1, "payload": payload}, tmp_path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_state(tmp_path)
    assert not marker.exists()
