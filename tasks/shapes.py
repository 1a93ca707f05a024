"""Shapes: a synthetic visual question task ("What colour is the shape?") with an exact verifier.

Each image is one large, flat-coloured shape on white, generated deterministically from
(seed, split, index). The shape fills 60-90% of the image side because a 2-layer vision tower stalls
near chance on small shapes (DESIGN, measured). The privileged text names colour and shape, so a
text-only teacher knows the answer without seeing the image.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image, ImageDraw

from mmopd.registry import TASKS
from mmopd.sample import MediaRef, Sample
from mmopd.tasks import LazySamples, normalise_answer
from mmopd.tasks import check_choices as _check_choices

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 210, 0),
    "purple": (140, 30, 190),
    "cyan": (0, 200, 220),
    "black": (0, 0, 0),
}
SHAPE_NAMES = ("circle", "square", "triangle")
QUESTION_TEXT = {"colour": "What colour is the shape?", "shape": "What shape is it?"}
ANSWER_STYLES = {
    "word": {"colour": "{word}", "shape": "{word}"},
    "sentence": {
        "colour": "The colour of the shape in this image is {word}.",
        "shape": "The shape in this image is a {word}.",
    },
}


@TASKS.register("shapes")
@dataclass(frozen=True)
class ShapesTask:
    """Questions about the colour or shape of one large shape on white."""

    name: ClassVar[str] = "shapes"

    image_size: int = 56
    """Side of the square images, in pixels."""
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    """Colours a shape may have; each must be a key of `COLOUR_RGB`."""
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    """Shapes that may be drawn: any of circle, square, triangle."""
    questions: tuple[str, ...] = ("colour", "shape")
    """Question kinds asked: "colour" and/or "shape"."""
    num_train: int = 100_000
    """Number of training samples."""
    num_eval: int = 256
    """Number of evaluation samples."""
    seed: int = 0
    """Seed of the generator; each sample depends only on (seed, split, index)."""
    answer_style: str = "word"
    """word: the reference answer is the word ("red"), checked by exact match | sentence: it is a sentence
    ("The colour of the shape in this image is red."), the one word is the sample's `context_answer` (what
    a "be concise" context asks for), and the verifier accepts any answer that names the right word and no
    wrong colour or shape."""

    def __post_init__(self) -> None:
        # YAML gives lists; tuples keep the frozen task hashable.
        for field_name in ("colours", "shapes", "questions"):
            object.__setattr__(self, field_name, tuple(getattr(self, field_name)))
        _check_choices("colours", self.colours, COLOUR_RGB)
        _check_choices("shapes", self.shapes, SHAPE_NAMES)
        _check_choices("questions", self.questions, QUESTION_TEXT)
        if self.answer_style not in ANSWER_STYLES:
            raise ValueError(f"answer_style must be word or sentence, got {self.answer_style!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.num_train < 0 or self.num_eval < 0:
            raise ValueError(f"num_train and num_eval must be >= 0, got {self.num_train} and {self.num_eval}")

    def train_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_train, lambda index: self.sample("train", index))

    def eval_samples(self) -> Sequence[Sample]:
        return LazySamples(self.num_eval, lambda index: self.sample("eval", index))

    def sample(self, split: str, index: int) -> Sample:
        """Sample `index` of `split`, the same on every call, process and machine."""
        # A string seed is hashed with SHA-512 by `random.Random`: stable across processes (unlike
        # `hash()`), and the split in it gives train and eval disjoint random streams.
        rng = random.Random(f"{self.seed}/{split}/{index}")
        question = rng.choice(self.questions)
        colour = rng.choice(self.colours)
        shape = rng.choice(self.shapes)
        word = colour if question == "colour" else shape
        image = self._draw(rng, colour, shape)
        return Sample(
            id=f"shapes/{split}/{index}",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": QUESTION_TEXT[question]}],
                }
            ],
            images=[MediaRef(kind="image", data=image)],
            privileged=_describe(colour, shape),
            answer=self._answer(question, word),
            context_answer=word if self.answer_style == "sentence" else None,
            meta={"question": question, "colour": colour, "shape": shape},
        )

    def _answer(self, question: str, word: str) -> str:
        return ANSWER_STYLES[self.answer_style][question].format(word=word)

    def verify(self, completion: str, sample: Sample) -> bool:
        if self.answer_style == "word":
            return sample.answer is not None and normalise_answer(completion) == sample.answer
        return names_only_truth(completion, sample.meta["colour"], sample.meta["shape"], sample.meta["question"])

    def corpus(self) -> Iterator[str]:
        # Every question the task can ask, not only `questions`: a specialist fine-tuned on one kind of question
        # (a multi-teacher recipe) then shares the tokenizer trained on this corpus.
        yield from QUESTION_TEXT.values()
        for colour in self.colours:
            for shape in self.shapes:
                yield _describe(colour, shape)
        yield from self.colours
        yield from self.shapes
        if self.answer_style == "sentence":
            for question, words in (("colour", self.colours), ("shape", self.shapes)):
                if question in self.questions:
                    yield from (self._answer(question, word) for word in words)

    def _draw(self, rng: random.Random, colour: str, shape: str) -> Image.Image:
        size = self.image_size
        side = round(size * rng.uniform(0.6, 0.9))
        # Jitter within half the free margin so the shape always stays whole and near the centre.
        slack = size - side
        left = slack // 2 + rng.randint(-(slack // 4), slack // 4)
        top = slack // 2 + rng.randint(-(slack // 4), slack // 4)
        right, bottom = left + side - 1, top + side - 1
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)  # no anti-aliasing: every shape pixel is exactly the named RGB
        fill = COLOUR_RGB[colour]
        if shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=fill)
        return image


def names_only_truth(completion: str, colour: str, shape: str, question: str) -> bool:
    """The completion names the asked-for word (`colour` or `shape`) and no colour or shape the image does not
    have: "red", "The colour of the shape in this image is red." and "a red circle" pass for a red circle;
    "blue", "red or blue" and "The colour ... is purple." do not."""
    words = set(re.findall(r"[a-z]+", completion.lower()))
    wrong = (set(COLOUR_RGB) - {colour}) | (set(SHAPE_NAMES) - {shape})
    return (colour if question == "colour" else shape) in words and not words & wrong


def _describe(colour: str, shape: str) -> str:
    return f"The image shows a {colour} {shape}."
