"""Rollout replicas as Ray actors: each holds a copy of the student and its engine, and samples micro-batches.

After every update the learner's weights are put into the object store once and every replica loads them
(zero-copy reads on the same node, mmopd.wire); each rollout is stamped with the policy version that sampled
it. A generate call names the version it needs, so a replica that Ray restarted reloads the weights first.
"""

from __future__ import annotations

from typing import Any

import ray
import torch

from mmopd.actor_pool import ActorPool, Pending, actor_options, exit_call, exit_point
from mmopd.build import build_network_policy, build_student_and_tokenizer, build_task
from mmopd.config import Config
from mmopd.rollout import build_engine
from mmopd.sample import Rollout, Sample
from mmopd.wire import pack_weights, unpack_weights

POOL = "rollout"


class RolloutWorker:
    """One rollout replica (the body of a Ray actor)."""

    def __init__(self, config: Config, exit_at: int = 0):
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        build_network_policy(config)
        self.student, _ = build_student_and_tokenizer(config, build_task(config.data))
        self.engine = build_engine(config.rollout, self.student)
        self.exit_at, self.calls = exit_at, 0

    def load_weights(self, packed: list[Any], version: int) -> int:
        """Load the weights of policy `version` (`packed`: [ObjectRef of mmopd.wire.pack_weights]) unless held."""
        if version != self.engine.policy_version:
            weights = unpack_weights(ray.get(packed[0]))
            self.student.model.load_state_dict(weights)
            self.engine.policy_version = version
        return version

    def generate(
        self, inputs: dict[str, torch.Tensor], samples: list[Sample], seed: int, packed: list[Any], version: int
    ) -> list[Rollout]:
        """Rollouts of one micro-batch under policy `version`, sampled from `seed` (so a retry samples the same)."""
        self.calls += 1
        exit_point(self.calls, self.exit_at)
        self.load_weights(packed, version)
        torch.manual_seed(seed)
        inputs = {key: value.to(self.student.model.device) for key, value in inputs.items()}
        return self.engine.generate(inputs, samples)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().clone() for name, tensor in self.student.model.state_dict().items()}


class RolloutPool:
    """`ray.rollout_replicas` actors; micro-batch k runs on replica k mod M."""

    def __init__(self, config: Config):
        cfg = config.ray
        actor = ray.remote(RolloutWorker)
        options = actor_options(cfg.rollout_resources, cfg.placement, cfg.max_restarts)
        actors = [actor.options(**options).remote(config, exit_call(POOL, r)) for r in range(cfg.rollout_replicas)]
        self.pool = ActorPool("rollout", actors, cfg.max_retries)
        self.version, self.packed = 0, [ray.put(pack_weights({}))]
        self.loading: list[Any] = []

    def sync(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Put the learner's weights into the object store once; every replica starts loading them."""
        self.version, self.packed = version, [ray.put(pack_weights(weights))]
        # Queued behind any generate in flight (an actor runs its calls in order), so that one keeps its version.
        self.loading = [actor.load_weights.remote(self.packed, version) for actor in self.pool.actors]

    def generate(
        self, prompts: list[dict[str, torch.Tensor]], samples: list[list[Sample]], seeds: list[int]
    ) -> Pending:
        """Start sampling every micro-batch under the latest synced policy; `pool.gather` returns the rollouts."""
        replicas = len(self.pool.actors)
        jobs = []
        for index, (prompt, group, seed) in enumerate(zip(prompts, samples, seeds)):
            prompt = {key: value.cpu() for key, value in prompt.items()}  # the actor moves it to its own device
            jobs.append((index % replicas, "generate", (prompt, group, seed, self.packed, self.version)))
        return self.pool.submit(jobs)

    def replica_weights(self) -> list[dict[str, torch.Tensor]]:
        """Each replica's current weights, once its loads are done (for checks, not for training)."""
        return ray.get([actor.weights.remote() for actor in self.pool.actors])
