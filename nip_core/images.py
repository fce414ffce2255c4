"""The one image loader: every uploaded, command-line or gallery image goes through here.

:func:`decode_image` turns untrusted bytes into an 8-bit RGB :class:`PIL.Image.Image` or raises
:class:`~nip_core.errors.InputError`; :func:`to_model_input` turns that image into a model's
``[C,H,W]`` tensor in [0,1] pixel space (normalisation lives inside the model wrappers).

Safety: only the PNG, JPEG, WebP, BMP and GIF decoders are ever run; the file size and the
pixel count claimed by the header are checked before any pixel data is decoded, so a tiny
file claiming a huge image costs nothing; any failure while decoding becomes an InputError.
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from nip_core.errors import InputError
from nip_core.runtime import import_torchvision

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
PREPROCESS = ("mnist", "fashion", "imagenet", "natural")
_ACCEPTED = "a PNG, JPEG, WebP, BMP or GIF image"

# Leading bytes of common files we refuse, so the message can say what the file looks like.
_KNOWN_OTHERS = (
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)


def _tv():
    """torchvision's transforms, imported on first use: the import costs about 2 s (it loads
    torchvision's models), which an app showing only MNIST digits need not pay."""
    import_torchvision()
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    return TF, InterpolationMode


def _describe_unsupported(data: bytes) -> str:
    for magic, what in _KNOWN_OTHERS:
        if data.startswith(magic):
            return what
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIF/AVIF image"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "an SVG or XML file"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    try:
        data[:4096].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a supported image"


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode untrusted image bytes into an 8-bit RGB image.

    Args:
        data: the whole file. PNG, JPEG, WebP, BMP and GIF are accepted in any pixel mode
            (grey, 16-bit, palette, CMYK, with or without transparency); transparent pixels
            are composited on white, animated files give their first frame, and the EXIF
            orientation is applied.
        max_bytes: refuse files larger than this many bytes.
        max_pixels: refuse images whose header claims more pixels than this (checked before
            any pixel data is decoded).

    Returns:
        A loaded ``PIL.Image.Image`` in mode ``"RGB"``.

    Raises:
        InputError: for anything else, with a one-sentence reason.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError(f"Expected the image file's bytes, got {type(data).__name__}; "
                         f"provide {_ACCEPTED}.")
    if not data:
        raise InputError(f"The file is empty; provide {_ACCEPTED}.")
    if len(data) > max_bytes:
        raise InputError(f"The file is {len(data) / 2**20:.1f} MB, over the "
                         f"{max_bytes / 2**20:g} MB limit; provide a smaller image.")
    try:
        # Image.open reads only the header; pixel data is decoded by load() below.
        im = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError("The image has too many pixels to decode safely (over Pillow's decompression-bomb "
                         "limit); provide a smaller image.") from None
    except Exception:  # any header-parsing failure of an untrusted file
        what = _describe_unsupported(data)
        if what == "not a supported image":
            raise InputError(f"The file is not a readable image; provide {_ACCEPTED}.") from None
        raise InputError(f"The file looks like {what}, which is not accepted; provide {_ACCEPTED}.") from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InputError(f"The image has no pixels ({width}x{height}); provide {_ACCEPTED}.")
        if width * height > max_pixels:
            raise InputError(f"The image is {width}x{height} pixels, over the {max_pixels / 1e6:g}-megapixel "
                             f"limit; provide a smaller image.")
        try:
            im.load()
            rgb = _to_rgb(_apply_exif_orientation(im))
        except Exception:  # truncated or corrupt data in any decoder, including MemoryError
            raise InputError(f"The {im.format or 'image'} file is truncated or corrupt and could not be "
                             f"decoded; provide a complete {_ACCEPTED.removeprefix('a ')}.") from None
    return rgb


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF metadata should not cost the user a readable photo
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return Image.fromarray(_wide_to_uint8(im)).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer or float grey to uint8 (Pillow's own convert would clip at 255)."""
    arr = np.asarray(im).astype(np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if im.mode == "F":
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or arr.max(initial=0.0) > 255:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def to_model_input(img: Image.Image, *, channels: int, size: int, preprocess: str) -> torch.Tensor:
    """A decoded image as a model input.

    Args:
        img: a PIL image (any mode; normally the output of :func:`decode_image`).
        channels: 1 for a grey model, 3 for an RGB model.
        size: the model's square input side in pixels (28 for MNIST, 32 for CIFAR-10, 224 for ImageNet).
        preprocess: ``"mnist"`` — grey, inverted when the background is bright, digit cropped
            to its ink, scaled to fit ``size*20/28`` pixels and centred by centre of mass;
            ``"fashion"`` — Fashion-MNIST's recipe: grey, inverted when the border is bright,
            trimmed to the object, longest side resized to ``size``, centred on black;
            ``"imagenet"`` — shorter side resized to ``round(size*256/224)`` then centre-cropped;
            ``"natural"`` — shorter side resized to ``size`` then centre-cropped (no margin: small
            whole-scene images such as CIFAR-10's 32×32 photos).

    Returns:
        float32 tensor ``[channels, size, size]`` in [0,1], not normalised.
    """
    if not isinstance(img, Image.Image):
        raise InputError(f"Expected a PIL image, got {type(img).__name__}.")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}.")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise InputError(f"size must be an integer between 8 and 4096, got {size!r}.")
    if preprocess not in PREPROCESS:
        raise InputError(f"Unknown preprocessing {preprocess!r}; choose one of: {', '.join(PREPROCESS)}.")
    rgb = img if img.mode == "RGB" else _to_rgb(img)
    if preprocess == "mnist":
        x = _mnist_digit(rgb, size)
        return x.expand(channels, size, size).contiguous()
    if preprocess == "fashion":
        return _fashion_item(rgb, size).expand(channels, size, size).contiguous()
    short_side = size if preprocess == "natural" else round(size * 256 / 224)
    x = _resize_centre_crop(rgb, short_side, size)
    if channels == 1:
        x = _tv()[0].rgb_to_grayscale(x, num_output_channels=1)
    return x.clamp(0.0, 1.0).contiguous()


def _resize_centre_crop(rgb: Image.Image, short_side: int, size: int) -> torch.Tensor:
    """Shorter side resized to ``short_side`` (aspect kept), then the central ``size``×``size`` square.

    torchvision's ``resize`` → ``center_crop`` → ``to_tensor`` on a PIL image, done with PIL itself
    (which is what torchvision calls for PIL images: bilinear, antialiased) so that a photo needs no
    torchvision import (about 2 s). ``tests/test_images.py`` checks it is bitwise the same.
    """
    w, h = rgb.size   # short_side >= size, so the crop never needs padding
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(short_side * long / short)
    new_w, new_h = (short_side, new_long) if w <= h else (new_long, short_side)
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    crop = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255)


def _stretch(grey: np.ndarray, background: float) -> tuple[np.ndarray, np.ndarray]:
    """``grey`` with ``background`` removed and the brightest pixel stretched to 1 (when there is a
    contrast of more than 0.1 to stretch), and the mask of pixels above 0.1 (the ink, or the object)."""
    span = float(grey.max()) - background
    if span > 0.1:
        grey = np.clip((grey - background) / span, 0.0, 1.0)
    return grey, grey > 0.1


def _mnist_digit(rgb: Image.Image, size: int) -> torch.Tensor:
    """MNIST-style normalisation: white digit on black, fitted in the inner box, centred by mass."""
    grey = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
    if grey.mean() > 0.5:
        grey = 1.0 - grey
    # A photo of paper is not pure white: remove the background level and stretch the ink to 1.
    grey, ink = _stretch(grey, float(np.median(grey)))
    if not ink.any():
        return _resize(torch.from_numpy(grey)[None], size, size)

    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    margin = max(1, round(0.02 * max(grey.shape)))
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, grey.shape[0])
    left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, grey.shape[1])
    crop = grey[top:bottom, left:right]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.float32)
    oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop

    box = max(1, round(size * 20 / 28))
    digit = _resize(torch.from_numpy(square)[None], box, box)[0]
    if digit.max() > 0:
        digit = digit / digit.max()  # thin strokes fade when shrunk; MNIST ink peaks at 1

    mass = digit.sum()
    ys, xs = torch.arange(box, dtype=torch.float32), torch.arange(box, dtype=torch.float32)
    cy = float((digit.sum(dim=1) * ys).sum() / mass) if mass > 0 else (box - 1) / 2
    cx = float((digit.sum(dim=0) * xs).sum() / mass) if mass > 0 else (box - 1) / 2
    centre = (size - 1) / 2
    y0 = int(np.clip(round(centre - cy), 0, size - box))
    x0 = int(np.clip(round(centre - cx), 0, size - box))
    canvas = torch.zeros(1, size, size)
    canvas[0, y0:y0 + box, x0:x0 + box] = digit
    return canvas.clamp(0.0, 1.0)


def _fashion_item(rgb: Image.Image, size: int) -> torch.Tensor:
    """Fashion-MNIST's conversion (Xiao et al. 2017): light object on black, trimmed to the
    object, longest side ``size`` pixels, centred; the aspect ratio is kept."""
    grey = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 0.5:  # product photos sit on a white background
        grey, border = 1.0 - grey, 1.0 - border
    grey, item = _stretch(grey, float(np.median(border)))
    if not item.any():
        return _resize(torch.from_numpy(grey)[None], size, size)
    rows, cols = np.flatnonzero(item.any(axis=1)), np.flatnonzero(item.any(axis=0))
    crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = size / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    canvas = torch.zeros(1, size, size)
    y0, x0 = (size - h) // 2, (size - w) // 2
    canvas[0, y0:y0 + h, x0:x0 + w] = _resize(torch.from_numpy(np.ascontiguousarray(crop))[None], h, w)[0]
    return canvas


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    TF, mode = _tv()
    out = TF.resize(x, [height, width], interpolation=mode.BILINEAR, antialias=True)
    return out.clamp(0.0, 1.0)


def load_image(data: bytes, *, channels: int, size: int, preprocess: str) -> torch.Tensor:
    """:func:`decode_image` then :func:`to_model_input`."""
    return to_model_input(decode_image(data), channels=channels, size=size, preprocess=preprocess)


def read_file_limited(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """Bytes of a regular file, refusing missing, non-regular or over-``limit`` files with an
    :class:`InputError` (size checked with ``stat`` before anything is read)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"There is no file at {str(p)!r}; give the path of {what}.") from None
    except OSError as exc:
        raise InputError(f"Cannot access {str(p)!r} ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(st.st_mode):
        kind = " (it is a directory)" if stat.S_ISDIR(st.st_mode) else ""
        raise InputError(f"{str(p)!r} is not a regular file{kind}; give the path of {what}.")
    if st.st_size > limit:
        raise InputError(f"{str(p)!r} is {st.st_size / 2**20:.1f} MB, over the {limit / 2**20:g} MB limit "
                         f"for {what}.")
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)  # the file may have grown since stat
    except OSError as exc:
        raise InputError(f"Cannot read {str(p)!r} ({exc.strerror or exc}).") from None
    if len(data) > limit:
        raise InputError(f"{str(p)!r} is over the {limit / 2**20:g} MB limit for {what}.")
    return data


def load_image_file(path: str | os.PathLike, *, channels: int, size: int, preprocess: str) -> torch.Tensor:
    """Read an image file (refusing missing, non-regular or oversized files) and :func:`load_image` it."""
    data = read_file_limited(path, _ACCEPTED, MAX_BYTES)
    return load_image(data, channels=channels, size=size, preprocess=preprocess)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """A ``[C,H,W]`` tensor in [0,1] (C = 1 or 3) as an 8-bit ``L`` or ``RGB`` image."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"Expected a [C,H,W] image tensor with 1 or 3 channels, got {shape}.")
    arr = (x.detach().float().cpu().nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]))
    return Image.fromarray(np.ascontiguousarray(arr))


def tensor_to_png_bytes(x: torch.Tensor) -> bytes:
    """A ``[C,H,W]`` tensor in [0,1] encoded as PNG bytes."""
    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- drawings (Explore's canvas)
# A drawing is a 28×28 uint8 grey image (white ink on black, MNIST's convention) after the model's own
# preprocessing; it travels in share links as ``zlib`` + URL-safe base64 (no padding): a digit is
# typically 150–300 characters.

DRAWING_SIZE = 28
DRAWING_PREFIX = "draw:"                 # an Explore image key naming a drawing: "draw:<token>"
MAX_DRAWING_TOKEN = 1500                 # characters; zlib of 784 bytes is at most ~800 bytes (~1070 characters)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def encode_drawing(drawing: np.ndarray) -> str:
    """A 28×28 uint8 drawing as a short URL-safe text (zlib, then base64 without padding)."""
    import base64
    import zlib

    arr = np.asarray(drawing)
    if arr.shape != (DRAWING_SIZE, DRAWING_SIZE) or arr.dtype != np.uint8:
        raise InputError(f"A drawing is a {DRAWING_SIZE}×{DRAWING_SIZE} uint8 image; got shape "
                         f"{tuple(arr.shape)} of {arr.dtype}.")
    packed = zlib.compress(np.ascontiguousarray(arr).tobytes(), 9)
    return base64.urlsafe_b64encode(packed).decode("ascii").rstrip("=")


def decode_drawing(token: object) -> np.ndarray:
    """The inverse of :func:`encode_drawing`: a ``[28, 28]`` uint8 array, or :class:`InputError` with one
    sentence for anything else (wrong type, too long, characters outside URL-safe base64, not zlib data,
    a decompression bomb, the wrong number of pixels)."""
    import base64
    import binascii
    import zlib

    bad = "The drawing in the link is damaged ({}); draw it again."
    if not isinstance(token, str):
        raise InputError(bad.format(f"expected text, got {type(token).__name__}"))
    if not token:
        raise InputError(bad.format("it is empty"))
    if len(token) > MAX_DRAWING_TOKEN:
        raise InputError(bad.format(f"{len(token)} characters, over the {MAX_DRAWING_TOKEN} a drawing takes"))
    if not set(token) <= _TOKEN_CHARS:
        raise InputError(bad.format("it has characters that URL-safe base64 does not use"))
    try:
        packed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InputError(bad.format("not base64")) from None
    want = DRAWING_SIZE * DRAWING_SIZE
    d = zlib.decompressobj()
    try:
        raw = d.decompress(packed, want + 1)     # never more than one byte past a drawing: no zlib bomb
    except zlib.error:
        raise InputError(bad.format("not compressed drawing data")) from None
    if len(raw) != want or not d.eof or d.unused_data:
        raise InputError(bad.format(f"it does not hold exactly {DRAWING_SIZE}×{DRAWING_SIZE} pixels"))
    return np.frombuffer(raw, dtype=np.uint8).reshape(DRAWING_SIZE, DRAWING_SIZE).copy()


def drawing_from_canvas(rgba: object, preprocess: str = "mnist") -> np.ndarray | None:
    """A canvas's pixels (``[H, W, 4]`` RGBA, light ink on a dark or transparent background) as a 28×28 uint8
    drawing, prepared as :func:`to_model_input` prepares an image for a 28×28 grey model (``"mnist"``:
    cropped to the ink, fitted in 20×20, centred by mass; ``"fashion"``: trimmed, longest side 28).

    Returns None when nothing is drawn (no pixel brighter than a tenth of full ink).
    Raises InputError (one sentence) when ``rgba`` is not an RGBA image of a sane size.
    """
    arr = np.asarray(rgba) if isinstance(rgba, np.ndarray) else None
    if arr is None or arr.ndim != 3 or arr.shape[2] != 4 or not 8 <= arr.shape[0] <= 4096 \
            or not 8 <= arr.shape[1] <= 4096:
        got = tuple(arr.shape) if arr is not None else type(rgba).__name__
        raise InputError(f"The canvas sent no usable image (expected RGBA pixels, got {got}); clear it and draw again.")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise InputError("The canvas sent no usable image (its pixels are not numbers); clear it and draw again.")
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if preprocess not in ("mnist", "fashion"):
        raise InputError(f"Drawings are for the 28×28 grey models (preprocessing mnist or fashion), not {preprocess!r}.")
    rgb, alpha = arr[..., :3].astype(np.float32), arr[..., 3].astype(np.float32) / 255.0
    ink = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) * alpha    # transparent = black
    if not (ink > 25.5).any():
        return None
    grey = Image.fromarray(np.clip(np.rint(ink), 0, 255).astype(np.uint8), mode="L")
    x = to_model_input(grey, channels=1, size=DRAWING_SIZE, preprocess=preprocess)
    return (x[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def drawing_to_tensor(drawing: np.ndarray, channels: int = 1) -> torch.Tensor:
    """A 28×28 uint8 drawing as a model input ``[channels, 28, 28]`` in [0,1]."""
    arr = np.asarray(drawing)
    if arr.shape != (DRAWING_SIZE, DRAWING_SIZE) or arr.dtype != np.uint8:
        raise InputError(f"A drawing is a {DRAWING_SIZE}×{DRAWING_SIZE} uint8 image; got shape {tuple(arr.shape)}.")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}.")
    x = torch.from_numpy(arr.astype(np.float32) / 255.0)[None]
    return x.expand(channels, DRAWING_SIZE, DRAWING_SIZE).contiguous()
