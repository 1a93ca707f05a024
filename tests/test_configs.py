"""Configs: every file in configs/ loads, unknown keys are errors that suggest a name, overrides apply."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmopd.config import Config, ConfigError, field_docs, load_config, save_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((ROOT / "configs").glob("**/*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def test_there_are_configs() -> None:
    assert CONFIG_FILES, f"no YAML files under {ROOT / 'configs'}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_loads(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_opens_with_a_comment_header(path: Path) -> None:
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and len(first_line) > 10, f"{path.name} must open with a '# what it does' line"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_round_trips_through_save(path: Path, tmp_path: Path) -> None:
    config = load_config(path)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_defaults_round_trip_through_save(tmp_path: Path) -> None:
    save_config(Config(), tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == Config()


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("train.stpes=3", "train.steps"),
        ("teacher.model.hiden_size=8", "teacher.model.hidden_size"),
        ("studnet.path=x", "student"),
    ],
)
def test_unknown_override_key_suggests_the_closest_name(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as error:
        load_config(None, [override])
    assert repr(suggestion) in str(error.value)


def test_unknown_yaml_key_suggests_the_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("loss:\n  divergance: jsd\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "'loss.divergence'" in str(error.value)


def test_overrides_apply_with_their_types() -> None:
    config = load_config(
        None,
        [
            "train.steps=3",
            "train.lr=5e-3",
            "loss.beta=1",
            "train.progress=false",
            "loss.divergence=jsd",
            "teacher.model.hidden_size=96",
            "data.task_args.num_eval=16",
        ],
    )
    assert config.train.steps == 3 and isinstance(config.train.steps, int)
    assert config.train.lr == 5e-3 and isinstance(config.train.lr, float)
    assert config.loss.beta == 1.0 and isinstance(config.loss.beta, float)
    assert config.train.progress is False
    assert config.loss.divergence == "jsd"
    assert config.teacher.model.hidden_size == 96
    assert config.data.task_args == {"num_eval": 16}


def test_overrides_win_over_the_file() -> None:
    base = load_config(ROOT / "configs" / "debug.yaml")
    config = load_config(ROOT / "configs" / "debug.yaml", ["train.steps=7", "student.hidden_size=48"])
    assert (config.train.steps, config.student.hidden_size) == (7, 48)
    assert (base.train.steps, base.student.hidden_size) != (7, 48)
    assert config.teacher == base.teacher  # untouched sections keep the file's values


@pytest.mark.parametrize(
    "override", ["train.progress=maybe", "train.steps=many", "train.lr=fast", "teacher.view=pixels", "train.steps"]
)
def test_bad_override_values_are_config_errors(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_every_field_has_a_docstring() -> None:
    rows = field_docs()
    assert len(rows) > 40
    undocumented = [name for name, _, _, doc in rows if not doc.strip()]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_field_docs_name_every_leaf_with_its_default() -> None:
    names = {name: default for name, _, default, _ in field_docs()}
    assert names["train.steps"] == Config().train.steps
    assert names["teacher.model.family"] == Config().teacher.model.family
    assert "teacher.model" not in names  # sections are expanded into their leaves


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.device = "cuda"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.steps = 3
