"""The on-policy distillation loop, readable top to bottom: rollout → teacher → loss → step.

Follows on-policy distillation as in GKD (Agarwal et al., 2024) and the Thinking Machines recipe:
the student samples, the teacher scores those exact tokens, the student minimises a per-token
divergence on its own samples. Each step reseeds from (seed, step), so a resumed run replays the
uninterrupted one exactly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmopd.blind_check import blind_check_from_config
from mmopd.build import Parts, build_parts
from mmopd.checkpoint import (
    latest_checkpoint,
    load_state,
    load_weights,
    remove_partial,
    save_checkpoint,
    save_model_dir,
    set_rng_state,
)
from mmopd.completions import generate_group, step_sources
from mmopd.config import Config, save_config
from mmopd.crash import crash_point, enter_step
from mmopd.cross_objective import dropped_samples, supervised_tokens
from mmopd.guard import NonFiniteError, count_skipped_update, streak_message
from mmopd.heap import release_free_heap
from mmopd.learner import (  # noqa: F401  (student_loss, optimizer_step: re-exported for callers)
    LearnerBatch,
    accumulate_gradients,
    build_optimizer,
    optimizer_step,
    student_loss,
)
from mmopd.metrics import MetricsLog
from mmopd.models import ModelBundle
from mmopd.rewards import step_advantages
from mmopd.sample import MediaError, Sample, TeacherSignal
from mmopd.sampling import micro_batch_seed, rollout_seed_base
from mmopd.views import Prepared, SampleError, collate, prepare, student_messages

BAD_SAMPLE = (MediaError, SampleError)


def train(config: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """On-policy distillation of `config.student` from `config.teacher`; returns the run summary."""
    parts = build_parts(config, run_dir, with_teacher=True)
    task, student = parts.task, parts.student
    blind_check = blind_check_from_config(parts, config)  # "does the teacher see the media?"
    unlogged = dict(blind_check)  # goes into the first step's record of this session

    def step_fn(step: int, samples: list[Sample]) -> dict[str, Any]:
        record = {**opd_step(parts, samples, config, step), **unlogged}
        unlogged.clear()
        return record

    def eval_fn() -> dict[str, float]:
        return parts.evaluate(student, student_messages)

    result = run_loop(
        config,
        run_dir,
        resume,
        stop_after,
        student,
        step_fn,
        eval_fn,
        task.train_samples(),
        config.train.lr,
        config.train.warmup_steps,
        group_size=config.rollout.group_size,
    )
    return {**result, **blind_check}


def train_on_runtime(config: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """`train` in this process (runtime local), or the Ray driver's loop over actor pools (runtime ray)."""
    if config.runtime == "ray":
        from mmopd.ray_driver import train as train_on_ray

        return train_on_ray(config, run_dir, resume=resume)
    if config.offline.store:
        from mmopd.offline import train_offline

        return train_offline(config, run_dir, resume=resume)
    return train(config, run_dir, resume=resume)


def run_loop(
    config: Config,
    run_dir: Path,
    resume: bool,
    stop_after: int | None,
    bundle: ModelBundle,
    step_fn: Callable[[int, list[Sample]], dict[str, Any]],
    eval_fn: Callable[[], dict[str, float]],
    train_samples,
    peak_lr: float,
    warmup_steps: int,
    steps: int | None = None,
    batch_size: int | None = None,
    group_size: int = 1,
) -> dict[str, Any]:
    """The loop shared by OPD and SFT: schedule, AdamW, eval, logging, checkpoints, exact resume. A step's batch
    holds batch_size / group_size samples, each `group_size` times in a row (GRPO's groups)."""
    cfg = config.train
    steps = steps or cfg.steps
    batch_size = batch_size or cfg.batch_size
    model = bundle.model
    optimizer = build_optimizer(model, peak_lr, cfg)
    state = open_run(config, run_dir, resume, model, optimizer)
    # Metrics after the checkpoint's step are replayed; with no checkpoint, step 0 is logged again too.
    log = MetricsLog(run_dir, state["step"] if state["accuracy_before"] is not None else -1, wandb=cfg.wandb)
    began = time.perf_counter() - state["wall_seconds"]
    evaluate_before(state, log, eval_fn)
    progress = tqdm(total=steps, initial=state["step"], disable=not cfg.progress, dynamic_ncols=True)
    for step in range(state["step"] + 1, steps + 1):
        enter_step(step)
        seed_step(cfg.seed, step)
        lr = learning_rate(step, steps, peak_lr, warmup_steps, cfg.schedule, cfg.min_lr_ratio)
        samples = grouped_batch_of(train_samples, step, batch_size, cfg.seed, group_size)
        record = {"step": step, **optimizer_step(model, optimizer, partial(step_fn, step, samples), lr, cfg)}
        state["skipped"] += record.get("skipped", 0)
        count_skipped_update(state, record)
        evaluate_and_log(state, record, log, eval_fn, step == steps, cfg)
        progress.update(1)
        shown = {key: f"{record[key]:.4f}" for key in ("loss", "kl") if key in record}
        progress.set_postfix(**shown, acc=state["accuracy_last"])
        state["step"] = step
        state["wall_seconds"] = time.perf_counter() - began
        if step == steps or step % cfg.checkpoint_every == 0 or step == stop_after:
            state["skip_log_bytes"] = skip_log_size(run_dir)
            state_dict = {"optimizer": optimizer.state_dict(), "loop": dict(state)}
            save_checkpoint(run_dir / "checkpoints", step, bundle, state_dict, cfg.keep_checkpoints)
        if stop_after is not None and step >= stop_after:
            break
    progress.close()
    log.close()
    if state["step"] == steps:
        save_model_dir(bundle, run_dir / "final")
    return summary(state)


def seed_step(seed: int, step: int) -> None:
    """Reseed torch from (seed, step): what a step samples does not depend on the steps before it."""
    torch.manual_seed(seed * 1_000_003 + step)


def evaluate_before(state: dict[str, Any], log: MetricsLog, eval_fn) -> None:
    """A new run's step-0 evaluation: every eval metric is logged, and its accuracy is `accuracy_before`."""
    if state["accuracy_before"] is None:
        before = eval_fn()
        state["accuracy_before"] = state["accuracy_last"] = before["accuracy"]
        log.log({"step": 0, **before})


def evaluate_and_log(state: dict[str, Any], record: dict[str, Any], log: MetricsLog, eval_fn, last: bool, cfg) -> None:
    """Evaluate when due, log the step, and stop the run after `max_nonfinite_steps` skipped updates in a row."""
    step = record["step"]
    if last or (cfg.eval_every and step % cfg.eval_every == 0):
        record.update(eval_fn())
        state["accuracy_last"] = record["accuracy"]
    log.log(record)
    if state["nonfinite_streak"] >= cfg.max_nonfinite_steps:
        log.close()
        raise NonFiniteError(streak_message(state["nonfinite_streak"], step, record["nonfinite_reason"]))


def summary(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "steps": state["step"],
        "accuracy_before": state["accuracy_before"],
        "accuracy_after": state["accuracy_last"],
        "skipped_samples": state["skipped"],
        "skipped_updates": state["skipped_updates"],
        "wall_seconds": state["wall_seconds"],
    }


def open_run(config: Config, run_dir: Path, resume: bool, model, optimizer) -> dict[str, Any]:
    """Start a new run directory, or restore weights, optimizer, RNG and loop state from its latest checkpoint."""
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    state = {"step": 0, "accuracy_before": None, "accuracy_last": None, "skipped": 0, "wall_seconds": 0.0}
    state.update(skipped_updates=0, nonfinite_streak=0, skip_log_bytes=0)
    for leftover in remove_partial(run_dir / "checkpoints") if resume else []:
        print(f"removed {leftover}, a checkpoint left half-written by a crash")
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if checkpoint is not None:
        load_weights(checkpoint, model)
        saved = load_state(checkpoint)
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        state.update(saved["loop"])
    elif resume:
        print(f"no complete checkpoint in {run_dir}; starting from step 0")
    if skip_log_size(run_dir):
        # Skips logged after the checkpoint are replayed, like metrics: keep each exactly once.
        os.truncate(run_dir / "skipped.txt", state["skip_log_bytes"])
    return state


def skip_log_size(run_dir: Path) -> int:
    path = run_dir / "skipped.txt"
    return path.stat().st_size if path.exists() else 0


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str, min_ratio: float) -> float:
    if step <= warmup:
        return peak * step / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "constant":
        return peak
    if schedule == "linear":
        return peak * (1 - (1 - min_ratio) * progress)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


_ORDER_CACHE: dict[tuple[int, int, int], torch.Tensor] = {}


def batch_of(samples, step: int, batch_size: int, seed: int) -> list[Sample]:
    """Samples of `step`: consecutive slices of a per-epoch permutation, a pure function of (seed, step)."""
    count = len(samples)
    batch = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, count)
        key = (seed, epoch, count)
        if key not in _ORDER_CACHE:
            _ORDER_CACHE.clear()
            generator = torch.Generator().manual_seed(seed * 7919 + epoch)
            _ORDER_CACHE[key] = torch.randperm(count, generator=generator)
        batch.append(samples[int(_ORDER_CACHE[key][offset])])
    return batch


def grouped_batch_of(samples, step: int, batch_size: int, seed: int, group_size: int = 1) -> list[Sample]:
    """`batch_of` with batch_size / group_size distinct samples, each repeated `group_size` times consecutively:
    a group's rollouts are all in one step, and the step is still a pure function of (seed, step)."""
    distinct = batch_of(samples, step, batch_size // group_size, seed)
    return [sample for sample in distinct for _ in range(group_size)]


@dataclass
class Rendered:
    """A sample rendered for the student and for the teacher."""

    student: Prepared
    teacher: Prepared | None  # None without a teacher (teacher.kind none)


def check_prompt_length(prepared: Prepared, bundle: ModelBundle, limit: int) -> None:
    """Text tokens of the rendered prompt (each media placeholder counted once) must not exceed `limit`."""
    count = len(bundle.tokenizer(prepared.text, add_special_tokens=False)["input_ids"])
    if count > limit:
        raise SampleError(
            f"sample {prepared.sample.id!r}: prompt of {count} tokens exceeds data.max_prompt_tokens={limit}"
        )


def render_batch(
    parts: Parts, samples: list[Sample], on_error: str, max_prompt_tokens: int = 2048
) -> tuple[list[Rendered], list[str]]:
    """Both views of every sample; a bad sample is skipped (its reason kept) or raises."""
    rendered, reasons = [], []
    for sample in samples:
        try:
            student_view = prepare(sample, student_messages(sample), parts.student, parts.processors)
            check_prompt_length(student_view, parts.student, max_prompt_tokens)
            teacher_view = None if parts.teacher is None else parts.teacher.prepare(sample)
            rendered.append(Rendered(student_view, teacher_view))
        except BAD_SAMPLE as error:
            if on_error == "raise":
                raise
            reasons.append(str(error))
    return rendered, reasons


def opd_step(parts: Parts, samples: list[Sample], config: Config, step: int = 0) -> dict[str, Any]:
    """Sample, score, and accumulate gradients for one optimizer step; returns its metrics."""
    began = time.perf_counter()
    prompts, rollouts, signals, reasons, source_metrics = sample_and_score(parts, samples, config, step)
    if config.train.release_heap:
        # Generation and scoring leave freed heap that the loss's (tokens × V) chunk buffers (mmapped) cannot
        # reuse: returned first, it is not resident under the step's peak (~80 MB at the bench's default work).
        release_free_heap()
    supervised = sum(supervised_tokens(group_rollouts, s) for group_rollouts, s in zip(rollouts, signals))
    advantages, reward_stats = [], {}
    if config.loss.reward_weight:
        # The whole step's rewards before any loss: a group's advantage needs all its rollouts.
        verify, group_size, scale = parts.task.verify, config.rollout.group_size, config.loss.advantage_scale
        advantages, reward_stats = step_advantages(rollouts, parts.student.tokenizer, verify, group_size, scale)
    batch = LearnerBatch(prompts, rollouts, signals, supervised, advantages=advantages)
    totals = accumulate_gradients(parts.student, batch, config)
    if parts.teacher is None:
        totals.pop("kl")  # no teacher, no distance to it
    signal_bytes = sum(signal.num_bytes() for signal in signals)
    metrics = step_metrics(rollouts, supervised, signal_bytes, len(reasons), began)
    return {**totals, **reward_stats, **metrics, **source_metrics}


def sample_and_score(parts: Parts, samples: list[Sample], config: Config, step: int = 0) -> tuple:
    """One step's collated student prompts, rollouts (per micro-batch, seeded from the step's generator), the
    teacher's signal for them, why samples were skipped (reported), and the completion sources' metrics. Also what
    an offline store collects."""
    seed_base = rollout_seed_base()
    rendered, reasons = render_batch(parts, samples, config.data.on_error, config.data.max_prompt_tokens)
    # rollout.on_policy_fraction < 1: some samples get an off-policy completion (answers or the teacher's).
    sources = step_sources(parts, samples, rendered, step, seed_base, config)
    rendered, reasons = sources.rendered, reasons + sources.reasons
    micro = config.train.micro_batch_size
    groups = [rendered[i : i + micro] for i in range(0, len(rendered), micro)]
    fixed = [sources.fixed[i : i + micro] for i in range(0, len(rendered), micro)]
    prompts = [collate([r.student for r in group], parts.student) for group in groups]
    rollouts = []
    for index, (prompt, group, group_fixed) in enumerate(zip(prompts, groups, fixed)):
        torch.manual_seed(micro_batch_seed(seed_base, index))
        rollouts.append(generate_group(parts.engine, parts.student, prompt, group, group_fixed))
    crash_point("rollout")
    # Every micro-batch is scored first: a rollout the teacher cannot align leaves the loss's normaliser.
    # The cross-entropy loss reads no teacher signal, and teacher.kind none has no teacher: no teacher forward.
    scored = parts.teacher is not None and config.loss.kind != "cross_entropy"
    signals = [
        parts.teacher.score([r.teacher for r in group], [r.completion_ids for r in group_rollouts], group_rollouts)
        if scored
        else TeacherSignal("none")
        for group, group_rollouts in zip(groups, rollouts)
    ]
    reasons += [reason for signal in signals for reason in dropped_samples(signal)]
    for reason in reasons:
        parts.report_skip(reason)
    return prompts, rollouts, signals, reasons, sources.metrics(rollouts)


def step_metrics(rollouts, supervised: int, signal_bytes: int, skipped: int, began: float) -> dict[str, float]:
    """Throughput, completion length and teacher traffic of a step that started at `began` (perf_counter)."""
    flat = [r for group in rollouts for r in group]
    seconds = time.perf_counter() - began
    return {
        "tokens_per_second": supervised / seconds,
        "completion_tokens": supervised / max(len(flat), 1),
        "stop_fraction": sum(r.finish_reason == "stop" for r in flat) / max(len(flat), 1),
        "teacher_bytes_per_token": signal_bytes / max(supervised, 1),
        "skipped": skipped,
        "step_seconds": seconds,
    }
