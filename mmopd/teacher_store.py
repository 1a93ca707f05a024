"""The teacher-signal store of offline OPD: the initial student's rollouts and the teacher's signal on them.

A directory: `rollouts.json` (sample index, sampled ids, behaviour logprobs, byte spans, finish reason, offset into
the signal), `signal.safetensors` (hidden states (N, H) in a chosen dtype, or sampled logprobs (N,)), the head once,
the config, and a manifest with weight digests; built in a temporary directory and renamed, like a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmopd.checkpoint import MANIFEST, is_complete, is_intact, publish_dir, write_manifest
from mmopd.config import ConfigError
from mmopd.crash import crash_point
from mmopd.sample import Rollout, Sample, TeacherSignal

FORMAT = 1


class StoreError(ConfigError):
    """A store that cannot be used: missing, half-written, damaged, or made for another config."""


@dataclass
class StoredRollout:
    """One rollout as stored; its tokens are rows `offset : offset + len(completion_ids)` of the signal."""

    index: int  # the sample's index in the task's train set
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    byte_spans: list[tuple[int, int]]
    completion_bytes: str  # hex
    finish_reason: str
    offset: int

    def rollout(self, sample: Sample) -> Rollout:
        spans = [tuple(span) for span in self.byte_spans]
        return Rollout(
            sample,
            list(self.completion_ids),
            list(self.behaviour_logprobs),
            spans,
            bytes.fromhex(self.completion_bytes),
            self.finish_reason,
        )


def stored_rollout(rollout: Rollout, index: int, offset: int) -> StoredRollout:
    return StoredRollout(
        index,
        list(rollout.completion_ids),
        [float(x) for x in rollout.behaviour_logprobs],
        [list(span) for span in rollout.byte_spans],
        rollout.completion_bytes.hex(),
        rollout.finish_reason,
        offset,
    )


@dataclass
class TeacherStore:
    path: Path
    manifest: dict[str, Any]
    records: list[StoredRollout]
    tensors: dict[str, torch.Tensor]  # "hidden" (N, H) or "logprobs" (N,); "head_weight" (V, H), "head_bias" (V,)

    @property
    def kind(self) -> str:
        return "sampled" if "logprobs" in self.tensors else "hidden"

    def signal(self, records: list[StoredRollout], device: torch.device) -> TeacherSignal:
        """The teacher's signal for `records`, concatenated in order, upcast to fp32 on `device`."""
        rows = torch.cat([torch.arange(r.offset, r.offset + len(r.completion_ids)) for r in records])  # (N,)
        if self.kind == "sampled":
            return TeacherSignal("sampled", logprobs=self.tensors["logprobs"][rows].to(device, torch.float32))
        bias = self.tensors.get("head_bias")
        return TeacherSignal(
            "hidden",
            hidden=self.tensors["hidden"][rows].to(device, torch.float32),  # (N, H)
            head_weight=self.tensors["head_weight"].to(device),
            head_bias=None if bias is None else bias.to(device),
        )

    def signal_bytes(self, tokens: int) -> int:
        """Bytes of stored per-token signal for `tokens` tokens (as stored, before the upcast)."""
        tensor = self.tensors["logprobs" if self.kind == "sampled" else "hidden"]
        return tokens * tensor[0].numel() * tensor.element_size()


def weights_digest(model: torch.nn.Module) -> str:
    """`sha256:...` of a model's weights (names, dtypes, shapes, values): equal iff the same teacher."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def write_store(
    path: Path,
    records: list[StoredRollout],
    tensors: dict[str, torch.Tensor],
    header: dict[str, Any],
    config_text: str,
    workdir: Path,
) -> None:
    """Publish the store built in `workdir` (a temporary sibling of `path`) at `path` in one rename."""
    signal = {k: v.contiguous() for k, v in tensors.items() if k in ("hidden", "logprobs")}
    head = {k: v.detach().contiguous() for k, v in tensors.items() if k.startswith("head_")}
    save_file(signal, str(workdir / "signal.safetensors"))
    if head:
        save_file(head, str(workdir / "head.safetensors"))
    (workdir / "rollouts.json").write_text(json.dumps([asdict(r) for r in records]))
    (workdir / "config.yaml").write_text(config_text)
    write_manifest(workdir, {"format": FORMAT, **header})
    crash_point("store")
    publish_dir(workdir, path)


def new_workdir(path: Path) -> Path:
    """A fresh temporary directory beside `path`; what an earlier killed collection left there is deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        print(f"removed {stale}, a store left half-written by a crash")
        shutil.rmtree(stale, ignore_errors=True)
    workdir = path.parent / f".{path.name}.tmp-{os.getpid()}"
    workdir.mkdir()
    return workdir


def open_store(path: Path) -> TeacherStore:
    """Read a complete store; a missing, half-written or damaged one is a StoreError saying what to do."""
    if not path.is_dir():
        raise StoreError(f"no teacher store at {path}; collect one with `mmopd offline collect CONFIG`")
    if not is_complete(path):
        reason = "has no manifest" if not (path / MANIFEST).exists() else "misses files of its manifest"
        raise StoreError(f"teacher store {path} {reason} (half-written or damaged); delete it and collect again")
    if not is_intact(path):
        raise StoreError(f"teacher store {path} does not match its manifest's digests (damaged); delete it")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise StoreError(f"teacher store {path} has format {manifest.get('format')!r}; this mmopd reads {FORMAT}")
    records = [StoredRollout(**r) for r in json.loads((path / "rollouts.json").read_text())]
    tensors = load_file(str(path / "signal.safetensors"))
    if (path / "head.safetensors").exists():
        tensors.update(load_file(str(path / "head.safetensors")))
    return TeacherStore(path, manifest, records, tensors)
