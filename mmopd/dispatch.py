"""Which replica of a pool runs each micro-batch: balanced by token count, not by micro-batch count.

Teacher cost grows with the tokens scored (prompt + completion), which vary a lot between micro-batches of
media prompts; longest-processing-time-first (Graham, 1969) keeps the replicas' loads within 4/3 of the best.
"""

from __future__ import annotations


def balance(costs: list[int], replicas: int) -> list[int]:
    """The replica of each job: the costliest job first, each onto the least-loaded replica (ties: lowest index)."""
    loads = [0] * replicas
    assignment = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda job: (-costs[job], job)):
        replica = min(range(replicas), key=lambda r: (loads[r], r))
        assignment[job] = replica
        loads[replica] += costs[job]
    return assignment
