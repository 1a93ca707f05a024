"""The teacher store: written atomically (a crash leaves no store, and the next collection starts clean), a
damaged one is refused with what to do, the hidden-state dtype is as configured, digests tell teachers apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mmopd.teacher_store
from mmopd.config import ModelConfig, load_config
from mmopd.models import build_tiny
from mmopd.offline import collect_store
from mmopd.teacher_store import StoreError, open_store, weights_digest

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
TINY = ["train.batch_size=4", "train.micro_batch_size=4", "offline.num_rollouts=4"]


def config(store: Path, *overrides: str):
    return load_config(DEBUG, [*TINY, f"offline.store={store}", *overrides])


class Killed(Exception):
    pass


def test_a_crash_before_the_rename_leaves_no_store_and_collection_restarts(tmp_path, monkeypatch):
    store = tmp_path / "store"

    def crash(point: str) -> None:
        if point == "store":
            raise Killed

    monkeypatch.setattr(mmopd.teacher_store, "crash_point", crash)
    with pytest.raises(Killed):
        collect_store(config(store), store)
    assert not store.exists() and list(tmp_path.glob(".store.tmp-*"))  # everything written but not published
    with pytest.raises(StoreError, match="no teacher store"):
        open_store(store)
    monkeypatch.undo()
    summary = collect_store(config(store), store)
    assert summary["collected"] and summary["rollouts"] == 4
    assert not list(tmp_path.glob(".store.tmp-*"))  # the half-written one was removed
    assert collect_store(config(store), store)["collected"] is False  # a complete store is kept


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_stored_hidden_states_have_the_configured_dtype_and_a_damaged_store_is_refused(tmp_path, dtype):
    store = tmp_path / "store"
    collect_store(config(store, f"offline.hidden_dtype={dtype}"), store)
    opened = open_store(store)
    assert opened.tensors["hidden"].dtype == getattr(torch, dtype)
    assert opened.tensors["hidden"].shape[0] == sum(len(r.completion_ids) for r in opened.records)
    assert opened.tensors["head_weight"].dtype == torch.float32  # the teacher's own dtype
    signal = opened.signal(opened.records[:2], torch.device("cpu"))
    assert signal.hidden.dtype == torch.float32 and signal.hidden.shape[0] == sum(
        len(r.completion_ids) for r in opened.records[:2]
    )

    (store / "rollouts.json").write_text((store / "rollouts.json").read_text().replace("1", "2", 1))
    with pytest.raises(StoreError, match="digests"):
        open_store(store)
    (store / "signal.safetensors").unlink()
    with pytest.raises(StoreError, match="misses files"):
        open_store(store)
    (store / "manifest.json").unlink()
    with pytest.raises(StoreError, match="no manifest"):
        open_store(store)


def test_weight_digest_tells_teachers_apart(tokenizer):
    spec = ModelConfig(family="qwen2", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    first, again = build_tiny(spec, tokenizer), build_tiny(spec, tokenizer)
    other = build_tiny(ModelConfig(**{**spec.__dict__, "seed": 5}), tokenizer)
    assert weights_digest(first.model) == weights_digest(again.model) != weights_digest(other.model)
    with torch.no_grad():
        next(again.model.parameters()).view(-1)[0] += 1e-6  # one weight moved a little
    assert weights_digest(again.model) != weights_digest(first.model)
