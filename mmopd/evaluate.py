"""Held-out evaluation: greedy completions checked by the task's verifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mmopd.models import ModelBundle
from mmopd.rollout import HFEngine
from mmopd.sample import MediaError, Sample
from mmopd.views import Prepared, SampleError, collate, prepare


def evaluate(
    bundle: ModelBundle,
    samples: Sequence[Sample],
    messages_for: Callable[[Sample], list[dict]],
    verify: Callable[[str, Sample], bool],
    processors: dict[str, Any],
    batch_size: int = 128,
    max_new_tokens: int = 8,
    group_by: str = "",
) -> dict[str, float]:
    """Accuracy (over samples that could be rendered), mean completion tokens, and the skip count; with
    `group_by` = "meta.KEY", also the accuracy of each value of the samples' meta[KEY] (`accuracy/VALUE`)."""
    engine = HFEngine(bundle, max_new_tokens=max_new_tokens)
    correct = tokens = scored = skipped = 0
    groups: dict[str, list[bool]] = {}
    for start in range(0, len(samples), batch_size):
        prepared: list[Prepared] = []
        for sample in samples[start : start + batch_size]:
            try:
                prepared.append(prepare(sample, messages_for(sample), bundle, processors))
            except (MediaError, SampleError):
                skipped += 1
        if not prepared:
            continue
        rollouts = engine.generate(collate(prepared, bundle), [p.sample for p in prepared], greedy=True)
        for rollout in rollouts:
            text = bundle.tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
            right = bool(verify(text, rollout.sample))
            correct += right
            if group_by:
                groups.setdefault(str(rollout.sample.meta.get(group_by.removeprefix("meta."))), []).append(right)
            tokens += len(rollout.completion_ids)
            scored += 1
    return {
        "accuracy": correct / max(scored, 1),
        "eval_completion_tokens": tokens / max(scored, 1),
        "eval_skipped": skipped,
        **{f"accuracy/{value}": sum(rights) / len(rights) for value, rights in sorted(groups.items())},
    }
