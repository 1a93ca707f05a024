"""Teacher replicas as Ray actors: each holds the whole teacher and scores micro-batches of rollouts.

A replica renders its own view of each sample (text, media, a cross-tokenizer teacher's bytes) and ships its
signal through the object store: hidden states of completion positions only, in `ray.hidden_dtype`, without
the output head (mmopd.wire). Micro-batches are spread over the replicas by token count (mmopd.dispatch).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch

from mmopd.actor_pool import ActorPool, actor_options, exit_call, exit_point
from mmopd.build import build_processors
from mmopd.config import Config
from mmopd.dispatch import balance
from mmopd.models import ModelBundle
from mmopd.sample import Rollout, Sample, TeacherSignal
from mmopd.teacher import build_teacher
from mmopd.teacher_head import teacher_bundle
from mmopd.trainer import BAD_SAMPLE
from mmopd.wire import pack_signal


class TeacherWorker:
    """One teacher replica (the body of a Ray actor)."""

    def __init__(self, config: Config, exit_at: int = 0):
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        model, _, student_tokenizer = teacher_bundle(config)
        # A teacher of kind model reads only the student's tokenizer (to align bytes when it differs from its own).
        student = ModelBundle(model=None, tokenizer=student_tokenizer, processor=None)
        processors = build_processors(config.data, config.teacher.processor_args)
        scratch = Path(tempfile.gettempdir())  # only an OPSD teacher writes there, and it runs locally
        temperature, chunk = config.rollout.temperature, config.loss.chunk_size
        self.teacher = build_teacher(config.teacher, student, model, processors, scratch, temperature, chunk)
        self.hidden_dtype = config.ray.hidden_dtype
        self.exit_at, self.calls = exit_at, 0

    def check(self, samples: list[Sample]) -> list[str | None]:
        """Why each sample cannot be rendered in the teacher's view (None: it can)."""
        reasons = []
        for sample in samples:
            try:
                self.teacher.prepare(sample)
                reasons.append(None)
            except BAD_SAMPLE as error:
                reasons.append(str(error))
        return reasons

    def score(self, rollouts: list[Rollout]) -> TeacherSignal:
        """The packed signal of one micro-batch of rollouts (mmopd.wire.pack_signal)."""
        self.calls += 1
        exit_point(self.calls, self.exit_at)
        prepared = [self.teacher.prepare(r.sample) for r in rollouts]
        signal = self.teacher.score(prepared, [r.completion_ids for r in rollouts], rollouts)
        return pack_signal(signal, self.hidden_dtype)


class TeacherPool:
    """`ray.teacher_replicas` actors of one teacher."""

    def __init__(self, name: str, config: Config):
        cfg = config.ray
        actor = ray.remote(TeacherWorker)
        options = actor_options(cfg.teacher_resources, cfg.placement, cfg.max_restarts)
        actors = [
            actor.options(**options).remote(config, exit_call(name, replica)) for replica in range(cfg.teacher_replicas)
        ]
        self.pool = ActorPool(f"teacher {name!r}", actors, cfg.max_retries)

    def check(self, samples: list[Sample]):
        """Start checking the teacher's view of `samples` (an even share per replica); `gather_check` ends it."""
        replicas = len(self.pool.actors)
        shares = [samples[replica::replicas] for replica in range(replicas)]
        return shares, self.pool.submit([(replica, "check", (share,)) for replica, share in enumerate(shares)])

    def gather_check(self, started) -> dict[str, str]:
        """Reasons of the samples whose teacher view failed, by sample id."""
        shares, pending = started
        reasons = {}
        for share, share_reasons in zip(shares, self.pool.gather(pending)):
            reasons.update({s.id: reason for s, reason in zip(share, share_reasons) if reason is not None})
        return reasons

    def score(self, micro_batches: list[list[Rollout]], costs: list[int]):
        """Start scoring micro-batches, each on the replica `balance` gives it; `pool.gather` returns the signals."""
        replicas = balance(costs, len(self.pool.actors))
        return self.pool.submit([(r, "score", (rollouts,)) for r, rollouts in zip(replicas, micro_batches)])
