"""Run logging: `metrics.jsonl` (one object per step), TensorBoard, W&B when asked, and a PNG plot.

On resume the JSONL is cut back to the checkpoint's step (and a line a crash cut short is dropped),
so every step appears exactly once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True, wandb: bool = False):
        self.path = run_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.wandb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                print("wandb is not installed; logging to metrics.jsonl and TensorBoard only")
            else:
                self.wandb = wandb_module
                self.wandb.init(project="mmopd", dir=str(run_dir), name=run_dir.name, resume="allow")

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step_of(line: str) -> float:
    """The step of a JSONL record; a line a crash cut short (or a blank one) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def plot_metrics(path: Path, out: Path, keys: tuple[str, ...] = ("loss", "kl", "accuracy")) -> None:
    """A PNG with one panel per metric over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(path)
    keys = tuple(k for k in keys if any(k in r for r in records))
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    for axis, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o" if key == "accuracy" else None)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
