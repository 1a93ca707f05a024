"""The learner group: `learner.world_size` torch.distributed ranks, launched as Ray actors, behind `Learner`.

The driver hands it a step's `LearnerBatch`; micro-batches are split over ranks balanced by token count, and
every rank ends the step with the same weights, so one update equals `LocalLearner`'s on the same batch. The
teacher's output head is given once (one object in Ray's store); a hidden signal then travels without it.
Ray is imported only when a group is made: the local runtime never imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmopd.checkpoint import is_intact, load_state, load_weights, save_checkpoint
from mmopd.config import Config
from mmopd.cross_objective import alignment_metrics
from mmopd.learner import Learner, LearnerBatch, LocalLearner
from mmopd.learner_rank import LearnerRank, Share
from mmopd.models import ModelBundle


class LearnerGroup:
    """`config.learner.world_size` ranks holding the student (DDP copies or FSDP2 shards) and its AdamW.

    `student_weights` is the student's state dict (every rank starts from it); `teacher_head` is the teacher's
    output head (weight (V, H), bias (V,) or None) that hidden signals with `head_weight=None` are scored with,
    or None when every signal carries its own head (or none is needed)."""

    def __init__(
        self,
        config: Config,
        student_weights: dict[str, torch.Tensor],
        teacher_head: tuple[torch.Tensor, torch.Tensor | None] | None,
    ):
        import ray

        self.config = config
        cfg = config.learner
        gpus = 1 if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else 0
        actor = ray.remote(num_cpus=cfg.cpus_per_rank, num_gpus=gpus)(LearnerRank)
        self.ranks = [actor.remote(config, rank) for rank in range(cfg.world_size)]
        address = ray.get(self.ranks[0].address.remote())
        weights = ray.put({name: tensor.detach().cpu() for name, tensor in student_weights.items()})
        head = None if teacher_head is None else tuple(None if t is None else t.detach().cpu() for t in teacher_head)
        self._call("setup", address, weights, ray.put(head))

    def _call(self, method: str, *args) -> list[Any]:
        """Run `method` on every rank at once (they are collective) and wait for all the results."""
        return self._results([getattr(rank, method).remote(*args) for rank in self.ranks])

    def _results(self, pending: list) -> list[Any]:
        """Every rank's result. A rank that fails leaves the others waiting in a collective for good: the group is
        ended and the rank's error raised."""
        import ray

        refs = list(pending)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except Exception:
                self.close(wait=False)
                raise
        return ray.get(refs)

    def update(self, lr: float, batch: LearnerBatch) -> dict[str, Any]:
        """One optimizer step on the batch: its metrics (loss, kl, grad_norm, lr, ...), summed over ranks."""
        shares = split_batch(batch, len(self.ranks))
        calls = [rank.update.remote(lr, share, batch.supervised) for rank, share in zip(self.ranks, shares)]
        record = self._results(calls)[0]
        record.update(alignment_metrics(batch.signals, record))
        return record

    def weights(self) -> dict[str, torch.Tensor]:
        """The student's full state dict on CPU (FSDP2's shards gathered)."""
        return self._call("weights")[0]

    def state_dict(self) -> dict[str, Any]:
        """{"model": full state dict, "optimizer": full AdamW state keyed by parameter name}, on CPU."""
        return self._call("state_dict")[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        self._call("load_state_dict", ray.put(state))

    def save_checkpoint(self, directory: Path, step: int, bundle: ModelBundle, loop: dict, keep: int) -> Path:
        """`checkpoint.save_checkpoint` of the group: its weights (copied into the driver's `bundle`, whose Hugging
        Face directory the checkpoint is) and its full AdamW state, atomically, with the manifest's digests."""
        state = self.state_dict()
        bundle.model.load_state_dict(state["model"])
        learner = {"world_size": len(self.ranks), "strategy": self.config.learner.strategy}
        return save_checkpoint(
            directory, step, bundle, {"optimizer": state["optimizer"], "loop": loop, "learner": learner}, keep
        )

    def load_checkpoint(self, path: Path, bundle: ModelBundle) -> dict[str, Any]:
        """Restore the weights (into `bundle` too) and AdamW state of a checkpoint whose digests match; returns the
        checkpoint's saved state (loop, rng) for the driver. Any world size or strategy can load it."""
        if not is_intact(path):
            raise ValueError(f"checkpoint {path} does not match its manifest (corrupt or incomplete)")
        load_weights(path, bundle.model)
        saved = load_state(path)
        self.load_state_dict({"model": bundle.model.state_dict(), "optimizer": saved["optimizer"]})
        return saved

    def close(self, wait: bool = True) -> None:
        """Leave the process group (`wait`: once every rank is done) and end the rank actors."""
        import ray

        ranks, self.ranks = self.ranks, []
        if wait:
            ray.get([rank.close.remote() for rank in ranks])
        for rank in ranks:
            ray.kill(rank)


def build_learner(config: Config, bundle: ModelBundle, teacher_head) -> Learner:
    """A `LocalLearner` on `bundle` for learner.world_size 1, else a `LearnerGroup` starting from its weights."""
    if config.learner.world_size == 1:
        return LocalLearner(bundle, config)
    return LearnerGroup(config, bundle.model.state_dict(), teacher_head)


def micro_batch_tokens(prompt: dict[str, torch.Tensor], rollouts) -> int:
    """Prompt tokens (media placeholders included) plus sampled tokens: what a micro-batch costs to run."""
    return int(prompt["attention_mask"].sum()) + sum(len(r.completion_ids) for r in rollouts)


def assign_by_tokens(tokens: list[int], world_size: int) -> list[list[int]]:
    """Micro-batch indices per rank: heaviest first, each to the lightest rank with room (at most ⌈M / W⌉ each)."""
    room = max(1, -(-len(tokens) // world_size))
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for index in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        rank = min((r for r in range(world_size) if len(assigned[r]) < room), key=lambda r: (loads[r], r))
        assigned[rank].append(index)
        loads[rank] += tokens[index]
    return [sorted(indices) for indices in assigned]


def split_batch(batch: LearnerBatch, world_size: int) -> list[Share]:
    """Each rank's micro-batches; a rank with fewer than the most gets the cheapest micro-batch again at weight 0,
    so every rank runs as many forwards (FSDP2's all-gathers and the vocab-parallel loss are collective)."""
    parts = list(zip(batch.prompts, batch.rollouts, batch.signals, batch.teacher_names()))
    if not parts:
        return [[] for _ in range(world_size)]
    tokens = [micro_batch_tokens(prompt, rollouts) for prompt, rollouts, _, _ in parts]
    assigned = assign_by_tokens(tokens, world_size)
    most = max(len(indices) for indices in assigned)
    cheapest = min(range(len(parts)), key=lambda i: tokens[i])
    return [
        [(*parts[i], 1.0) for i in indices] + [(*parts[cheapest][:3], "", 0.0)] * (most - len(indices))
        for indices in assigned
    ]
