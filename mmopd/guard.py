"""Numerical guard: an optimizer step whose loss or gradient is not finite is skipped, not applied.

One NaN (a corrupt sample, a teacher overflow) would otherwise poison the weights and the AdamW
moments for good. A skipped step leaves weights, optimizer state and the schedule untouched and is
logged with its reason; too many in a row stop the run, since the cause is then not one bad batch.
"""

from __future__ import annotations

import math


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


def nonfinite_reason(loss: float, grad_norm: float) -> str | None:
    """Why a step must not be applied ("loss is nan", "gradient norm is inf"), or None when it may."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    return None


def count_skipped_update(state: dict, record: dict) -> None:
    """Update the loop state's `skipped_updates` (total, also put in the step's record) and
    `nonfinite_streak` (how many in a row, which stops the run at the limit)."""
    skipped = record.get("skipped_update", 0)
    state["skipped_updates"] += skipped
    state["nonfinite_streak"] = state["nonfinite_streak"] + 1 if skipped else 0
    record["skipped_updates"] = state["skipped_updates"]


def streak_message(streak: int, step: int, reason: str) -> str:
    """Why the run stops after `streak` consecutive skipped updates, ending at `step`."""
    return (
        f"stopped at step {step}: {streak} consecutive steps had a non-finite loss or gradient "
        f"(last: {reason}); none of them changed the weights. Look at the data of these steps "
        "(metrics.jsonl, skipped.txt), lower train.lr, or raise train.max_nonfinite_steps."
    )
