"""The local runtime is the embedded default: a whole run never imports ray (an optional extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import sys
from pathlib import Path
import mmopd.cli  # what `mmopd train` imports
from mmopd.config import load_config
from mmopd.trainer import train
overrides = ["train.steps=1", "eval.num_samples=2", "eval.max_new_tokens=1", "train.batch_size=2", "train.micro_batch_size=2"]
train(load_config("configs/debug.yaml", overrides), Path(sys.argv[1]))
loaded = sorted(name for name in sys.modules if name == "ray" or name.startswith("ray."))
print("ray modules:", loaded)
"""


def test_a_local_run_never_imports_ray(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ray modules: []" in result.stdout
    assert (tmp_path / "run" / "final").is_dir()  # the run did train
