"""Safe loading: weights through safetensors only, a model directory's own code never runs unless the
config allows it, and a run whose models are all local never opens a network connection."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import huggingface_hub.constants
import pytest

from mmopd.build import build_network_policy
from mmopd.config import ModelConfig, load_config
from mmopd.models import load_pretrained
from mmopd.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_pickled_weights_are_never_unpickled(tmp_path, text_teacher, code_in_a_pickle):
    payload, marker = code_in_a_pickle
    text_teacher.save(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    with pytest.raises(OSError, match="safetensors"):
        load_pretrained(ModelConfig(path=str(tmp_path)))
    assert not marker.exists()


def test_remote_code_runs_only_when_the_config_trusts_it(tmp_path):
    auto_map = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": auto_map}))
    (tmp_path / "custom.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_pretrained(ModelConfig(path=str(tmp_path)))
    assert not (tmp_path / "ran").exists()
    assert not ModelConfig().trust_remote_code  # off unless a config sets it


@pytest.fixture()
def online(monkeypatch):
    """Start each test online and restore the process's setting afterwards."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_a_local_run_goes_offline_and_opens_no_socket(tmp_path, online, monkeypatch):
    def refuse(self, address):
        raise AssertionError(f"network connection attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    config = load_config(ROOT / "configs" / "debug.yaml", ["train.steps=1", "eval.num_samples=4"])
    train(config, tmp_path / "run")
    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_a_config_naming_a_hub_model_stays_online(tmp_path, online):
    build_network_policy(load_config(None, ["teacher.model.path=some-org/some-model"]))
    assert not huggingface_hub.constants.HF_HUB_OFFLINE
    build_network_policy(load_config(None, [f"teacher.model.path={tmp_path}"]))  # a local directory
    assert huggingface_hub.constants.HF_HUB_OFFLINE


def test_identical_tokenizer_files_load_as_one_shared_tokenizer(tmp_path, text_teacher):
    for name in ("student", "teacher", "other"):
        text_teacher.save(tmp_path / name)
    template = tmp_path / "other" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    student, teacher, other = (
        load_pretrained(ModelConfig(path=str(tmp_path / n))) for n in ("student", "teacher", "other")
    )
    assert teacher.tokenizer is student.tokenizer  # byte-identical files: one vocabulary in memory
    assert other.tokenizer is not student.tokenizer  # any file that differs: its own tokenizer
    assert other.tokenizer.chat_template != student.tokenizer.chat_template
    assert student.tokenizer("a red circle")["input_ids"] == text_teacher.tokenizer("a red circle")["input_ids"]
