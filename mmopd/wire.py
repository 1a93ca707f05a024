"""Tensors on Ray's wire: raw bytes in a NumPy array, so the object store hands them over without a copy.

A pickled torch tensor is copied on every `ray.get`; a NumPy array travels as a pickle-5 out-of-band
buffer, which a reader on the same node maps straight from the shared-memory store (KDFlow ships teacher
hidden states the same way, but only between colocated processes). Teacher signals travel with their
hidden states cast to a narrow dtype and without the output head, which the learner holds once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from mmopd.models import DTYPES
from mmopd.sample import TeacherSignal


@dataclass
class WireTensor:
    """A CPU tensor as raw bytes (uint8 array: zero-copy through the object store) with its dtype and shape."""

    data: np.ndarray
    dtype: str
    shape: tuple[int, ...]

    @staticmethod
    def of(tensor: torch.Tensor) -> WireTensor:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        return WireTensor(flat.view(torch.uint8).numpy(), str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))

    def tensor(self) -> torch.Tensor:
        """A view of the received bytes (read-only memory of the object store: copy before writing to it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": nothing writes through this view
            raw = torch.from_numpy(self.data)
        return raw.view(getattr(torch, self.dtype)).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def pack_signal(signal: TeacherSignal, hidden_dtype: str) -> TeacherSignal:
    """The signal as it leaves a teacher actor: hidden states (N, H) in `hidden_dtype`, no output head."""
    hidden = None if signal.hidden is None else WireTensor.of(signal.hidden.to(DTYPES[hidden_dtype]))
    logprobs = None if signal.logprobs is None else WireTensor.of(signal.logprobs)
    return replace(signal, hidden=hidden, logprobs=logprobs, head_weight=None, head_bias=None)


def wire_bytes(signal: TeacherSignal) -> int:
    """Bytes of per-token signal as sent (the head travels once, not per token)."""
    tensor = signal.hidden if signal.kind == "hidden" else signal.logprobs
    return 0 if tensor is None else tensor.nbytes


def unpack_signal(
    signal: TeacherSignal, head: tuple[torch.Tensor, torch.Tensor | None] | None, device: torch.device
) -> TeacherSignal:
    """The signal as a learner consumes it: hidden states upcast to fp32 on `device`, the teacher's head attached."""
    hidden = None if signal.hidden is None else signal.hidden.tensor().to(device=device, dtype=torch.float32)
    logprobs = None if signal.logprobs is None else signal.logprobs.tensor().to(device=device, dtype=torch.float32)
    weight, bias = head if head is not None and signal.kind == "hidden" else (None, None)
    return replace(signal, hidden=hidden, logprobs=logprobs, head_weight=weight, head_bias=bias)


def pack_weights(weights: dict[str, torch.Tensor]) -> dict[str, WireTensor]:
    return {name: WireTensor.of(tensor) for name, tensor in weights.items()}


def unpack_weights(packed: dict[str, WireTensor]) -> dict[str, torch.Tensor]:
    return {name: wire.tensor() for name, wire in packed.items()}
