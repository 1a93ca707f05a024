"""A pool of Ray actors that survives actor deaths: lost work is resubmitted, never lost or run twice.

Ray restarts a dead actor (`max_restarts`); the pool resubmits the micro-batch that died with it, once the actor
is back (or to the next replica, when it is dead for good), at most `ray.max_retries` times, then stops the run with an error naming the actor and its last error.
A result is taken once per job, so a retried micro-batch is counted once. Work is deterministic given its
arguments (rollouts carry their seed and policy version), so a retry returns what the first try would have.
`MMOPD_ACTOR_EXIT_AT=pool:replica:call` makes that actor exit at that call of its first life (fault tests).
Ray is imported where it is used: the CLI imports `ActorFailure` from here, and the local runtime never loads ray.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

EXIT_ENV = "MMOPD_ACTOR_EXIT_AT"


class ActorFailure(RuntimeError):
    """An actor kept dying on one micro-batch: the run cannot go on."""


def exit_call(pool: str, replica: int) -> int:
    """The call at which `MMOPD_ACTOR_EXIT_AT` makes this actor exit (0: never); read by the driver."""
    target = os.environ.get(EXIT_ENV, "")
    name, _, rest = target.partition(":")
    index, _, call = rest.partition(":")
    return int(call) if name == pool and index == str(replica) and call.isdigit() else 0


def exit_point(calls: int, exit_at: int) -> None:
    """Inside an actor: exit the process at call `exit_at` of its first life (a restarted actor goes on)."""
    import ray

    if exit_at and calls == exit_at and not ray.get_runtime_context().was_current_actor_reconstructed:
        os._exit(1)


def actor_options(resources: dict, placement: str, max_restarts: int) -> dict[str, Any]:
    """Ray options of one actor: its resources, placement, and restarts (the pool retries, not Ray)."""
    strategy = "SPREAD" if placement == "spread" else "DEFAULT"
    return {**resources, "max_restarts": max_restarts, "max_task_retries": 0, "scheduling_strategy": strategy}


@dataclass
class Pending:
    """Submitted jobs: each job's replica, method and arguments, the replica it runs on, and its failed tries."""

    jobs: list[tuple[int, str, tuple]]
    refs: dict[Any, int] = field(default_factory=dict)
    replicas: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)


@dataclass
class ActorPool:
    name: str
    actors: list[Any]
    max_retries: int
    retries: int = 0
    """Jobs resubmitted because their actor died, over the pool's life."""
    restart_timeout: float = 300.0
    """Seconds to wait for Ray to restart a dead actor before its work moves to another replica."""

    def submit(self, jobs: list[tuple[int, str, tuple]]) -> Pending:
        """Start every job (replica, method, args) on its actor; gather() waits for them."""
        pending = Pending(jobs, replicas=[replica for replica, _, _ in jobs], attempts=[0] * len(jobs))
        for index in range(len(jobs)):
            self._start(pending, index)
        return pending

    def _start(self, pending: Pending, index: int) -> None:
        _, method, args = pending.jobs[index]
        pending.refs[getattr(self.actors[pending.replicas[index]], method).remote(*args)] = index

    def gather(self, pending: Pending) -> list[Any]:
        """Every job's result, in job order; a job whose actor died runs again (at most `max_retries` times)."""
        import ray
        from ray.exceptions import RayActorError

        results: list[Any] = [None] * len(pending.jobs)
        while pending.refs:
            ready, _ = ray.wait(list(pending.refs), num_returns=1)
            index = pending.refs.pop(ready[0])
            try:
                results[index] = ray.get(ready[0])
            except RayActorError as error:  # died, or lost with its actor ("unavailable"): the job did not finish
                pending.attempts[index] += 1
                self.retries += 1
                if pending.attempts[index] > self.max_retries:
                    self._raise(pending, index, error)
                if not self._revived(pending.replicas[index]):  # dead for good: the next replica takes the job
                    pending.replicas[index] = (pending.replicas[index] + 1) % len(self.actors)
                self._start(pending, index)
        return results

    def _revived(self, replica: int) -> bool:
        """Wait until Ray has restarted actor `replica`; False when it is dead for good (or too slow to return)."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        deadline = time.monotonic() + self.restart_timeout
        while time.monotonic() < deadline:
            try:
                return ray.get(self.actors[replica].__ray_ready__.remote())
            except ActorUnavailableError:  # restarting
                time.sleep(0.2)
            except RayActorError:
                return False
        return False

    def run(self, jobs: list[tuple[int, str, tuple]]) -> list[Any]:
        return self.gather(self.submit(jobs))

    def _raise(self, pending: Pending, index: int, error: Exception) -> None:
        method = pending.jobs[index][1]
        raise ActorFailure(
            f"{self.name} actor {pending.replicas[index]}: {method} failed {pending.attempts[index]} times "
            f"(ray.max_retries={self.max_retries}); its actor died each time. Last error: {error}"
        ) from error
