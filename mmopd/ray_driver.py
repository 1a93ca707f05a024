"""The Ray runtime's loop, readable top to bottom: rollout actors → teacher actors → learner → weight sync.

The loop of mmopd.trainer with each stage on its own pool: the driver draws and renders the step's samples,
routes them to their teachers (mmopd.routing), rollout actors sample each micro-batch from a seed of
(seed, step, index) as the local runtime does, teacher actors score them and ship hidden states through the
object store, and the learner updates; its weights then go to every rollout actor with a new policy version.
With `ray.async_rollouts` the rollouts of the next steps are sampled while this step trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm import tqdm

from mmopd.actor_pool import Pending
from mmopd.build import Parts, build_parts
from mmopd.checkpoint import save_checkpoint, save_model_dir
from mmopd.config import Config, RayConfig
from mmopd.crash import enter_step
from mmopd.cross_objective import dropped_samples, supervised_tokens
from mmopd.guard import count_skipped_update
from mmopd.learner import LearnerBatch, LocalLearner
from mmopd.learner_group import build_learner
from mmopd.metrics import MetricsLog
from mmopd.rollout_pool import RolloutPool
from mmopd.routing import route_of, routed_configs
from mmopd.sample import Rollout, Sample
from mmopd.sampling import micro_batch_seed, rollout_seed_base
from mmopd.teacher_head import load_teacher_head
from mmopd.teacher_pool import TeacherPool
from mmopd.trainer import (
    BAD_SAMPLE,
    batch_of,
    check_prompt_length,
    evaluate_and_log,
    evaluate_before,
    learning_rate,
    open_run,
    skip_log_size,
    step_metrics,
    summary,
)
from mmopd.views import SampleError, collate, prepare, student_messages
from mmopd.wire import unpack_signal, wire_bytes

COUNTERS = ("samples_scored_total", "samples_trained_total")


@dataclass
class Pools:
    """The run's actors: one rollout pool, a teacher pool per route, and each teacher's output head."""

    rollouts: RolloutPool
    teachers: dict[str, TeacherPool]
    heads: dict[str, Any]

    def retries(self) -> int:
        return self.rollouts.pool.retries + sum(pool.pool.retries for pool in self.teachers.values())

    def close(self) -> None:
        for pool in [self.rollouts, *self.teachers.values()]:
            for actor in pool.pool.actors:
                ray.kill(actor)


@dataclass
class StepWork:
    """One step's samples on their way: routed micro-batches, their prompts, and their rollouts in flight."""

    step: int
    drawn: int
    routes: list[str]  # the teacher of each micro-batch
    prompts: list[dict[str, torch.Tensor]]
    reasons: list[str]
    rollouts: Pending


def train(config: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """On-policy distillation with rollout and teacher actor pools on a Ray cluster; returns the run summary."""
    start_ray(config.ray)
    parts = build_parts(config, run_dir, with_teacher=False)
    pools = build_pools(config)
    learner = None
    try:
        single = len(pools.heads) == 1
        learner = build_learner(config, parts.student, next(iter(pools.heads.values())) if single else None)
        if single and not isinstance(learner, LocalLearner):
            pools.heads = {name: None for name in pools.heads}  # the group holds the head: signals travel without it
        return run(config, run_dir, resume, stop_after, parts, pools, learner)
    finally:
        if learner is not None and not isinstance(learner, LocalLearner):
            learner.close()
        pools.close()


def run(config: Config, run_dir: Path, resume: bool, stop_after, parts: Parts, pools: Pools, learner) -> dict:
    """The loop: schedule, eval, logging, checkpoints and exact resume as in `trainer.run_loop`, with the step's
    stages on the pools. With async rollouts a resumed run samples its first steps from the checkpoint's policy
    (the uninterrupted run sampled them one version earlier), so only synchronous runs resume bit-exactly."""
    cfg = config.train
    state = open_learner_run(config, run_dir, resume, parts, learner)
    for key in COUNTERS:
        state.setdefault(key, 0)
    log = MetricsLog(run_dir, state["step"] if state["accuracy_before"] is not None else -1, wandb=cfg.wandb)
    began = time.perf_counter() - state["wall_seconds"]
    evaluate_before(state, log, lambda: evaluate(parts))
    pools.rollouts.sync(learner.weights(), state["step"])
    depth = config.ray.max_staleness if config.ray.async_rollouts else 0
    train_samples, in_flight = parts.task.train_samples(), {}
    progress = tqdm(total=cfg.steps, initial=state["step"], disable=not cfg.progress, dynamic_ncols=True)
    for step in range(state["step"] + 1, cfg.steps + 1):
        enter_step(step)
        for ahead in range(step, min(step + depth, cfg.steps) + 1):  # depth > 0: rollouts overlap this update
            if ahead not in in_flight:
                in_flight[ahead] = launch(parts, pools, config, train_samples, ahead)
        lr = learning_rate(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
        record = {"step": step, **train_step(parts, pools, learner, in_flight.pop(step), lr, config)}
        weights = learner.weights()
        if not isinstance(learner, LocalLearner):
            parts.student.model.load_state_dict(weights)  # the driver's copy evaluates and is checkpointed
        pools.rollouts.sync(weights, step)  # policy version = updates applied
        count_samples(state, record, pools)
        count_skipped_update(state, record)
        evaluate_and_log(state, record, log, lambda: evaluate(parts), step == cfg.steps, cfg)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", kl=f"{record['kl']:.4f}", acc=state["accuracy_last"])
        state["step"], state["wall_seconds"] = step, time.perf_counter() - began
        if step == cfg.steps or step % cfg.checkpoint_every == 0 or step == stop_after:
            state["skip_log_bytes"] = skip_log_size(run_dir)
            save_learner_checkpoint(run_dir / "checkpoints", step, parts, learner, state, cfg.keep_checkpoints)
        if stop_after is not None and step >= stop_after:
            break
    progress.close()
    log.close()
    if state["step"] == cfg.steps:
        save_model_dir(parts.student, run_dir / "final")
    return {**summary(state), **{key: state[key] for key in COUNTERS}, "actor_retries": pools.retries()}


class OptimizerState:
    """Receives the optimizer state `open_run` restores from a learner group's checkpoint, for the group to load."""

    state: dict[str, Any] | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def open_learner_run(config: Config, run_dir: Path, resume: bool, parts: Parts, learner) -> dict[str, Any]:
    """`trainer.open_run` for either learner: a group gets the restored weights and AdamW state from the driver."""
    if isinstance(learner, LocalLearner):
        return open_run(config, run_dir, resume, parts.student.model, learner.optimizer)
    restored = OptimizerState()
    state = open_run(config, run_dir, resume, parts.student.model, restored)
    if restored.state is not None:
        learner.load_state_dict({"model": parts.student.model.state_dict(), "optimizer": restored.state})
    return state


def save_learner_checkpoint(directory: Path, step: int, parts: Parts, learner, state: dict, keep: int) -> None:
    if isinstance(learner, LocalLearner):
        state_dict = {"optimizer": learner.optimizer.state_dict(), "loop": dict(state)}
        save_checkpoint(directory, step, parts.student, state_dict, keep)
    else:
        learner.save_checkpoint(directory, step, parts.student, dict(state), keep)


def start_ray(cfg: RayConfig) -> None:
    """Join `ray.address`, or start a local cluster; a cluster this process already joined is kept."""
    if not ray.is_initialized():
        ray.init(address=cfg.address or None, num_cpus=cfg.num_cpus or None, include_dashboard=False)


def import_actor_modules() -> None:
    """A worker setup hook (`ray.init(runtime_env={"worker_process_setup_hook": ...})`): idle workers import torch,
    transformers and the actors' modules before an actor lands on them (seconds per process on a small CPU)."""
    import mmopd.rollout_pool  # noqa: F401
    import mmopd.teacher_pool  # noqa: F401


def build_pools(config: Config) -> Pools:
    routes = routed_configs(config)
    teachers = {name: TeacherPool(name, routed) for name, routed in routes.items()}
    heads = {name: load_teacher_head(routed) for name, routed in routes.items()}
    return Pools(RolloutPool(config), teachers, heads)


def evaluate(parts: Parts) -> dict[str, float]:
    return parts.evaluate(parts.student, student_messages)


def launch(parts: Parts, pools: Pools, config: Config, train_samples, step: int) -> StepWork:
    """Draw, route and render step `step`'s samples and start sampling their rollouts."""
    cfg = config.train
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # as the local loop: the same seeds, the same rollouts
    seed_base = rollout_seed_base()
    samples = batch_of(train_samples, step, cfg.batch_size, cfg.seed)
    groups, reasons = render_routed(parts, pools, samples, config)
    routes, prompts, micro_batches = [], [], []
    for name, rendered in groups.items():
        for start in range(0, len(rendered), cfg.micro_batch_size):
            chunk = rendered[start : start + cfg.micro_batch_size]
            routes.append(name)
            prompts.append(collate(chunk, parts.student))
            micro_batches.append([prepared.sample for prepared in chunk])
    seeds = [micro_batch_seed(seed_base, index) for index in range(len(prompts))]
    return StepWork(
        step, len(samples), routes, prompts, reasons, pools.rollouts.generate(prompts, micro_batches, seeds)
    )


def render_routed(parts: Parts, pools: Pools, samples: list[Sample], config: Config):
    """Each sample's student view, grouped by teacher (in the order drawn); a sample whose student or teacher view
    fails is skipped with its reason, or raises (data.on_error)."""
    names = sorted(pools.teachers)
    routed: dict[str, list[Sample]] = {name: [] for name in names}
    reasons: dict[str, str] = {}
    for sample in samples:
        try:
            routed[route_of(sample, config.routing.by, names, config.routing.default)].append(sample)
        except SampleError as error:
            reasons[sample.id] = str(error)
    checks = {name: pools.teachers[name].check(routed[name]) for name in names if routed[name]}
    groups = {name: [] for name in names}
    for name in names:
        for sample in routed[name]:
            try:
                prepared = prepare(sample, student_messages(sample), parts.student, parts.processors)
                check_prompt_length(prepared, parts.student, config.data.max_prompt_tokens)
                groups[name].append(prepared)
            except BAD_SAMPLE as error:
                reasons[sample.id] = str(error)
    for name, started in checks.items():
        for sample_id, reason in pools.teachers[name].gather_check(started).items():
            reasons.setdefault(sample_id, reason)  # the student view's reason first, as the local runtime
    if reasons and config.data.on_error == "raise":
        raise SampleError(next(iter(reasons.values())))
    groups = {name: [p for p in group if p.sample.id not in reasons] for name, group in groups.items()}
    return {name: group for name, group in groups.items() if group}, list(reasons.values())


def train_step(parts: Parts, pools: Pools, learner, work: StepWork, lr: float, config: Config) -> dict[str, Any]:
    """Gather the step's rollouts, have them scored, update the learner; the step's metrics."""
    began = time.perf_counter()
    rollouts: list[list[Rollout]] = pools.rollouts.pool.gather(work.rollouts)
    lag = policy_lag(rollouts, work.step - 1, config.ray.max_staleness if config.ray.async_rollouts else 0)
    packed = score(pools, work, rollouts)
    reasons = work.reasons + [reason for signal in packed for reason in dropped_samples(signal)]
    for reason in reasons:
        parts.report_skip(reason)
    device = parts.student.model.device
    signals = [unpack_signal(signal, pools.heads[route], device) for signal, route in zip(packed, work.routes)]
    supervised = sum(supervised_tokens(group, signal) for group, signal in zip(rollouts, signals))
    teachers = work.routes if len(pools.teachers) > 1 else []  # per-teacher kl (teacher/NAME/kl)
    record = learner.update(lr, LearnerBatch(work.prompts, rollouts, signals, supervised, teachers))
    kept = sum(len(group) - len(dropped_samples(signal)) for group, signal in zip(rollouts, signals))
    signal_bytes = sum(wire_bytes(signal) for signal in packed)  # as sent: bf16 hidden states halve it
    return {
        **record,
        **step_metrics(rollouts, supervised, signal_bytes, len(reasons), began),
        "policy_lag": lag,
        "samples_drawn": work.drawn,
        "samples_scored": sum(len(group) for group in rollouts),
        "samples_trained": 0 if record.get("skipped_update") else kept,
        **teacher_metrics(work.routes, rollouts, packed, len(pools.teachers)),
    }


def score(pools: Pools, work: StepWork, rollouts: list[list[Rollout]]) -> list:
    """Every micro-batch's packed signal, in order; each teacher's replicas are balanced by token count."""
    started = {}
    for name, pool in pools.teachers.items():
        indices = [index for index, route in enumerate(work.routes) if route == name]
        costs = [
            int(work.prompts[i]["attention_mask"].sum()) + sum(len(r.completion_ids) for r in rollouts[i])
            for i in indices
        ]
        if indices:
            started[name] = (indices, pool.score([rollouts[i] for i in indices], costs))
    signals: list[Any] = [None] * len(rollouts)
    for name, (indices, pending) in started.items():
        for index, signal in zip(indices, pools.teachers[name].pool.gather(pending)):
            signals[index] = signal
    return signals


def policy_lag(rollouts: list[list[Rollout]], learner_version: int, limit: int) -> int:
    """The largest lag of the rollouts' policy behind the learner's; beyond `limit` is a bug, not a metric."""
    lag = max((learner_version - r.policy_version for group in rollouts for r in group), default=0)
    if lag > limit or lag < 0:
        raise RuntimeError(f"rollouts lag the learner by {lag} policy versions (allowed: 0 to {limit})")
    return lag


def teacher_metrics(routes: list[str], rollouts, packed, teachers: int) -> dict[str, float]:
    """Per-teacher samples and bytes per token, when several teachers share the run (the learner adds kl)."""
    if teachers < 2:
        return {}
    record = {}
    for name in sorted(set(routes)):
        mine = [i for i, route in enumerate(routes) if route == name]
        tokens = sum(len(r.completion_ids) for i in mine for r in rollouts[i])
        record[f"teacher/{name}/samples"] = sum(len(rollouts[i]) for i in mine)
        record[f"teacher/{name}/bytes_per_token"] = sum(wire_bytes(packed[i]) for i in mine) / max(tokens, 1)
    return record


def count_samples(state: dict[str, Any], record: dict[str, Any], pools: Pools) -> None:
    """The run's sample counters (checkpointed with the loop state): each sample scored and trained once."""
    state["samples_scored_total"] += record["samples_scored"]
    state["samples_trained_total"] += record["samples_trained"]
    state["skipped"] += record["skipped"]
    record.update({key: state[key] for key in COUNTERS}, actor_retries=pools.retries())
