"""Rollout engines: the student samples its own completions (OPD's condition C1).

Every engine returns, per sample, the sampled ids exactly (EOS only if it was generated), the
behaviour logprobs of those ids under the sampling distribution, the finish reason and each
token's byte span (contracts 1, 3). Media placeholder ids are suppressed (contract 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import LogitsProcessorList

from mmopd.align import byte_table
from mmopd.config import RolloutConfig
from mmopd.models import ModelBundle
from mmopd.sample import Rollout, Sample
from mmopd.sampling import SamplingProcessor


class RolloutEngine(Protocol):
    policy_version: int

    def generate(
        self, inputs: dict[str, torch.Tensor], samples: list[Sample], greedy: bool = False, max_new_tokens: int = 0
    ) -> list[Rollout]: ...


@dataclass
class HFEngine:
    """transformers `generate` on the learner's own model object, so weights never go stale."""

    bundle: ModelBundle
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    policy_version: int = 0

    @torch.no_grad()
    def generate(
        self, inputs: dict[str, torch.Tensor], samples: list[Sample], greedy: bool = False, max_new_tokens: int = 0
    ) -> list[Rollout]:
        model, tokenizer = self.bundle.model, self.bundle.tokenizer
        was_training = model.training
        model.eval()
        # generate decodes greedily; for sampling, SamplingProcessor draws each token and makes it the argmax.
        suppressed = torch.tensor(self.bundle.suppressed_ids(), dtype=torch.long, device=model.device)
        sampler = SamplingProcessor(suppressed, self.temperature, self.top_k, self.top_p, sample=not greedy)
        output = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            logits_processor=LogitsProcessorList([sampler]),
            eos_token_id=self.bundle.stop_ids(),
            pad_token_id=tokenizer.pad_token_id,
            return_dict_in_generate=True,
        )
        model.train(was_training)
        new_ids = output.sequences[:, inputs["input_ids"].shape[1] :]  # (B, C)
        if greedy:
            logprobs = torch.zeros(new_ids.shape)
        else:
            drawn = torch.stack(sampler.tokens, dim=1)  # (B, C)
            logprobs = torch.stack(sampler.logprobs, dim=1)  # (B, C)
        stops = set(self.bundle.stop_ids())
        rollouts = []
        for row, sample in enumerate(samples):
            rollout = self._rollout(sample, new_ids[row].tolist(), logprobs[row].tolist(), stops)
            if not greedy and drawn[row, : len(rollout.completion_ids)].tolist() != rollout.completion_ids:
                raise RuntimeError("a logits processor ran after the sampler and changed the sampled tokens")
            rollouts.append(rollout)
        return rollouts

    def _rollout(self, sample: Sample, ids: list[int], logprobs: list[float], stops: set[int]) -> Rollout:
        finish = "length"
        for position, token_id in enumerate(ids):
            if token_id in stops:
                # Keep the sampled EOS; what follows it is generate's padding, never sampled.
                ids, logprobs, finish = ids[: position + 1], logprobs[: position + 1], "stop"
                break
        completion_bytes, spans = byte_table(self.bundle.tokenizer).spans(ids)
        return Rollout(sample, ids, logprobs, spans, completion_bytes, finish, self.policy_version)


def build_engine(config: RolloutConfig, student: ModelBundle) -> RolloutEngine:
    if config.engine != "hf":
        raise ValueError(f"unknown rollout engine {config.engine!r} (available: hf)")
    return HFEngine(student, config.max_new_tokens, config.temperature, config.top_p, config.top_k)
