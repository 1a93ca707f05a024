"""Which processor serves which media kind: each registered processor its own kind, the one named after
the kind first, and `data.processors` choosing another by registered name or module:attr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from mmopd.build import build_processors
from mmopd.config import ConfigError, DataConfig, load_config
from mmopd.processors.audio import AudioProcessor
from mmopd.processors.image import ImageProcessor
from mmopd.processors.video import VideoProcessor
from mmopd.registry import Registry


@dataclass(frozen=True)
class ThermalProcessor:
    """Stands in for a plug-in that also produces images."""

    kind: ClassVar[str] = "image"
    palette: str = "iron"

    def load(self, ref, sample_id):
        return ref.data


@dataclass(frozen=True)
class SketchProcessor:
    kind: ClassVar[str] = "sketch"

    def load(self, ref, sample_id):
        return ref.data


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A fresh processor registry (the installed entry points still load into it)."""
    fresh = Registry("processors")
    monkeypatch.setattr("mmopd.build.PROCESSORS", fresh)
    return fresh


def test_built_in_processors_serve_their_kinds() -> None:
    processors = build_processors(DataConfig(processor_args={"video": {"fps": 1.0}}))
    assert {kind: type(p) for kind, p in processors.items()} == {
        "image": ImageProcessor,
        "video": VideoProcessor,
        "audio": AudioProcessor,
    }
    assert processors["video"].fps == 1.0


def test_a_processor_named_after_its_kind_wins_and_a_new_kind_is_served(registry: Registry) -> None:
    registry.register("thermal")(ThermalProcessor)
    registry.register("sketch")(SketchProcessor)
    processors = build_processors(DataConfig())
    assert type(processors["image"]) is ImageProcessor
    assert type(processors["sketch"]) is SketchProcessor


def test_data_processors_chooses_by_name_with_its_arguments(registry: Registry) -> None:
    registry.register("thermal")(ThermalProcessor)
    config = DataConfig(processors={"image": "thermal"}, processor_args={"thermal": {"palette": "grey"}})
    processors = build_processors(config)
    assert processors["image"] == ThermalProcessor(palette="grey")
    assert type(processors["video"]) is VideoProcessor


def test_data_processors_chooses_by_module_attr() -> None:
    config = load_config(overrides=["data.processors={video: 'test_build:SketchProcessor'}"])
    processors = build_processors(config.data)
    assert type(processors["video"]) is SketchProcessor and type(processors["image"]) is ImageProcessor


@pytest.mark.parametrize(
    "config, message",
    [
        (DataConfig(processors={"image": "imgae"}), "did you mean 'image'"),
        (DataConfig(processors={"image": "no_such_module:Thing"}), "no_such_module"),
        (DataConfig(processor_args={"thermal": {}}), "unknown processors"),
        (DataConfig(processor_args={"video": {"frames_per_second": 2}}), "unknown key 'frames_per_second'"),
    ],
)
def test_bad_processor_choices_are_config_errors(config: DataConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_processors(config)


def test_processor_names_must_be_strings() -> None:
    with pytest.raises(ConfigError, match="data.processors"):
        DataConfig(processors={"image": 3})
