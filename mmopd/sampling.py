"""Exact categorical sampling over a large vocabulary, inside transformers' `generate`.

`torch.multinomial` over a (B, 151,646) row costs ~60-200 ms on a 2-core CPU, more than the whole
tiny-model forward. Here one softmax pass is summed into blocks of 1,024 tokens, a block is drawn
from the block masses, then a token from within the block: the same distribution, two tiny draws.
`SamplingProcessor` runs last in generate's logits processors with greedy decoding, so the sampler's
choice is generate's choice, and it records the behaviour logprob of every drawn token on the way
(no (B, C, V) stack of scores, as `output_scores` would keep).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

BLOCK = 1024


def sample_categorical(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `scores` (B, V) drawn from softmax(scores), and its logprob (B,).

    -inf scores are never drawn. Exact up to fp32 rounding of the probabilities.
    """
    batch, vocab = scores.shape
    full = vocab // BLOCK
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)  # (B, V)
    masses = probs[:, : full * BLOCK].view(batch, full, BLOCK).sum(-1)  # (B, nb); the tail is one more block
    masses = torch.cat([masses, probs[:, full * BLOCK :].sum(-1, keepdim=True)], dim=1)
    block = torch.multinomial(masses, 1)  # (B, 1)
    columns = block * BLOCK + torch.arange(BLOCK, device=scores.device)  # (B, BLOCK)
    inside = probs.gather(1, columns.clamp_max(vocab - 1)).masked_fill_(columns >= vocab, 0.0)  # (B, BLOCK)
    offset = torch.multinomial(inside, 1)  # (B, 1)
    token = (block * BLOCK + offset).squeeze(1)  # (B,)
    return token, inside.gather(1, offset).squeeze(1).log()


class SamplingProcessor(LogitsProcessor):
    """The last logits processor of a greedy `generate`: sets suppressed ids to -inf, applies temperature,
    top-k and top-p as transformers' sampler would, draws the token, and returns scores whose argmax
    is that token. `tokens` and `logprobs` hold one (B,) tensor per generated position."""

    def __init__(self, suppressed: torch.Tensor, temperature: float, top_k: int, top_p: float, sample: bool):
        self.suppressed = suppressed  # (S,) ids the model must never sample
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.sample = sample
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # generate hands over its own fp32 copy; filling S columns is cheaper than adding a (V,) bias.
        scores = scores.float().index_fill_(1, self.suppressed, float("-inf"))  # (B, V_head)
        if not self.sample:
            return scores
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        token, logprob = sample_categorical(scores)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        # +inf at the drawn token makes it generate's argmax without another pass over the vocabulary.
        return scores.index_put_((torch.arange(len(token), device=token.device), token), torch.tensor(float("inf")))


def rollout_seed_base() -> int:
    """Drawn from the step's generator (the loop seeds it from (seed, step)): the base of the step's rollout seeds."""
    return int(torch.randint(0, 2**31, ()))


def micro_batch_seed(base: int, index: int) -> int:
    """Each micro-batch samples from its own seed, so where it runs (in order here, on any rollout actor, or
    again after a failure) does not change what it samples."""
    return base * 4096 + index
