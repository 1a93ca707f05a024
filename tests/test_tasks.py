"""Tasks: the shapes generator is deterministic and truthful; JSONL files are validated line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from mmopd.processors.image import ImageProcessor
from mmopd.registry import TASKS
from mmopd.tasks import LazySamples, normalise_answer
from mmopd.tasks.jsonl import JsonlTask
from mmopd.tasks.shapes import COLOUR_RGB, QUESTION_TEXT, SHAPE_NAMES, ShapesTask

WHITE = (255, 255, 255)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Red", "red"),
        ("  red.  ", "red"),
        ("Red!?", "red"),
        ("a   Big\n Circle.", "a big circle"),
        ("red .", "red"),
    ],
)
def test_normalise_answer(text: str, expected: str) -> None:
    assert normalise_answer(text) == expected


def test_lazy_samples_indexing() -> None:
    made: list[int] = []

    def make(index: int) -> int:
        made.append(index)
        return index

    samples = LazySamples(5, make)  # type: ignore[arg-type]  # ints stand in for samples
    assert len(samples) == 5 and made == []
    assert samples[-1] == 4 and samples[1:4] == [1, 2, 3] and list(samples) == [0, 1, 2, 3, 4]
    with pytest.raises(IndexError):
        samples[5]
    with pytest.raises(IndexError):
        samples[-6]


def test_tasks_are_registered() -> None:
    assert TASKS.get("shapes") is ShapesTask
    assert TASKS.get("jsonl") is JsonlTask


# ---- shapes ----


def test_shapes_are_deterministic() -> None:
    first, second = ShapesTask(num_eval=20).eval_samples(), ShapesTask(num_eval=20).eval_samples()
    for index in range(20):
        a, b = first[index], second[index]
        assert a.images[0].data.tobytes() == b.images[0].data.tobytes()
        assert (a.id, a.messages, a.privileged, a.answer, a.meta) == (
            b.id,
            b.messages,
            b.privileged,
            b.answer,
            b.meta,
        )
    other_seed = ShapesTask(seed=1).eval_samples()
    assert [s.images[0].data.tobytes() for s in other_seed[:20]] != [s.images[0].data.tobytes() for s in first]


def test_shapes_train_and_eval_differ() -> None:
    task = ShapesTask()
    train, evaluation = task.train_samples()[:20], task.eval_samples()[:20]
    assert {s.id for s in train}.isdisjoint(s.id for s in evaluation)
    assert [s.images[0].data.tobytes() for s in train] != [s.images[0].data.tobytes() for s in evaluation]
    assert len(task.train_samples()) == 100_000 and len(task.eval_samples()) == 256


def test_shapes_sample_structure() -> None:
    task = ShapesTask()
    sample = task.eval_samples()[3]
    assert sample.id == "shapes/eval/3"
    parts = sample.messages[0]["content"]
    assert [part["type"] for part in parts] == ["image", "text"] and len(sample.images) == 1
    assert parts[1]["text"] == QUESTION_TEXT[sample.meta["question"]]
    assert sample.answer == sample.meta[sample.meta["question"]]
    assert sample.privileged == f"The image shows a {sample.meta['colour']} {sample.meta['shape']}."
    # Already at the processor's target size: the student sees exactly the generated pixels.
    loaded = ImageProcessor().load(sample.images[0], sample.id)
    assert loaded.tobytes() == sample.images[0].data.tobytes()


def test_shapes_cover_every_question_colour_and_shape() -> None:
    task = ShapesTask()
    samples = task.eval_samples()[:200]
    assert {s.meta["question"] for s in samples} == set(task.questions)
    assert {s.meta["colour"] for s in samples} == set(task.colours)
    assert {s.meta["shape"] for s in samples} == set(task.shapes)


def test_shapes_image_shows_the_named_colour_at_the_stated_size() -> None:
    task = ShapesTask()
    for sample in task.eval_samples()[:200]:
        image: Image.Image = sample.images[0].data
        assert image.size == (task.image_size, task.image_size) and image.mode == "RGB"
        counts = {colour: count for count, colour in image.getcolors() if colour != WHITE}
        assert max(counts, key=counts.__getitem__) == COLOUR_RGB[sample.meta["colour"]]
        left, top, right, bottom = ImageOps.invert(image).getbbox()  # box of the non-white pixels
        for extent in (right - left, bottom - top):
            assert 0.6 * task.image_size - 1 <= extent <= 0.9 * task.image_size + 1


def test_shapes_verify() -> None:
    task = ShapesTask()
    for sample in task.eval_samples()[:50]:
        assert task.verify(sample.answer, sample)
        assert task.verify(f"  {sample.answer.upper()}. ", sample)
        wrong = next(word for word in (*task.colours, *task.shapes) if word != sample.answer)
        assert not task.verify(wrong, sample)
        assert not task.verify(f"it is {sample.answer}", sample)


def test_shapes_corpus_covers_every_sample_text() -> None:
    task = ShapesTask()
    corpus = set(task.corpus())
    for sample in task.eval_samples()[:100]:
        assert {sample.messages[0]["content"][1]["text"], sample.privileged, sample.answer} <= corpus


def test_shapes_refuses_unknown_choices() -> None:
    with pytest.raises(ValueError, match="mauve"):
        ShapesTask(colours=("red", "mauve"))
    with pytest.raises(ValueError, match="hexagon"):
        ShapesTask(shapes=("hexagon",))
    with pytest.raises(ValueError, match="questions"):
        ShapesTask(questions=())


# ---- jsonl ----

GOOD_LINE = {
    "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
    "images": ["pictures/red.png"],
    "privileged": "A red square.",
    "answer": "Red",
}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_good_file_loads_with_media_relative_to_the_file(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    (data / "pictures").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 0, 0)).save(data / "pictures" / "red.png")
    text_only = {
        "id": "chat-1",
        "messages": [{"role": "user", "content": "Say hi."}],
        "meta": {"source": "x"},
    }
    train = write_jsonl(data / "train.jsonl", [json.dumps(GOOD_LINE), "", json.dumps(text_only)])
    monkeypatch.chdir(tmp_path)  # media must resolve against the file's directory, not the working one
    task = JsonlTask(train_path="data/train.jsonl")

    first, second = task.train_samples()
    assert task.eval_samples() == ()
    assert first.id == "train:1" and second.id == "chat-1" and second.meta == {"source": "x"}
    assert first.images[0].root == str(data.resolve())
    loaded = ImageProcessor().load(first.images[0], first.id)
    assert loaded.getpixel((0, 0)) == (200, 0, 0)
    assert task.verify(" red. ", first) and not task.verify("blue", first) and not task.verify("hi", second)
    assert set(task.corpus()) == {"What colour?", "A red square.", "Red", "Say hi."}
    assert JsonlTask(train_path=str(train), eval_path=str(train)).eval_samples()[0].id == "train:1"


def with_line(**changes) -> str:
    record = {**GOOD_LINE, **changes}
    return json.dumps({key: value for key, value in record.items() if value is not None})


BAD_LINES = {
    "invalid json": ('{"messages": [', "invalid JSON"),
    "not an object": ("[1, 2, 3]", "JSON object"),
    "missing messages": (json.dumps({"answer": "red"}), "missing 'messages'"),
    "empty messages": (with_line(messages=[], images=[]), "non-empty list"),
    "messages not a list": (with_line(messages="hello", images=[]), "non-empty list"),
    "message without role": (with_line(messages=[{"content": "hi"}], images=[]), "role"),
    "bad content": (with_line(messages=[{"role": "user", "content": 3}], images=[]), "content"),
    "unknown part type": (
        with_line(messages=[{"role": "user", "content": [{"type": "picture"}]}], images=[]),
        "'type'",
    ),
    "text part without text": (
        with_line(messages=[{"role": "user", "content": [{"type": "text"}]}], images=[]),
        "string 'text'",
    ),
    "image part without path": (with_line(images=None), "1 image part(s) but 'images' lists 0"),
    "path without image part": (
        with_line(messages=[{"role": "user", "content": "hi"}]),
        "0 image part(s) but 'images' lists 1",
    ),
    "video count mismatch": (with_line(videos=["clip.mp4"]), "0 video part(s)"),
    "images not a list": (with_line(images="pictures/red.png"), "list of non-empty path strings"),
    "escaping path": (with_line(images=["../secret.png"]), "leaves the file's directory"),
    "unknown key": (with_line(image=["x.png"]), "unknown keys ['image']"),
    "answer not a string": (with_line(answer=4), "'answer' must be a string"),
    "context answer not a string": (with_line(context_answer=["red"]), "'context_answer' must be a string"),
    "bad id": (with_line(id=["a"]), "'id'"),
    "bad meta": (with_line(meta=[1]), "'meta'"),
    "duplicate id": (with_line(id="train:1"), "duplicate id"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, case: str) -> None:
    bad_line, reason = BAD_LINES[case]
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(GOOD_LINE), bad_line])
    with pytest.raises(ValueError) as caught:
        JsonlTask(train_path=str(path))
    assert f"{path}:2:" in str(caught.value)
    assert reason in str(caught.value)


def test_jsonl_escaping_path_allowed_when_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [with_line(images=["../secret.png"])])
    sample = JsonlTask(train_path=str(path), allow_outside_root=True).train_samples()[0]
    assert sample.images[0].path == "../secret.png"


def test_jsonl_bad_line_in_eval_file_names_the_eval_file(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(GOOD_LINE)])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", ["", "nope"])
    with pytest.raises(ValueError, match=rf"{evaluation}:2:"):
        JsonlTask(train_path=str(train), eval_path=str(evaluation))


def test_jsonl_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((json.dumps(GOOD_LINE) + "\n").encode() + '{"answer": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8"):
        JsonlTask(train_path=str(path))


def test_jsonl_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_LINE).encode() + b"\n")
    assert len(JsonlTask(train_path=str(path)).train_samples()) == 1


def test_jsonl_needs_a_train_path() -> None:
    with pytest.raises(ValueError, match="train_path"):
        JsonlTask()


def test_shapes_sentence_answers_have_a_one_word_concise_form() -> None:
    task = ShapesTask(answer_style="sentence")
    corpus = set(task.corpus())
    for sample in task.eval_samples()[:40]:
        word = sample.meta[sample.meta["question"]]
        assert sample.context_answer == word and sample.answer != word and word in sample.answer.split()[-1]
        assert sample.answer in corpus
    # The word style is unchanged: the answer is the word and there is no separate concise form.
    plain = ShapesTask().eval_samples()[0]
    assert plain.context_answer is None and plain.answer == plain.meta[plain.meta["question"]]
    with pytest.raises(ValueError, match="answer_style"):
        ShapesTask(answer_style="essay")


def test_shapes_sentence_verifier_accepts_either_form_and_nothing_false() -> None:
    task = ShapesTask(answer_style="sentence")
    colour_sample = next(s for s in task.eval_samples() if s.meta["question"] == "colour")
    shape_sample = next(s for s in task.eval_samples() if s.meta["question"] == "shape")
    colour, shape = colour_sample.meta["colour"], colour_sample.meta["shape"]
    other_colour = next(c for c in COLOUR_RGB if c != colour)
    other_shape = next(s for s in SHAPE_NAMES if s != shape)
    for right in (colour_sample.answer, colour, f"{colour.upper()}.", f"It is a {colour} {shape}."):
        assert task.verify(right, colour_sample), right
    wrong_answers = (
        colour_sample.answer.replace(colour, other_colour),  # a fluent sentence naming the wrong colour
        other_colour,
        f"{colour} or {other_colour}",
        f"The {colour} {other_shape}.",  # right colour, false shape
        "The colour of the shape in this image is",  # cut off before the answer
        "",
        f"{colour}dish",  # not the word
    )
    for wrong in wrong_answers:
        assert not task.verify(wrong, colour_sample), wrong
    shape_word = shape_sample.meta["shape"]
    assert task.verify(shape_sample.answer, shape_sample) and task.verify(shape_word, shape_sample)
    wrong_shape = next(s for s in SHAPE_NAMES if s != shape_word)
    assert not task.verify(shape_sample.answer.replace(shape_word, wrong_shape), shape_sample)


def test_jsonl_context_answer_is_read_and_in_the_corpus(tmp_path: Path) -> None:
    line = {**GOOD_LINE, "answer": "The square is red.", "context_answer": "red", "images": []}
    line["messages"] = [{"role": "user", "content": "What colour is the square?"}]
    task = JsonlTask(train_path=str(write_jsonl(tmp_path / "train.jsonl", [json.dumps(line)])))
    sample = task.train_samples()[0]
    assert (sample.answer, sample.context_answer) == ("The square is red.", "red")
    assert {"The square is red.", "red"} <= set(task.corpus())
