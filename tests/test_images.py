"""The image loader: what it accepts, what it refuses, and the two preprocessing pipelines."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from nip_core.errors import InputError
from nip_core.images import (
    MAX_BYTES,
    decode_image,
    load_image,
    load_image_file,
    tensor_to_pil,
    tensor_to_png_bytes,
    to_model_input,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def close(a, b, tol: int = 0) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming a huge RGB image, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    return header + b"\x2c" + b"\x00" * 9 + b"\x02\x02\x44\x01\x00\x3b"


def rgba_image() -> Image.Image:
    im = Image.new("RGBA", (8, 4), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 255, 0))        # fully transparent blue -> white
    im.putpixel((2, 0), (255, 0, 0, 128))      # half-transparent red -> pink
    return im


def palette_with_transparency() -> bytes:
    im = Image.new("P", (6, 6), 1)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)                     # index 0 is transparent
    return encode(im, "PNG", transparency=0)


def png16() -> bytes:
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (10, 10), c) for c in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """40x20 stored pixels, a red block in the stored top-left, orientation 6 (display 90° clockwise)."""
    im = Image.new("RGB", (40, 20), BLUE)
    ImageDraw.Draw(im).rectangle((0, 0, 9, 9), fill=RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


# (name, bytes, expected size, [(xy, expected RGB, tolerance)])
ACCEPTED = [
    ("png-grey", encode(Image.new("L", (5, 3), 77), "PNG"), (5, 3), [((0, 0), (77, 77, 77), 0)]),
    ("png-rgba", encode(rgba_image(), "PNG"), (8, 4),
     [((0, 0), RED, 0), ((1, 0), WHITE, 0), ((2, 0), (255, 127, 127), 1)]),
    ("png-la", encode(Image.new("LA", (4, 4), (0, 0)), "PNG"), (4, 4), [((0, 0), WHITE, 0)]),
    ("png-palette-transparency", palette_with_transparency(), (6, 6),
     [((0, 0), WHITE, 0), ((3, 3), GREEN, 0)]),
    # 16-bit grey must be scaled, not clipped at 255 (Pillow's plain convert would give 255 for 1000).
    ("png-16bit", png16(), (4, 1),
     [((0, 0), (0, 0, 0), 0), ((1, 0), (4, 4, 4), 0), ((2, 0), (128, 128, 128), 0), ((3, 0), WHITE, 0)]),
    ("jpeg-rgb", encode(Image.new("RGB", (16, 16), (200, 30, 60)), "JPEG", quality=95), (16, 16),
     [((8, 8), (200, 30, 60), 6)]),
    ("jpeg-cmyk", encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95), (16, 16),
     [((8, 8), (0, 255, 255), 6)]),
    ("webp", encode(Image.new("RGB", (9, 7), GREEN), "WEBP", lossless=True), (9, 7), [((4, 4), GREEN, 0)]),
    ("bmp", encode(Image.new("RGB", (9, 7), BLUE), "BMP"), (9, 7), [((4, 4), BLUE, 0)]),
    ("gif-animated-first-frame", animated_gif(), (10, 10), [((5, 5), RED, 0)]),
    # Orientation 6 rotates 90° clockwise: the stored top-left block lands top-right.
    ("jpeg-exif-rotated", exif_rotated_jpeg(), (20, 40),
     [((15, 4), RED, 40), ((4, 4), BLUE, 40), ((15, 35), BLUE, 40)]),
]


@pytest.mark.parametrize("name,data,size,pixels", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_kinds_decode_to_rgb(name, data, size, pixels):
    im = decode_image(data)
    assert im.mode == "RGB"
    assert im.size == size
    for xy, rgb, tol in pixels:
        assert close(im.getpixel(xy), rgb, tol), (name, xy, im.getpixel(xy), rgb)


def test_animated_gif_fixture_really_has_frames():
    assert Image.open(io.BytesIO(animated_gif())).n_frames == 3


def test_bytearray_and_memoryview_are_accepted():
    data = encode(Image.new("RGB", (3, 3), RED), "PNG")
    assert decode_image(bytearray(data)).getpixel((1, 1)) == RED
    assert decode_image(memoryview(data)).getpixel((1, 1)) == RED


_png = encode(Image.new("RGB", (64, 64), RED), "PNG")
REFUSED = [
    ("empty", b""),
    ("truncated-png", _png[: len(_png) // 2]),
    ("png-signature-only", _png[:8]),
    ("text", b"hello, this is not an image\n" * 10),
    ("html", b"<!DOCTYPE html><html><body><img src='x.png'></body></html>"),
    ("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    ("random-bytes", np.random.default_rng(0).bytes(4096)),
    ("tiff", encode(Image.new("RGB", (8, 8), RED), "TIFF")),
    ("ico", encode(Image.new("RGB", (16, 16), RED), "ICO")),
    ("pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n"),
]


@pytest.mark.parametrize("name,data", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_kinds_raise_input_error(name, data):
    with pytest.raises(InputError) as info:
        decode_image(data)
    message = str(info.value)
    assert "\n" not in message and "PNG, JPEG, WebP, BMP or GIF" in message


@pytest.mark.parametrize("value", ["picture.png", None, 42, np.zeros(4, dtype=np.uint8)])
def test_non_bytes_input_is_refused(value):
    with pytest.raises(InputError):
        decode_image(value)


def test_too_many_bytes_is_refused_before_decoding():
    with pytest.raises(InputError, match="limit"):
        decode_image(_png, max_bytes=100)


def test_pixel_limit_is_enforced():
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(InputError, match="megapixel"):
        decode_image(data, max_pixels=9_999)


@pytest.fixture
def pixel_decoding(monkeypatch) -> list[str]:
    """Records each start of pixel decoding in Pillow (``ImageFile.load`` and the decoder it creates)."""
    from PIL import ImageFile

    calls: list[str] = []
    load, getdecoder = ImageFile.ImageFile.load, Image._getdecoder

    def spy_load(self, *args, **kwargs):
        calls.append(f"load {self.format}")
        return load(self, *args, **kwargs)

    def spy_getdecoder(mode, decoder_name, *args, **kwargs):
        calls.append(f"decoder {decoder_name}")
        return getdecoder(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    monkeypatch.setattr(Image, "_getdecoder", spy_getdecoder)
    return calls


@pytest.mark.parametrize("data", [png_claiming(60000, 60000), png_claiming(8000, 6000), gif_claiming(65535, 65535)],
                         ids=["png-60000x60000", "png-48-megapixels", "gif-65535x65535"])
def test_huge_header_is_refused_without_decoding(data, pixel_decoding):
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="pixels"):
            decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixel_decoding == []          # refused from the header: no pixel was decoded
    assert peak < 50 * 2**20
    # the spies see decoding when it happens (the same format, small enough to accept)
    fmt = "GIF" if data.startswith(b"GIF") else "PNG"
    decode_image(encode(Image.new("RGB", (8, 8), RED), fmt))
    assert f"load {fmt}" in pixel_decoding and any(c.startswith("decoder ") for c in pixel_decoding)


def test_load_image_file(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(encode(Image.new("RGB", (300, 260), RED), "PNG"))
    x = load_image_file(path, channels=3, size=224, preprocess="imagenet")
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 100, 100], torch.tensor([1.0, 0.0, 0.0]))
    assert load_image_file(str(path), channels=1, size=28, preprocess="mnist").shape == (1, 28, 28)


def test_load_image_file_refusals(tmp_path):
    with pytest.raises(InputError, match="no file"):
        load_image_file(tmp_path / "missing.png", channels=3, size=224, preprocess="imagenet")
    with pytest.raises(InputError, match="directory"):
        load_image_file(tmp_path, channels=3, size=224, preprocess="imagenet")
    big = tmp_path / "big.png"
    with open(big, "wb") as fh:  # sparse: costs no disk and must not be read
        fh.truncate(MAX_BYTES + 1)
    with pytest.raises(InputError, match="MB limit"):
        load_image_file(big, channels=3, size=224, preprocess="imagenet")


def digit_seven(invert: bool = False) -> Image.Image:
    """A black-on-white hand-drawn-like 7, off-centre on a large page."""
    im = Image.new("L", (300, 200), 255)
    draw = ImageDraw.Draw(im)
    draw.line((40, 30, 110, 30), fill=0, width=9)
    draw.line((110, 30, 70, 150), fill=0, width=9)
    return Image.eval(im, lambda v: 255 - v) if invert else im


def test_mnist_preprocessing_centres_a_dark_on_light_digit():
    x = to_model_input(digit_seven().convert("RGB"), channels=1, size=28, preprocess="mnist")
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    img = x[0]
    assert float(img.max()) == pytest.approx(1.0)
    # Inverted to white ink on black, with empty corners; the digit is taller than wide, so the
    # side columns stay empty (centring by mass may push a top-heavy 7 to the bottom edge).
    for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
        assert float(corner) == 0.0
    assert float(img[:, :3].sum() + img[:, -3:].sum()) == 0.0
    # Fitted to a 20-pixel box and centred by mass, like MNIST.
    rows = torch.nonzero(img.sum(dim=1) > 0.1).flatten()
    assert 17 <= int(rows[-1] - rows[0]) + 1 <= 21
    ys, xs = torch.arange(28.0), torch.arange(28.0)
    mass = img.sum()
    assert abs(float((img.sum(1) * ys).sum() / mass) - 13.5) < 1.0
    assert abs(float((img.sum(0) * xs).sum() / mass) - 13.5) < 1.0


def test_mnist_preprocessing_ignores_polarity_and_replicates_channels():
    dark_on_light = to_model_input(digit_seven(), channels=1, size=28, preprocess="mnist")
    light_on_dark = to_model_input(digit_seven(invert=True), channels=1, size=28, preprocess="mnist")
    assert torch.allclose(dark_on_light, light_on_dark, atol=1e-6)
    rgb = to_model_input(digit_seven(), channels=3, size=28, preprocess="mnist")
    assert rgb.shape == (3, 28, 28) and torch.equal(rgb[0], rgb[2])


def test_mnist_preprocessing_of_a_blank_page_is_black():
    x = to_model_input(Image.new("RGB", (50, 40), WHITE), channels=1, size=28, preprocess="mnist")
    assert x.shape == (1, 28, 28) and float(x.abs().max()) == 0.0


def test_imagenet_preprocessing_resizes_and_centre_crops():
    im = Image.new("RGB", (400, 300), RED)
    ImageDraw.Draw(im).rectangle((0, 0, 49, 299), fill=BLUE)  # left strip lies outside the crop
    x = to_model_input(im, channels=3, size=224, preprocess="imagenet")
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1).expand(3, 224), atol=1e-6)
    assert to_model_input(im, channels=3, size=112, preprocess="imagenet").shape == (3, 112, 112)
    assert to_model_input(im, channels=1, size=224, preprocess="imagenet").shape == (1, 224, 224)


@pytest.mark.parametrize("kwargs", [dict(preprocess="cifar"), dict(channels=2), dict(size=0), dict(size=28.0)])
def test_bad_preprocessing_arguments_are_refused(kwargs):
    args = dict(channels=3, size=224, preprocess="imagenet") | kwargs
    with pytest.raises(InputError):
        to_model_input(Image.new("RGB", (10, 10)), **args)


@pytest.mark.parametrize("channels", [1, 3])
def test_tensor_png_round_trip(channels):
    g = torch.Generator().manual_seed(channels)
    x = torch.randint(0, 256, (channels, 7, 5), generator=g).float() / 255
    data = tensor_to_png_bytes(x)
    assert tensor_to_pil(x).size == (5, 7)
    back = torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1).float() / 255
    assert torch.allclose(back, x.expand(3, 7, 5), atol=1e-6)
    with pytest.raises(InputError):
        tensor_to_png_bytes(torch.zeros(2, 4, 4))


# --- fuzzing: whatever the bytes, the loader either returns a tensor or raises InputError -----

def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return [
        encode(small, "PNG"),
        encode(small.convert("RGBA"), "PNG"),
        encode(small.convert("P"), "PNG", transparency=0),
        encode(small, "JPEG", quality=80),
        encode(small, "JPEG", progressive=True),
        exif_rotated_jpeg(),
        encode(small.convert("P"), "GIF"),
        animated_gif(),
        encode(small, "WEBP"),
        encode(small, "BMP"),
        png16(),
    ]


SEEDS = _seed_files()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[i:i + len(chunk)] = chunk
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2048), mutated_images()),
       preprocess=st.sampled_from(["imagenet", "mnist", "fashion"]))
def test_fuzzed_bytes_only_ever_raise_input_error(data, preprocess):
    try:
        x = load_image(data, channels=3, size=32, preprocess=preprocess)
    except InputError:
        return
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def _torchvision_resize_centre_crop(rgb: Image.Image, short_side: int, size: int) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    resized = TF.resize(rgb, short_side, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.to_tensor(TF.center_crop(resized, [size, size])).float()


@pytest.mark.parametrize("wh", [(400, 300), (300, 400), (224, 224), (256, 256), (257, 999), (1001, 233), (225, 224),
                                (32, 32), (31, 47), (640, 480)])
@pytest.mark.parametrize("short_side,size", [(256, 224), (224, 224), (32, 32), (37, 32)])
def test_photo_resize_without_torchvision_is_bitwise_torchvisions(wh, short_side, size):
    from nip_core.images import _resize_centre_crop

    rng = np.random.default_rng(wh[0] * 7919 + wh[1] + short_side)
    im = Image.fromarray(rng.integers(0, 256, size=(wh[1], wh[0], 3), dtype=np.uint8), "RGB")
    ours = _resize_centre_crop(im, short_side, size)
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, _torchvision_resize_centre_crop(im, short_side, size))


def test_gallery_photos_preprocess_exactly_as_with_torchvision():
    from pathlib import Path

    from nip_core.images import _resize_centre_crop

    import importlib.resources

    gallery = Path(__file__).resolve().parent.parent / "assets" / "gallery" / "imagenet"
    foolbox = Path(str(importlib.resources.files("foolbox").joinpath("data")))   # ImageNet and CIFAR-10 test images
    photos = sorted(gallery.glob("*.png")) + sorted(foolbox.glob("imagenet_*")) + sorted(foolbox.glob("cifar10_*"))
    assert len(photos) >= 45
    for p in photos:
        im = Image.open(p).convert("RGB")
        for short_side, size in ((256, 224), (224, 224), (32, 32)):
            assert torch.equal(_resize_centre_crop(im, short_side, size),
                               _torchvision_resize_centre_crop(im, short_side, size)), p.name


def test_shipped_imagenet_class_names_are_torchvisions():
    from torchvision.models import ResNet18_Weights

    from nip_core.sources.imagenet import imagenet_class_names

    assert imagenet_class_names() == list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
