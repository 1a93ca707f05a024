"""`mmopd bench transport`: bytes per supervised token of each teacher signal, measured on real payloads.

A random-init Qwen2 teacher of the given vocabulary and hidden size (one layer: the payload depends
only on V and H) scores a batch; each signal is produced for real and serialised with safetensors,
and the serialised length is divided by the supervised tokens. Signals: full fp32 logits (what a
logits-shipping teacher sends), final hidden states in fp32 and bf16 (mmopd's default; the (V, H)
head travels once per model, not per token), top-k ids + logprobs, and the sampled token's logprob.
"""

from __future__ import annotations

import torch
from safetensors.torch import save
from transformers import AutoModelForCausalLM, Qwen2Config

from mmopd.losses import sampled_logprobs


def _teacher(vocab: int, hidden: int) -> torch.nn.Module:
    heads = max(1, hidden // 128)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        tie_word_embeddings=True,  # halves the memory of a large-vocabulary teacher; the payload is the same
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def topk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, k: int, chunk_size: int = 64):
    """The k most likely ids (N, k) and their fp32 logprobs (N, k), one chunk of logits at a time; `weight` fp32."""
    ids, logprobs = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = hidden[start : start + chunk_size].float() @ weight.T  # (n, V)
        values, indices = torch.log_softmax(logits, dim=-1).topk(k, dim=-1)
        ids.append(indices.to(torch.int32))
        logprobs.append(values)
    return torch.cat(ids), torch.cat(logprobs)


@torch.no_grad()
def measure_transport(vocab: int, hidden: int, batch: int, tokens: int, top_k: int) -> dict:
    model = _teacher(vocab, hidden)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, tokens + 1), generator=generator)  # (B, 1 + C): prompt token + completion
    states = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]  # (B, C, H), bf16
    states = states.reshape(-1, hidden)  # (N, H)
    completion = ids[:, 1:].reshape(-1)  # (N,)
    weight = model.get_output_embeddings().weight.float()  # (V, H)
    top_ids, top_logprobs = topk_logprobs(states, weight, top_k)
    payloads = {
        "logits_fp32": {"logits": states.float() @ weight.T},  # (N, V)
        "hidden_fp32": {"hidden": states.float()},
        "hidden_bf16": {"hidden": states},
        f"top{top_k}_ids_int32_logprobs_fp32": {"ids": top_ids, "logprobs": top_logprobs},
        "sampled_logprob_fp32": {"logprobs": sampled_logprobs(states, weight, None, completion)},
    }
    supervised = completion.numel()
    signals = {}
    for name, tensors in payloads.items():
        tensors = {key: value.contiguous() for key, value in tensors.items()}
        serialised = len(save(tensors))
        raw = sum(t.numel() * t.element_size() for t in tensors.values())
        signals[name] = {"bytes_per_token": serialised / supervised, "tensor_bytes_per_token": raw / supervised}
    head = weight.numel() * 2  # bf16
    return {
        "key": f"transport-v{vocab}-h{hidden}",
        "vocab": vocab,
        "hidden": hidden,
        "supervised_tokens": supervised,
        "head_bytes_once_bf16": head,
        "signals": signals,
    }


def transport_markdown(result: dict, command: str) -> str:
    full = result["signals"]["logits_fp32"]["bytes_per_token"]
    lines = [
        f"### Teacher signal transport: vocabulary {result['vocab']:,}, hidden {result['hidden']}",
        "",
        f"`{command}` — safetensors bytes of each real payload ÷ {result['supervised_tokens']} supervised tokens. "
        f"The hidden-state signals also need the teacher's output head once per model "
        f"({result['head_bytes_once_bf16'] / 2**20:.0f} MiB in bf16), not per token.",
        "",
        "| signal | bytes / token | tensor bytes / token | vs full logits |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["signals"].items():
        ratio = "reference" if name == "logits_fp32" else f"{full / row['bytes_per_token']:,.0f}× smaller"
        lines.append(f"| {name} | {row['bytes_per_token']:,.1f} | {row['tensor_bytes_per_token']:,.1f} | {ratio} |")
    return "\n".join(lines)
