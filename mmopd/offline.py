"""Offline OPD after Lightning OPD (Wu, Han, Cai 2026, arXiv 2604.13010): score once, train with no teacher.

The initial student's rollouts (drawn and seeded as online OPD's first steps) are scored once into a store;
training reuses them with no teacher built. The paper stores sampled-token logprobs for a policy-gradient loss;
mmopd also stores hidden states (+ head once) for full-vocabulary divergences, and checks teacher consistency.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mmopd.build import Parts, build_parts
from mmopd.completions import rendered_positions
from mmopd.config import Config, ModelConfig, to_dict
from mmopd.crash import enter_step
from mmopd.cross_teacher import CrossTokenizerTeacher
from mmopd.learner import LearnerBatch, accumulate_gradients
from mmopd.models import DTYPES, build_model
from mmopd.teacher_store import (
    StoredRollout,
    StoreError,
    TeacherStore,
    new_workdir,
    open_store,
    stored_rollout,
    weights_digest,
    write_store,
)
from mmopd.trainer import batch_of, render_batch, run_loop, sample_and_score, seed_step, step_metrics
from mmopd.views import collate, student_messages

# Config sections that decide what a store holds: a store made under other values is another experiment.
STORE_KEYS = ("tokenizer", "teacher", "data", "rollout")


class TeacherConsistencyError(StoreError):
    """The store's teacher is not the teacher the student was fine-tuned on (Lightning OPD's teacher consistency)."""


def collect_store(config: Config, path: Path | str) -> dict[str, Any]:
    """Sample `offline.num_rollouts` rollouts with the initial student, score them once with the teacher, and write
    the store at `path`; returns the collection summary. A complete store at `path` is kept, not collected again."""
    path = Path(path)
    if path.exists():
        return {**open_store(path).manifest["summary"], "collected": False}
    began = time.perf_counter()
    workdir = new_workdir(path)
    parts = build_parts(config, workdir, with_teacher=True)  # skipped samples are listed in the store
    if isinstance(parts.teacher, CrossTokenizerTeacher):
        raise StoreError("an offline store holds signal on the student's tokens; the teacher's tokenizer differs")
    cfg = config.train
    wanted = config.offline.num_rollouts or math.ceil(cfg.steps * cfg.batch_size / config.offline.passes)
    batches = math.ceil(wanted / cfg.batch_size)
    train_samples = parts.task.train_samples()
    records, signals, offset = [], [], 0
    for step in range(1, batches + 1):
        seed_step(cfg.seed, step)  # as online OPD's step `step`: the same prompts and the same rollouts
        indices = batch_of(range(len(train_samples)), step, cfg.batch_size, cfg.seed)
        samples = [train_samples[i] for i in indices]
        index_of = {id(sample): i for sample, i in zip(samples, indices)}
        _, rollouts, step_signals, _, _ = sample_and_score(parts, samples, config, step)
        for group, signal in zip(rollouts, step_signals):
            for rollout in group:
                records.append(stored_rollout(rollout, index_of[id(rollout.sample)], offset))
                offset += len(rollout.completion_ids)
            signals.append(signal)
    tensors = stacked_signal(signals, DTYPES[config.offline.hidden_dtype])
    summary = {
        "rollouts": len(records),
        "tokens": offset,
        "collect_seconds": time.perf_counter() - began,
        "signal": config.teacher.signal,
        "hidden_dtype": config.offline.hidden_dtype,
    }
    header = {
        "teacher_digest": weights_digest(parts.teacher.bundle.model),
        "student_digest": weights_digest(parts.student.model),
        "summary": summary,
    }
    enter_step(0)
    write_store(path, records, tensors, header, yaml.safe_dump(to_dict(config), sort_keys=False), workdir)
    print(f"collected {len(records)} rollouts ({offset} tokens) into {path} in {summary['collect_seconds']:.1f} s")
    return {**summary, "collected": True}


def stacked_signal(signals: list, hidden_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The per-micro-batch signals as one tensor over all stored tokens, and the teacher's head once."""
    if signals[0].kind == "sampled":
        return {"logprobs": torch.cat([s.logprobs.detach().float().cpu() for s in signals])}  # (N,)
    tensors = {
        "hidden": torch.cat([s.hidden.detach().to("cpu", hidden_dtype) for s in signals]),  # (N, H)
        "head_weight": signals[0].head_weight.detach().cpu(),  # (V, H)
    }
    if signals[0].head_bias is not None:
        tensors["head_bias"] = signals[0].head_bias.detach().cpu()  # (V,)
    return tensors


def train_offline(config: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict:
    """Offline OPD of `config.student` from the store `offline.store` (collected first when missing)."""
    store_path = store_location(config, run_dir)
    collected = collect_store(config, store_path) if not store_path.exists() else None
    store = open_store(store_path)
    check_store_config(store, config)
    consistency = teacher_consistency(store, config)
    parts = build_parts(config, run_dir, with_teacher=False)
    same_student = weights_digest(parts.student.model) == store.manifest["student_digest"]
    if not same_student:
        print(f"the student differs from the one that sampled {store_path}: its rollouts are off-policy from step 1")
    train_samples = parts.task.train_samples()

    def step_fn(step: int, records: list[StoredRollout]) -> dict[str, Any]:
        return offline_step(parts, store, records, train_samples, config)

    def eval_fn() -> dict[str, float]:
        return parts.evaluate(parts.student, student_messages)

    cfg = config.train
    result = run_loop(
        config, run_dir, resume, stop_after, parts.student, step_fn, eval_fn, store.records, cfg.lr, cfg.warmup_steps
    )
    return {
        **result,
        "offline_store": str(store_path),
        "collect_seconds": store.manifest["summary"]["collect_seconds"] if collected else 0.0,
        "stored_rollouts": len(store.records),
        "teacher_consistency": consistency,
        "store_teacher_digest": store.manifest["teacher_digest"],
        "same_initial_student": same_student,
    }


def store_location(config: Config, run_dir: Path) -> Path:
    """`offline.store`; a relative path lies in the run directory, so each recipe run scores its own teacher."""
    return Path(run_dir) / config.offline.store


def offline_step(
    parts: Parts, store: TeacherStore, records: list[StoredRollout], train_samples, config: Config
) -> dict[str, Any]:
    """One optimizer step on stored rollouts: re-render the student's prompts, read the teacher's stored signal."""
    began = time.perf_counter()
    samples = [train_samples[record.index] for record in records]
    rendered, reasons = render_batch(parts, samples, config.data.on_error, config.data.max_prompt_tokens)
    kept = [(r.student, records[i]) for r, i in zip(rendered, rendered_positions(samples, rendered))]
    for reason in reasons:
        parts.report_skip(reason)
    micro = config.train.micro_batch_size
    groups = [kept[i : i + micro] for i in range(0, len(kept), micro)]
    prompts = [collate([view for view, _ in group], parts.student) for group in groups]
    rollouts = [[record.rollout(view.sample) for view, record in group] for group in groups]
    device = parts.student.model.device
    signals = [store.signal([record for _, record in group], device) for group in groups]
    supervised = sum(len(r.completion_ids) for group in rollouts for r in group)
    totals = accumulate_gradients(parts.student, LearnerBatch(prompts, rollouts, signals, supervised), config)
    return {**totals, **step_metrics(rollouts, supervised, store.signal_bytes(supervised), len(reasons), began)}


def check_store_config(store: TeacherStore, config: Config) -> None:
    """The store must have been collected under this config's teacher, task, tokenizer and sampling."""
    made_with = leaves(yaml.safe_load((store.path / "config.yaml").read_text()))
    now = leaves(to_dict(config))
    for key in sorted(k for k in {*made_with, *now} if k.split(".")[0] in STORE_KEYS):
        if made_with.get(key) != now.get(key):
            raise StoreError(
                f"teacher store {store.path} was collected with {key}={made_with.get(key)!r}, this run has "
                f"{key}={now.get(key)!r}; collect a new store (another offline.store path) or restore the config"
            )
    if store.kind != config.teacher.signal:
        raise StoreError(
            f"teacher store {store.path} holds {store.kind} signal; teacher.signal={config.teacher.signal}"
        )


def leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def teacher_consistency(store: TeacherStore, config: Config) -> str:
    """consistent | unknown (no reference given) | inconsistent (only with offline.consistency=warn)."""
    reference = config.offline.sft_teacher
    if not reference:
        print("teacher consistency unchecked: offline.sft_teacher does not name the teacher of the student's SFT data")
        return "unknown"
    expected = reference if reference.startswith("sha256:") else reference_digest(reference, config)
    if expected == store.manifest["teacher_digest"]:
        return "consistent"
    message = (
        f"teacher store {store.path} was scored by teacher {store.manifest['teacher_digest'][:19]}..., but the "
        f"student was fine-tuned on teacher {expected[:19]}... (offline.sft_teacher={reference}); Lightning OPD "
        "shows this gradient bias is irreducible (online or offline). Score the store with the SFT teacher, "
        "or set offline.consistency=warn to train anyway"
    )
    if config.offline.consistency == "error":
        raise TeacherConsistencyError(message)
    print("warning: " + message)
    return "inconsistent"


def reference_digest(directory: str, config: Config) -> str:
    """The weight digest of the model directory `offline.sft_teacher`, loaded as the teacher is (same dtype)."""
    spec = ModelConfig(path=directory, dtype=config.teacher.model.dtype)
    bundle = build_model(spec, None, device="cpu")
    return weights_digest(bundle.model)
