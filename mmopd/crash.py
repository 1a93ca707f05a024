"""Deterministic crash points, so tests and the soak can kill a run at a named place.

`MMOPD_CRASH_AT=point:step` (e.g. `loss:5`) makes the process SIGKILL itself the first time it
reaches `crash_point(point)` during optimizer step `step`; unset, a crash point does nothing.
Points: `rollout` (after sampling, before the teacher), `loss` (gradients accumulated, before the
update), `checkpoint` (checkpoint files written, before the rename), `store` (an offline teacher store written,
before the rename; its step is 0).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "MMOPD_CRASH_AT"
POINTS = ("rollout", "loss", "checkpoint")  # of a training step; `store` is reached only by a collection

_current_step = 0


def enter_step(step: int) -> None:
    """Called by the loop at the start of each optimizer step: the step crash points compare against."""
    global _current_step
    _current_step = step


def crash_point(point: str) -> None:
    """SIGKILL this process if `MMOPD_CRASH_AT` names `point` at the current step."""
    target = os.environ.get(CRASH_ENV)
    if target and target == f"{point}:{_current_step}":
        os.kill(os.getpid(), signal.SIGKILL)
