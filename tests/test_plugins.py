"""A third-party plug-in (tests/plugins/mmopd_depth), installed for real with pip, is found through the
`mmopd.processors` and `mmopd.tasks` entry points alone, and trains two steps: `data.processors` feeds
its depth maps to an image student in place of the image processor."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mmopd.metrics import read_metrics
from mmopd.registry import PROCESSORS, TASKS

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "mmopd_depth"
TRAIN_THEN_CHECK = """
import sys
from mmopd.cli import main
config, run_dir = sys.argv[1:]
assert main(["train", config, "--run-dir", run_dir]) == 0
sys.exit(main(["data", "check", config, "--json", "--max-samples", "6"]))
"""


def pip_install(source: Path, target: Path) -> None:
    """A real installation (built by the environment's setuptools, with dist-info and entry points)
    into its own directory, so the test environment is untouched and nothing needs uninstalling."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--target", str(target), str(source)], check=True, capture_output=True, timeout=300)


def test_installed_plugin_trains_two_steps_on_depth_maps(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip_install(shutil.copytree(PLUGIN, tmp_path / "mmopd_depth"), site)
    entry_points = next(site.glob("mmopd_depth-*.dist-info")) / "entry_points.txt"
    assert "depth_map = mmopd_depth:DepthMapProcessor" in entry_points.read_text()
    assert "depth_map" not in PROCESSORS.names() and "near_far" not in TASKS.names()  # not installed here

    config = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    config["data"] = {
        "task": "near_far",
        "task_args": {"num_eval": 4},
        "processors": {"image": "depth_map"},
        "processor_args": {"depth_map": {"far": 10.0}},
        "on_error": "raise",  # a depth map reaching the image processor would stop the run
    }
    config["train"].update(steps=2, batch_size=4, micro_batch_size=4, eval_every=0, checkpoint_every=2)
    config["eval"] = {"num_samples": 4, "batch_size": 4, "max_new_tokens": 4}
    (tmp_path / "depth.yaml").write_text(yaml.safe_dump(config))

    python_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_THEN_CHECK, str(tmp_path / "depth.yaml"), str(tmp_path / "run")],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [record["step"] for record in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["skipped"] == 0 and math.isfinite(record["loss"]) and record["kl"] >= 0
    decoder, text = json.JSONDecoder(), result.stdout
    summary, end = decoder.raw_decode(text)
    check, _ = decoder.raw_decode(text[end:].lstrip())
    assert summary["steps"] == 2
    assert check == {"checked": 10, "bad": []}  # 6 train + 4 eval depth maps, decoded by the plug-in
