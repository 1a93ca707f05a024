"""`mmopd bench transport` measures real payloads: per-token tensor bytes are exactly what each signal holds."""

from __future__ import annotations

from mmopd.transport import measure_transport, transport_markdown


def test_payload_bytes_per_token_follow_vocab_and_hidden():
    vocab, hidden, k = 1000, 64, 5
    result = measure_transport(vocab, hidden, batch=2, tokens=8, top_k=k)
    assert result["supervised_tokens"] == 16
    raw = {name: row["tensor_bytes_per_token"] for name, row in result["signals"].items()}
    assert raw == {
        "logits_fp32": 4 * vocab,
        "hidden_fp32": 4 * hidden,
        "hidden_bf16": 2 * hidden,
        f"top{k}_ids_int32_logprobs_fp32": 8 * k,
        "sampled_logprob_fp32": 4,
    }
    for row in result["signals"].values():
        # Serialised payloads add only a small header to the tensors.
        assert row["tensor_bytes_per_token"] <= row["bytes_per_token"] <= row["tensor_bytes_per_token"] + 20
    assert "hidden_bf16" in transport_markdown(result, "mmopd bench transport")
