"""The wire format of the Ray runtime: packed teacher signals and weights come back as they left."""

from __future__ import annotations

import pickle

import pytest
import torch

from mmopd.sample import TeacherSignal
from mmopd.wire import WireTensor, pack_signal, pack_weights, unpack_signal, unpack_weights, wire_bytes


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float16", 2), ("float32", 4)])
def test_hidden_states_travel_in_the_wire_dtype_without_the_head(dtype, size):
    hidden = torch.randn(7, 16)  # (N, H)
    head = (torch.randn(40, 16), torch.zeros(40))  # (V, H), (V,)
    packed = pickle.loads(pickle.dumps(pack_signal(TeacherSignal("hidden", hidden=hidden, head_weight=head[0]), dtype)))
    assert packed.head_weight is None and packed.head_bias is None
    assert wire_bytes(packed) == 7 * 16 * size  # what teacher_bytes_per_token counts
    signal = unpack_signal(packed, head, torch.device("cpu"))
    assert signal.hidden.dtype == torch.float32 and signal.head_weight is head[0] and signal.head_bias is head[1]
    assert torch.equal(signal.hidden, hidden.to(getattr(torch, dtype)).float())


def test_sampled_logprobs_stay_fp32_and_need_no_head():
    logprobs = torch.randn(5)  # (N,)
    packed = pack_signal(TeacherSignal("sampled", logprobs=logprobs), "bfloat16")
    assert wire_bytes(packed) == 5 * 4
    signal = unpack_signal(packed, None, torch.device("cpu"))
    assert torch.equal(signal.logprobs, logprobs) and signal.head_weight is None


def test_weights_round_trip_exactly_in_their_own_dtypes():
    weights = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int64), "c": torch.randn(2).bfloat16()}
    back = unpack_weights(pickle.loads(pickle.dumps(pack_weights(weights))))
    assert back.keys() == weights.keys()
    assert all(back[k].dtype == weights[k].dtype and torch.equal(back[k], weights[k]) for k in weights)


def test_a_non_contiguous_tensor_is_packed_as_its_values():
    tensor = torch.randn(4, 6).T  # (6, 4), not contiguous
    assert torch.equal(WireTensor.of(tensor).tensor(), tensor)
