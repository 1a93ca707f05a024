"""One rank of the learner group: a torch.distributed process holding the student (DDP copy or FSDP2 shard).

Every rank builds the student from the config, loads the driver's weights, and wraps it with
`DistributedDataParallel` or `fully_shard` (FSDP2, per decoder layer and root). A step's micro-batches are
split over ranks; each rank's loss is normalised by the step's global supervised-token count and gradients
are summed (not averaged) over ranks, so one update equals `LocalLearner`'s on the whole batch (contract 5).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from mmopd.build import build_network_policy, build_student_and_tokenizer, build_task
from mmopd.config import Config
from mmopd.learner import add_stats, build_optimizer, optimizer_step, student_loss
from mmopd.models import ModelBundle, output_head, resolve_device
from mmopd.sample import Rollout, TeacherSignal
from mmopd.vocab_parallel import vocab_parallel_divergence, vocab_parallel_sampled_logprobs, vocab_rows

# (the student's collated prompt, its rollouts, the teacher's signal, 1 or 0: 0 pads a rank that has fewer
# micro-batches than others, so that every rank runs the same collectives)
Share = list[tuple[dict[str, torch.Tensor], list[Rollout], TeacherSignal, str, float]]  # (..., teacher, weight)
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class LearnerRank:
    """A Ray actor (see `LearnerGroup`); every method except `address` is collective over the group."""

    def __init__(self, config: Config, rank: int):
        self.config, self.rank = config, rank
        self.world_size = config.learner.world_size
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":  # Ray makes the rank's one GPU the only visible one
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.set_num_threads(config.train.threads or config.learner.cpus_per_rank)

    def address(self) -> str:
        """Rank 0: open the group's rendezvous store on a port the OS picks (held from now on, so no other process
        can take it before the ranks meet); its host:port."""
        import ray

        host = ray.util.get_node_ip_address()
        self.store = dist.TCPStore(host, 0, self.world_size, is_master=True, wait_for_workers=False)
        return f"{host}:{self.store.port}"

    def setup(self, address: str, student_weights: dict[str, torch.Tensor], teacher_head) -> None:
        """Join the process group, build the student and load `student_weights`, wrap it, build AdamW."""
        backend = self.config.learner.backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.rank != 0:
            host, port = address.rsplit(":", 1)
            self.store = dist.TCPStore(host, int(port), self.world_size, is_master=False)
        dist.init_process_group(backend, store=self.store, rank=self.rank, world_size=self.world_size)
        build_network_policy(self.config)
        self.bundle, _ = build_student_and_tokenizer(self.config, build_task(self.config.data))
        self.bundle.model.load_state_dict(student_weights)
        self.rows, self.teacher_head = self._keep_teacher_head(teacher_head)
        self.loss = StudentLoss(self.bundle, self.config, self.rows)
        self.wrapped = self._wrap(self.loss)
        self.optimizer = build_optimizer(self.bundle.model, self.config.train.lr, self.config.train)

    def _keep_teacher_head(self, head) -> tuple[slice | None, tuple | None]:
        """This rank's copy of the teacher head: whole, or its vocabulary rows with teacher.head_sharding=vocab."""
        if head is None:
            return None, None
        weight, bias = head
        if self.config.teacher.head_sharding == "none":
            return None, (weight.to(self.device), None if bias is None else bias.to(self.device))
        vocab = output_head(self.bundle)[0].shape[0]
        if weight.shape[0] != vocab:
            raise ValueError(f"teacher.head_sharding=vocab: teacher head has {weight.shape[0]} rows, student {vocab}")
        rows = vocab_rows(vocab, self.rank, self.world_size)
        kept = (weight[rows].clone().to(self.device), None if bias is None else bias[rows].clone().to(self.device))
        return rows, kept

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.config.learner.strategy == "ddp":
            # Unused parameters are found each step: a micro-batch without media leaves the vision tower unused.
            wrapped = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
            wrapped.register_comm_hook(None, _sum_hook)  # DDP averages; contract 5 needs the sum
            return wrapped
        # Decoder layers run on every micro-batch; a media encoder may not (a text-only micro-batch), so it stays
        # in the root's group, gathered by every rank's forward: per-encoder-block groups would not match up.
        for layer in self.bundle.model.get_decoder().layers:
            fully_shard(layer)
        fully_shard(module)
        for part in module.modules():
            if isinstance(part, FSDPModule):
                # Sum over ranks; forced SUM because gloo has no PREMUL_SUM.
                part.set_gradient_divide_factor(1.0)
                part.set_force_sum_reduction_for_comms(True)
                part.set_reduce_scatter_unused_params(True)  # zeros for parameters a rank's micro-batches left unused
        return module

    def _sync(self, last: bool):
        """Gradients reduce over ranks at the last micro-batch's backward only."""
        if isinstance(self.wrapped, FSDPModule):
            self.wrapped.set_requires_gradient_sync(last)
            return nullcontext()
        return nullcontext() if last else self.wrapped.no_sync()

    def update(self, lr: float, share: Share, supervised: int) -> dict[str, Any]:
        """Accumulate this rank's share, reduce gradients and metrics over ranks, clip, step (same on every rank)."""

        def accumulate() -> dict[str, float]:
            totals: dict[str, float] = {"loss": 0.0, "kl": 0.0}
            for index, (prompt, rollouts, signal, teacher, scale) in enumerate(share):
                prompt = {key: _to(value, self.device) for key, value in prompt.items()}
                signal = self._with_teacher_head(signal)
                with self._sync(index == len(share) - 1):
                    loss, stats = self.wrapped(prompt, rollouts, signal, supervised, scale)
                    loss.backward()
                add_stats(totals, {"loss": loss, **stats}, teacher)
            return reduce_metrics(totals)

        # optimizer_step's clip reads the global norm (DDP: equal gradients; FSDP2: a replicated DTensor norm).
        return optimizer_step(self.bundle.model, self.optimizer, accumulate, lr, self.config.train)

    def _with_teacher_head(self, signal: TeacherSignal) -> TeacherSignal:
        """The signal on this rank's device, with this rank's copy of the teacher head where it carries none."""
        moved = {name: _to(getattr(signal, name), self.device) for name in ("hidden", "logprobs")}
        if signal.kind == "hidden" and self.rows is not None and signal.cross is not None:
            raise ValueError("teacher.head_sharding=vocab needs the student's tokenizer; this teacher's differs")
        if signal.kind != "hidden":
            return dataclasses.replace(signal, **moved)
        if signal.head_weight is not None:  # a head shipped with the signal (e.g. OPSD's live weights) wins
            weight, bias = signal.head_weight, signal.head_bias
            if self.rows is not None:
                weight, bias = weight[self.rows], None if bias is None else bias[self.rows]
            moved["head_weight"], moved["head_bias"] = _to(weight, self.device), _to(bias, self.device)
        elif self.teacher_head is None:
            raise ValueError("a hidden signal without head_weight reached a learner group built without teacher_head")
        else:
            moved["head_weight"], moved["head_bias"] = self.teacher_head
        return dataclasses.replace(signal, **moved)

    def weights(self) -> dict[str, torch.Tensor]:
        """The full student state dict on CPU (rank 0; other ranks return an empty dict)."""
        model = get_model_state_dict(self.bundle.model, options=FULL)
        return model if self.rank == 0 else {}

    def state_dict(self) -> dict[str, Any]:
        """Full (gathered) model and AdamW state, keyed by parameter name, on CPU at rank 0 (empty elsewhere)."""
        model, optimizer = get_state_dict(self.bundle.model, self.optimizer, options=FULL)
        return {"model": model, "optimizer": optimizer} if self.rank == 0 else {"model": {}, "optimizer": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a `state_dict()` (model and AdamW state), re-sharding it for FSDP2."""
        options = StateDictOptions(full_state_dict=True)
        set_state_dict(
            self.bundle.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=options,
        )

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class StudentLoss(torch.nn.Module):
    """The student's loss on one micro-batch as a module, so that DDP / FSDP2 see the whole forward (the output
    head is used outside the model's own forward)."""

    def __init__(self, bundle: ModelBundle, config: Config, rows: slice | None):
        super().__init__()
        self.model = bundle.model
        self.bundle, self.config, self.rows = bundle, config, rows

    def forward(self, prompt, rollouts, signal, supervised: int, scale: float):
        # A padding micro-batch (scale 0) weighs its tokens 1 / inf = 0: it runs every collective, adds nothing.
        supervised = supervised if scale else math.inf
        if self.rows is None:
            return student_loss(self.bundle, prompt, rollouts, signal, supervised, self.config)
        if self.config.loss.kind == "policy_gradient":
            signal = self._sampled(signal, rollouts)
        divergence = partial(vocab_parallel_divergence, rows=self.rows)
        return student_loss(self.bundle, prompt, rollouts, signal, supervised, self.config, divergence)

    def _sampled(self, signal: TeacherSignal, rollouts: list[Rollout]) -> TeacherSignal:
        """The teacher's sampled-token logprobs, made vocabulary-parallel: all the policy gradient needs of its head."""
        ids = [t for r in rollouts for t in r.completion_ids]
        ids = torch.tensor(ids, dtype=torch.long, device=signal.hidden.device)  # (N,)
        cfg = self.config
        logprobs = vocab_parallel_sampled_logprobs(
            signal.hidden,
            signal.head_weight,
            signal.head_bias,
            ids,
            self.rows,
            cfg.loss.chunk_size,
            cfg.rollout.temperature,
        )
        return TeacherSignal("sampled", logprobs=logprobs)


def reduce_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Sum each metric over ranks (every rank gets the same dict, so every rank takes the same guard decision)."""
    gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, totals)
    keys = sorted({key for part in gathered for key in part})
    return {key: sum(part.get(key, 0.0) for part in gathered) for key in keys}


def _sum_hook(process_group, bucket):
    """DDP communication hook: all-reduce SUM of the bucket (DDP's default divides by the world size)."""
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, torch.Tensor) else value
