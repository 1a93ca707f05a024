"""Modality processors: turn a sample's media references into objects a Hugging Face processor takes.

One processor per modality (image, video, audio) implements `MediaProcessor`; each model's own HF
processor then expands placeholders and computes features (DESIGN contract 2). Every failure is a
`MediaError` naming the sample and the file, so one bad item never surfaces as a crash deep in a batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from mmopd.sample import MediaError, MediaRef


class MediaProcessor(Protocol):
    """Decodes, validates and resizes one kind of media."""

    @property
    def kind(self) -> str:
        """The media kind handled: "image", "video" or "audio"."""
        ...

    def load(self, ref: MediaRef, sample_id: str) -> Any:
        """Return the decoded, validated, resized item (an RGB PIL image for images), ready for a
        Hugging Face processor; raise `MediaError(sample_id, ref.describe(), reason)` on any problem."""
        ...


def resolve_path(ref: MediaRef, sample_id: str, allow_outside_root: bool) -> Path:
    """The absolute path of `ref`: relative paths resolve against `ref.root` (or the working
    directory when it has none). A path that leaves the root (`../`, an absolute path, a symlink
    pointing out) is refused unless `allow_outside_root`, so a dataset cannot read arbitrary files."""
    source = ref.describe()
    if ref.path is None:
        raise MediaError(sample_id, source, "has no path")
    root = Path(ref.root).resolve() if ref.root is not None else None
    # `root / path` keeps an absolute `path` as is, which the containment check below then refuses.
    resolved = (root / ref.path if root is not None else Path(ref.path)).resolve()
    if root is not None and not allow_outside_root and not resolved.is_relative_to(root):
        raise MediaError(
            sample_id,
            source,
            f"resolves to {resolved}, outside the media root {root} (allow_outside_root is off)",
        )
    if resolved.is_dir():
        raise MediaError(sample_id, source, f"{resolved} is a directory, not a file")
    if not resolved.is_file():
        raise MediaError(sample_id, source, f"file not found ({resolved})")
    return resolved
