"""The image processor: every input form gives a model-ready RGB image, every bad input a MediaError."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from mmopd.processors import resolve_path
from mmopd.processors.image import ImageProcessor
from mmopd.registry import PROCESSORS
from mmopd.sample import MediaError, MediaRef

SAMPLE_ID = "sample-42"


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` followed by no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def load_error(processor: ImageProcessor, ref: MediaRef) -> str:
    with pytest.raises(MediaError) as caught:
        processor.load(ref, SAMPLE_ID)
    message = str(caught.value)
    assert SAMPLE_ID in message
    return message


def test_registered_under_image() -> None:
    assert PROCESSORS.get("image") is ImageProcessor
    assert ImageProcessor().kind == "image"


@pytest.mark.parametrize("width, height", [(10, 10), (56, 56), (100, 30), (640, 480), (1000, 300), (3000, 2000)])
@pytest.mark.parametrize(
    "processor", [ImageProcessor(), ImageProcessor(min_pixels=128 * 128, max_pixels=256 * 256, factor=32)]
)
def test_output_size_is_a_multiple_of_factor_within_pixel_bounds(
    processor: ImageProcessor, width: int, height: int
) -> None:
    image = processor.load(MediaRef(kind="image", data=Image.new("RGB", (width, height), (10, 20, 30))), SAMPLE_ID)
    out_width, out_height = image.size
    assert image.mode == "RGB"
    assert out_width % processor.factor == 0 and out_height % processor.factor == 0
    assert processor.min_pixels <= out_width * out_height <= processor.max_pixels


def test_path_bytes_and_pil_inputs_give_identical_pixels(tmp_path: Path) -> None:
    original = noise_image(90, 70)
    (tmp_path / "photo.png").write_bytes(png_bytes(original))
    processor = ImageProcessor()
    from_path = processor.load(MediaRef(kind="image", path="photo.png", root=str(tmp_path)), SAMPLE_ID)
    from_bytes = processor.load(MediaRef(kind="image", data=png_bytes(original)), SAMPLE_ID)
    from_pil = processor.load(MediaRef(kind="image", data=original), SAMPLE_ID)
    assert from_path.size == from_bytes.size == from_pil.size != original.size
    assert from_path.tobytes() == from_bytes.tobytes() == from_pil.tobytes()


def test_image_already_at_target_size_is_unchanged() -> None:
    original = noise_image(56, 84)
    loaded = ImageProcessor().load(MediaRef(kind="image", data=original), SAMPLE_ID)
    assert loaded.tobytes() == original.tobytes()
    assert loaded is not original


def test_content_decides_the_format_not_the_extension(tmp_path: Path) -> None:
    (tmp_path / "really_a_png.jpg").write_bytes(png_bytes(noise_image(56, 56)))
    loaded = ImageProcessor().load(MediaRef(kind="image", path=str(tmp_path / "really_a_png.jpg")), SAMPLE_ID)
    assert loaded.size == (56, 56)


@pytest.mark.parametrize("mode", ["L", "P", "1", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    loaded = ImageProcessor().load(MediaRef(kind="image", data=noise_image(56, 56).convert(mode)), SAMPLE_ID)
    assert loaded.mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    transparent_black = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    loaded = ImageProcessor().load(MediaRef(kind="image", data=png_bytes(transparent_black)), SAMPLE_ID)
    assert loaded.getcolors() == [(56 * 56, (255, 255, 255))]


def test_corrupt_file(tmp_path: Path) -> None:
    data = bytearray(png_bytes(noise_image(64, 64)))
    data[100:-20] = bytes(len(data) - 120)  # keep the header, zero the compressed pixels
    (tmp_path / "corrupt.png").write_bytes(data)
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="corrupt.png", root=str(tmp_path)))
    assert "corrupt.png" in message


def test_truncated_file(tmp_path: Path) -> None:
    data = png_bytes(noise_image(64, 64))
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="truncated.png", root=str(tmp_path)))
    assert "truncated.png" in message


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="empty.png", root=str(tmp_path)))
    assert "empty.png" in message and "0 bytes" in message


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="absent.png", root=str(tmp_path)))
    assert "absent.png" in message and "not found" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="folder.png", root=str(tmp_path)))
    assert "folder.png" in message and "directory" in message


def test_non_image_content_with_image_extension(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("these are notes, not pixels\n")
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="notes.jpg", root=str(tmp_path)))
    assert "notes.jpg" in message


@pytest.mark.parametrize("escape", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_paths_leaving_the_root_are_refused_unless_allowed(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(png_bytes(noise_image(56, 56)))
    path = str(tmp_path / "outside.png") if escape == "ABSOLUTE" else escape
    ref = MediaRef(kind="image", path=path, root=str(root))
    message = load_error(ImageProcessor(), ref)
    assert "outside.png" in message and "outside the media root" in message
    assert ImageProcessor(allow_outside_root=True).load(ref, SAMPLE_ID).size == (56, 56)


def test_symlink_leaving_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png_bytes(noise_image(56, 56)))
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(MediaError, match=r"link\.png"):
        resolve_path(MediaRef(kind="image", path="link.png", root=str(root)), SAMPLE_ID, allow_outside_root=False)


def test_path_inside_the_root_resolves(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"anything")
    ref = MediaRef(kind="image", path="a/../a/x.png", root=str(tmp_path))
    assert resolve_path(ref, SAMPLE_ID, allow_outside_root=False) == (tmp_path / "a" / "x.png").resolve()


def test_decompression_bomb_made_by_pil(tmp_path: Path) -> None:
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 Mpixels in a few kilobytes
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    processor = ImageProcessor(max_decoded_pixels=10_000_000)
    message = load_error(processor, MediaRef(kind="image", path="bomb.png", root=str(tmp_path)))
    assert "bomb.png" in message and "max_decoded_pixels" in message


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    # The file has no pixel data: decoding it would fail as truncated, so the size refusal proves
    # the limit was applied from the header alone.
    (tmp_path / "header_only.png").write_bytes(header_only_png(5000, 5000))
    processor = ImageProcessor(max_decoded_pixels=10_000_000)
    message = load_error(processor, MediaRef(kind="image", path="header_only.png", root=str(tmp_path)))
    assert "header_only.png" in message and "max_decoded_pixels" in message


@pytest.mark.parametrize("side", [10_000, 20_000])  # in PIL's warning band, and beyond its hard limit
def test_pil_decompression_bomb_guard_becomes_media_error(tmp_path: Path, side: int) -> None:
    (tmp_path / "huge.png").write_bytes(header_only_png(side, side))
    processor = ImageProcessor(max_decoded_pixels=10**12)
    message = load_error(processor, MediaRef(kind="image", path="huge.png", root=str(tmp_path)))
    assert "huge.png" in message and "decompression bomb" in message


def test_extreme_aspect_ratio(tmp_path: Path) -> None:
    Image.new("RGB", (3000, 5)).save(tmp_path / "sliver.png")
    message = load_error(ImageProcessor(), MediaRef(kind="image", path="sliver.png", root=str(tmp_path)))
    assert "sliver.png" in message and "aspect ratio" in message


def test_bad_in_memory_inputs() -> None:
    message = load_error(ImageProcessor(), MediaRef(kind="image", data=b"\x89PNG not really"))
    assert "<in-memory image>" in message
    message = load_error(ImageProcessor(), MediaRef(kind="image", data=b""))
    assert "0 bytes" in message
    message = load_error(ImageProcessor(), MediaRef(kind="image", data=[1, 2, 3]))
    assert "list" in message
    message = load_error(ImageProcessor(), MediaRef(kind="image", data=Image.new("RGB", (0, 0))))
    assert "empty" in message


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_pixels"):
        ImageProcessor(min_pixels=1000, max_pixels=10)
    with pytest.raises(ValueError, match="factor"):
        ImageProcessor(factor=0)
