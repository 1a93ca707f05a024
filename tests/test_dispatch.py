"""Teacher dispatch: micro-batches are balanced over replicas by token count."""

from __future__ import annotations

import itertools

import pytest

from mmopd.dispatch import balance


def loads(costs: list[int], assignment: list[int], replicas: int) -> list[int]:
    return [sum(c for c, r in zip(costs, assignment) if r == replica) for replica in range(replicas)]


@pytest.mark.parametrize(
    "costs, replicas",
    [([900, 100, 100, 100, 100, 100], 2), ([5, 5, 4, 4, 3, 3, 3], 3), ([7, 1, 1, 1, 1, 1, 1, 1], 2), ([3], 4)],
)
def test_longest_first_is_within_four_thirds_of_the_best_split(costs, replicas):
    assignment = balance(costs, replicas)
    assert len(assignment) == len(costs) and all(0 <= r < replicas for r in assignment)
    best = min(
        max(loads(costs, list(split), replicas)) for split in itertools.product(range(replicas), repeat=len(costs))
    )
    assert max(loads(costs, assignment, replicas)) <= 4 / 3 * best


def test_a_long_micro_batch_gets_a_replica_of_its_own():
    # Round-robin would put 900 + 100 + 100 tokens on replica 0; by tokens, the short ones share the other.
    assert balance([900, 100, 100, 100, 100, 100], 2) == [0, 1, 1, 1, 1, 1]


def test_equal_costs_spread_evenly_and_deterministically():
    assignment = balance([10] * 6, 3)
    assert sorted(assignment) == [0, 0, 1, 1, 2, 2]
    assert assignment == balance([10] * 6, 3)
