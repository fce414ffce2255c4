"""Bring your own labelled data: a user's images with their true classes, read safely.

:func:`load_labelled_data` reads one of three things and returns a :class:`LabelledData`:

* an **ImageFolder** directory (torchvision's layout): one sub-folder per class, images inside
  (nested folders are walked). A folder is matched to the model's ``class_names`` by exact name,
  then by class index (``"0"``, ``"7"``), then by a normalised name (case-insensitive; ``_``,
  ``-``, ``/`` and spaces are interchangeable; apostrophes and dots are dropped), so
  ``"T-shirt_top"`` matches ``"T-shirt/top"``. A folder whose name fits no class, or more than one
  (ImageNet has two ``"crane"`` classes), has its files skipped with the reason. Hidden files and
  folders (and ``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) are ignored; symbolic links are never
  followed; files without an image extension, oversized or undecodable files are skipped and
  counted. Every image goes through :mod:`nip_core.images`, so uploads and data sets share the
  same size and decompression-bomb limits and the same preprocessing.
* a **.npz** file with arrays ``x`` and ``y``: ``x`` is ``N×H×W``, ``N×H×W×C`` or ``N×C×H×W``
  (C in 1, 3, 4; the layout must be unambiguous), ``uint8``/integer in 0–255 or float in [0,1];
  ``y`` holds integer labels. It is read with ``allow_pickle=False`` (object arrays are refused,
  so a pickle payload never runs), and every array header is checked before its data is read.
  Each image is turned into a PIL image and preprocessed exactly like an upload.
* a **.zip** archive (what the app uploads): extracted by :func:`safe_extract_zip` into a
  temporary folder (path traversal, symbolic links, encrypted members, zip bombs and too many
  members are refused before anything is written), then loaded as a folder, or as the single
  top-level folder or single ``.npz`` inside it.

Per-item problems are skipped and listed in :attr:`LabelledData.skipped`; a problem with the
whole input, or nothing usable left, raises :class:`~nip_core.errors.InputError`.

Order is deterministic: ImageFolder images are sorted by class index, then by relative path;
``.npz`` items keep their order. :attr:`LabelledData.data_sha256` hashes the loaded content
(``x`` quantised to uint8, ``y`` and the geometry), so it names the data, not the files.

Splits (:func:`split_indices`): the ``n`` items are shuffled once by
``numpy.random.default_rng(seed).permutation(n)``; with ``a = 3n // 10`` and ``b = 7n // 10``,
``tune`` is permutation positions ``[0, a)`` (30 %), ``report`` ``[a, b)`` (40 %), ``calib``
``[b, n)`` (30 %), and ``all`` the whole permutation. The three parts are disjoint and cover every
item; unlike the MNIST splits of :mod:`nip_core.data`, nothing is filtered by the model's accuracy.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from nip_core import images
from nip_core.errors import InputError
from nip_core.runtime import import_torchvision

import_torchvision()   # under the engine's import lock (the app imports this module in a session's thread)
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension  # noqa: E402

MAX_DATA_BYTES = 512 * 1024 * 1024        # a data file, an archive, or a folder's images, in bytes
MAX_TENSOR_BYTES = 2 * 1024 ** 3          # the loaded float32 x
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_RATIO = 200                       # uncompressed / compressed, per member
ZIP_RATIO_FLOOR_BYTES = 1024 * 1024       # members smaller than this cannot amplify far; ratio not checked
MAX_FOLDER_DEPTH = 16
# torchvision's extensions plus GIF, which nip_core.images also decodes (PPM/PGM/TIFF are then
# refused by the decoder with a reason, rather than silently ignored).
EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif",)
SPLITS = ("tune", "report", "calib", "all")
FORMATS_SENTENCE = ("a folder with one sub-folder of images per class, a .npz file with arrays x and y, "
                    "or a .zip archive of either")

_JUNK = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_CHUNK = 64 * 1024


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class LabelledData:
    """A user's labelled images, ready for the model.

    Attributes:
        x: float32 ``[N,C,H,W]`` in [0,1] (``C``/``H``/``W`` = the model's channels and size).
        y: int64 ``[N]``, indices into ``class_names``.
        class_names: the model's class names (``y`` indexes them).
        source: what was read (the path as given).
        data_sha256: SHA-256 of the geometry, ``x`` quantised to uint8 and ``y`` (see
            :func:`content_sha256`); stable across runs and machines for the same content.
        skipped: one ``{"file", "reason", "kind"}`` per item not loaded: ``file`` is the path
            relative to the data's root (``"index 17"`` for a .npz item), ``reason`` one
            sentence, ``kind`` a short label used to group them in :meth:`summary_line`.
        n_found: items considered (``len(y) + len(skipped)``).
        empty_classes: class folders that held no files.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    source: str
    data_sha256: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_found: int = 0
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Loaded images per class name, for classes with at least one image, in class order."""
        counts = torch.bincount(self.y, minlength=len(self.class_names)).tolist()
        return {self.class_names[i]: int(c) for i, c in enumerate(counts) if c}

    def summary_line(self) -> str:
        """One line, e.g. ``read 118 of 120 images from DIR (2 skipped: 1 unreadable, 1 in unknown
        class folder 'zebra')``."""
        line = f"read {len(self)} of {self.n_found} images from {self.source}"
        notes = []
        if self.skipped:
            groups = Counter(s["kind"] for s in self.skipped)
            notes.append(f"{len(self.skipped)} skipped: " + ", ".join(f"{n} {k}" for k, n in groups.items()))
        if self.empty_classes:
            names = ", ".join(repr(c) for c in self.empty_classes)
            notes.append(f"empty class folder{'s' if len(self.empty_classes) > 1 else ''} {names}")
        return line + (f" ({'; '.join(notes)})" if notes else "")

    def to_json(self) -> dict[str, Any]:
        """Everything but the tensors, as plain JSON values."""
        return {
            "source": self.source,
            "n_found": self.n_found,
            "n_loaded": len(self),
            "shape": list(self.x.shape),
            "num_classes": len(self.class_names),
            "class_counts": self.class_counts(),
            "data_sha256": self.data_sha256,
            "skipped": [dict(s) for s in self.skipped],
            "empty_classes": list(self.empty_classes),
            "summary": self.summary_line(),
        }


def content_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of ``"N,C,H,W"``, ``x`` as uint8 (``round(x*255)``, NCHW order) and ``y`` as
    little-endian int64.

    Args:
        x: ``[N,C,H,W]`` in [0,1].
        y: ``[N]`` integer labels.
    """
    q = (x.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).contiguous()
    h = hashlib.sha256(("nip-userdata-v1:" + ",".join(str(int(s)) for s in x.shape)).encode())
    h.update(b"\0")
    h.update(q.numpy().tobytes())
    h.update(y.detach().cpu().numpy().astype("<i8").tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Entry point


def load_labelled_data(path: str | os.PathLike, *, class_names: Sequence[str], channels: int, size: int,
                       preprocess: str, max_images: int | None = None, max_bytes: int = MAX_DATA_BYTES,
                       progress: Callable[[int, int], None] | None = None) -> LabelledData:
    """Read a user's labelled images (an ImageFolder directory, a .npz file or a .zip of either).

    Args:
        path: the folder, ``.npz`` or ``.zip`` file.
        class_names: the model's classes, in index order (labels must fall in ``[0, len)``).
        channels: the model's input channels (1 or 3).
        size: the model's square input side in pixels.
        preprocess: ``"mnist"`` or ``"imagenet"`` (see :func:`nip_core.images.to_model_input`).
        max_images: refuse inputs holding more images than this (counted before any decoding);
            ``None`` for no count limit (the byte limits still apply).
        max_bytes: limit on the .npz / .zip file, on the bytes a .zip expands to, on the arrays
            in a .npz and on the summed size of a folder's image files.
        progress: called as ``progress(done, total)`` while images are decoded.

    Returns:
        A :class:`LabelledData` with at least one image.

    Raises:
        InputError: an unknown format, an unsafe or malformed archive, limits exceeded, or no
            usable image left (the message names the first reasons).
    """
    names = _check_class_names(class_names)
    _check_geometry(channels, size, preprocess)
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise InputError(f"max_images must be a positive integer or None, got {max_images!r}.")
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise InputError(f"There is no file or folder at {str(p)!r}; give {FORMATS_SENTENCE}.") from None
    opts = dict(class_names=names, channels=channels, size=size, preprocess=preprocess,
                max_images=max_images, max_bytes=max_bytes, progress=progress)
    if stat.S_ISDIR(st.st_mode):
        return _load_folder(p, source=str(p), **opts)
    suffix = p.suffix.lower()
    if stat.S_ISREG(st.st_mode) and suffix == ".npz":
        return _load_npz(p, source=str(p), **opts)
    if stat.S_ISREG(st.st_mode) and suffix == ".zip":
        if st.st_size > max_bytes:
            raise InputError(f"{str(p)!r} is {st.st_size / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB "
                             f"limit for a data archive.")
        with tempfile.TemporaryDirectory(prefix="nip-userdata-") as tmp:
            root = safe_extract_zip(p, Path(tmp) / "data", max_total_bytes=max_bytes)
            payload = _locate_payload(root)
            if payload.is_file():
                return _load_npz(payload, source=str(p), **opts)
            return _load_folder(payload, source=str(p), **opts)
    what = "an image file" if has_file_allowed_extension(p.name, EXTENSIONS) else "not a data set"
    raise InputError(f"{str(p)!r} is {what}; give {FORMATS_SENTENCE}.")


def split_indices(n: int, split: str, seed: int = 0) -> np.ndarray:
    """Indices of one split of ``n`` user items (rule in the module docstring).

    Args:
        n: number of items (>= 0).
        split: ``"tune"`` (30 %), ``"report"`` (40 %), ``"calib"`` (30 %) or ``"all"``.
        seed: seed of the permutation.

    Returns:
        int64 array of indices into the items, in permutation order.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    n = int(n)
    perm = np.random.default_rng(int(seed)).permutation(n).astype(np.int64)
    a, b = 3 * n // 10, 7 * n // 10
    bounds = {"tune": (0, a), "report": (a, b), "calib": (b, n), "all": (0, n)}[split]
    return perm[bounds[0]:bounds[1]]


# ---------------------------------------------------------------------------------------------
# Validation and shared helpers


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or not class_names:
        raise InputError("class_names must be a non-empty list of the model's class names.")
    names = [str(c) for c in class_names]
    return names


def _check_geometry(channels: int, size: int, preprocess: str) -> None:
    if channels not in (1, 3) or isinstance(channels, bool):
        raise InputError(f"channels must be 1 or 3, got {channels!r}.")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise InputError(f"size must be an integer between 8 and 4096, got {size!r}.")
    if preprocess not in images.PREPROCESS:
        raise InputError(f"Unknown preprocessing {preprocess!r}; choose one of: {', '.join(images.PREPROCESS)}.")


def _skip(file: str, kind: str, reason: str) -> dict[str, str]:
    return {"file": file, "reason": reason, "kind": kind}


def _check_counts(n: int, where: str, *, channels: int, size: int, max_images: int | None) -> None:
    if max_images is not None and n > max_images:
        raise InputError(f"{where} holds {n} images, over the limit of {max_images}; use a smaller subset.")
    tensor_bytes = n * channels * size * size * 4
    if tensor_bytes > MAX_TENSOR_BYTES:
        raise InputError(f"{where} holds {n} images, which would take {tensor_bytes / 2**30:.1f} GB as model "
                         f"inputs (limit {MAX_TENSOR_BYTES / 2**30:g} GB); use a smaller subset.")


def _nothing_usable(source: str, skipped: list[dict[str, str]], empty: list[str], hint: str = "") -> InputError:
    if skipped:
        first = "; ".join(f"{s['file']}: {s['reason'].rstrip('.')}" for s in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        noun = "item" if skipped[0]["file"].startswith("index ") else "file"
        return InputError(f"no usable images in {source}: {len(skipped)} {noun}{'s' if len(skipped) != 1 else ''} "
                          f"skipped ({first}{more}).")
    if empty:
        return InputError(f"no usable images in {source}: the class folders are empty "
                          f"({', '.join(repr(e) for e in empty[:5])}).")
    return InputError(f"no usable images in {source}: {hint or 'it is empty'}; give {FORMATS_SENTENCE}.")


def _finish(xs: list[torch.Tensor], ys: list[int], *, class_names: list[str], source: str,
            skipped: list[dict[str, str]], n_found: int, empty: list[str],
            channels: int, size: int) -> LabelledData:
    if xs:
        x = torch.stack(xs).float().contiguous()
    else:
        x = torch.zeros(0, channels, size, size)
    y = torch.tensor(ys, dtype=torch.int64)
    return LabelledData(x=x, y=y, class_names=list(class_names), source=source,
                        data_sha256=content_sha256(x, y), skipped=skipped, n_found=n_found,
                        empty_classes=empty)


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name in _JUNK


def normalise_class_name(name: str) -> str:
    """The key folder names and class names are compared by: NFKC, case-folded, apostrophes and
    dots dropped, every run of other non-alphanumeric characters (``_ - / space``) made one space."""
    s = unicodedata.normalize("NFKC", name).casefold()
    s = re.sub(r"['\u2019.]", "", s)
    return re.sub(r"[\W_]+", " ", s).strip()


class _ClassMatcher:
    """Folder name → class index, or the reason it fits none (or several)."""

    def __init__(self, class_names: list[str]) -> None:
        self.names = class_names
        self.exact: dict[str, list[int]] = {}
        self.loose: dict[str, list[int]] = {}
        for i, c in enumerate(class_names):
            self.exact.setdefault(c, []).append(i)
            self.loose.setdefault(normalise_class_name(c), []).append(i)

    def match(self, folder: str) -> int | str:
        hits = self.exact.get(folder)
        if hits and len(hits) == 1:
            return hits[0]
        if re.fullmatch(r"[0-9]{1,9}", folder):
            idx = int(folder)
            if idx < len(self.names):
                return idx
            return (f"class folder {folder!r} is index {idx}, out of range for a model with "
                    f"{len(self.names)} classes.")
        hits = hits or self.loose.get(normalise_class_name(folder), [])
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = " and ".join(str(h) for h in hits[:3])
            return (f"class folder {folder!r} matches several of the model's classes ({listed}); "
                    f"name it by its class index instead.")
        examples = ", ".join(repr(c) for c in self.names[:3])
        return (f"class folder {folder!r} matches none of the model's {len(self.names)} classes "
                f"(e.g. {examples}); name it after a class or its index.")


def _walk_files(folder: Path, rel: PurePosixPath, skipped: list[dict[str, str]],
                depth: int = 0) -> list[tuple[PurePosixPath, Path]]:
    """Regular files under ``folder`` (sorted, hidden ignored, links and oddities skipped)."""
    out: list[tuple[PurePosixPath, Path]] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(_skip(f"{rel}/", "unreadable", f"the folder could not be listed ({exc.strerror or exc})."))
        return out
    for e in entries:
        if _is_ignored(e.name):
            continue
        r = rel / e.name
        if e.is_symlink():
            skipped.append(_skip(str(r), "symbolic link", "it is a symbolic link, which is never followed."))
        elif e.is_dir(follow_symlinks=False):
            if depth + 1 >= MAX_FOLDER_DEPTH:
                skipped.append(_skip(f"{r}/", "too deep", f"folders nested over {MAX_FOLDER_DEPTH} deep are not read."))
            else:
                out.extend(_walk_files(Path(e.path), r, skipped, depth + 1))
        elif e.is_file(follow_symlinks=False):
            out.append((r, Path(e.path)))
        else:
            skipped.append(_skip(str(r), "not a regular file", "it is not a regular file."))
    return out


def _load_folder(root: Path, *, source: str, class_names: list[str], channels: int, size: int,
                 preprocess: str, max_images: int | None, max_bytes: int,
                 progress: Callable[[int, int], None] | None) -> LabelledData:
    matcher = _ClassMatcher(class_names)
    skipped: list[dict[str, str]] = []
    empty: list[str] = []
    candidates: list[tuple[int, str, Path, int]] = []   # (class, relative path, path, bytes)
    n_found = 0
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"Cannot list the folder {source!r} ({exc.strerror or exc}).") from None
    for e in top:
        if _is_ignored(e.name):
            continue
        if e.is_symlink():
            n_found += 1
            skipped.append(_skip(e.name, "symbolic link", "it is a symbolic link, which is never followed."))
            continue
        if not e.is_dir(follow_symlinks=False):
            n_found += 1
            skipped.append(_skip(e.name, "not in a class folder",
                                 "it is not inside a class folder (expected one sub-folder per class)."))
            continue
        before = len(skipped)
        files = _walk_files(Path(e.path), PurePosixPath(e.name), skipped)
        n_found += len(files) + (len(skipped) - before)
        label = matcher.match(e.name)
        if not files and len(skipped) == before:
            if isinstance(label, int):
                empty.append(e.name)
            continue
        if isinstance(label, str):
            kind = ("in ambiguous class folder" if "several" in label else "in unknown class folder") + f" {e.name!r}"
            skipped.extend(_skip(str(r), kind, label) for r, _ in files)
            continue
        for r, fp in files:
            if not has_file_allowed_extension(r.name, EXTENSIONS):
                ext = r.suffix or "(none)"
                skipped.append(_skip(str(r), "not an image",
                                     f"its extension {ext!r} is not an image extension "
                                     f"({', '.join(EXTENSIONS)})."))
                continue
            try:
                nbytes = fp.lstat().st_size
            except OSError as exc:
                skipped.append(_skip(str(r), "unreadable", f"it could not be read ({exc.strerror or exc})."))
                continue
            if nbytes > images.MAX_BYTES:
                skipped.append(_skip(str(r), "too large", f"it is {nbytes / 2**20:.1f} MB, over the "
                                     f"{images.MAX_BYTES / 2**20:g} MB limit for one image."))
                continue
            candidates.append((label, str(r), fp, nbytes))

    candidates.sort(key=lambda c: (c[0], c[1]))
    _check_counts(len(candidates), source, channels=channels, size=size, max_images=max_images)
    total = sum(c[3] for c in candidates)
    if total > max_bytes:
        raise InputError(f"The images in {source} take {total / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB "
                         f"limit; use a smaller subset.")
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    for k, (label, rel, fp, _) in enumerate(candidates):
        try:
            xs.append(images.load_image_file(fp, channels=channels, size=size, preprocess=preprocess))
            ys.append(label)
        except InputError as exc:
            skipped.append(_skip(rel, "unreadable", str(exc)))
        if progress is not None:
            progress(k + 1, len(candidates))
    skipped.sort(key=lambda s: s["file"])
    if not xs:
        raise _nothing_usable(source, skipped, empty, "it holds no class folders (one sub-folder of images per class)")
    return _finish(xs, ys, class_names=class_names, source=source, skipped=skipped, n_found=n_found,
                   empty=empty, channels=channels, size=size)


# ---------------------------------------------------------------------------------------------
# .npz


def _npz_member(npz: Any, want: str) -> str | None:
    """The stored array name matching ``want`` case-insensitively, if exactly one does."""
    hits = [k for k in npz.files if k.lower() == want]
    return hits[0] if len(hits) == 1 else None


def _read_npz_array(npz: Any, key: str, source: str, max_bytes: int) -> np.ndarray:
    """One array of an open ``NpzFile``: header checked (no objects, numeric, size) before reading."""
    member = key + ".npy"
    try:
        with npz.zip.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise InputError(f"Array {key!r} in {source} uses .npy format {version}; re-save it with numpy.savez.")
    except InputError:
        raise
    except Exception:  # malformed header in an untrusted file
        raise InputError(f"Array {key!r} in {source} has an unreadable header; re-save it with numpy.savez.") from None
    if dtype.hasobject:
        raise InputError(f"Array {key!r} in {source} holds Python objects (a pickle), which are never loaded; "
                         f"save plain numeric arrays (uint8 or float images, integer labels).")
    if dtype.kind not in "uif" or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"Array {key!r} in {source} has dtype {dtype}; save plain numeric arrays "
                         f"(uint8 or float images, integer labels).")
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if count * dtype.itemsize > max_bytes:
        raise InputError(f"Array {key!r} in {source} would take {count * dtype.itemsize / 2**20:.1f} MB, over "
                         f"the {max_bytes / 2**20:g} MB limit; use a smaller subset.")
    try:
        return np.asarray(npz[key])
    except Exception:  # truncated data, bad CRC, decompression error
        raise InputError(f"Array {key!r} in {source} is truncated or corrupt; re-save it with numpy.savez.") from None


def _npz_layout(shape: tuple[int, ...], source: str) -> str:
    """``"NHW"``, ``"NHWC"`` or ``"NCHW"`` for an image array's shape, or InputError."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
        if last and not second:
            return "NHWC"
        if second and not last:
            return "NCHW"
        if last and second:
            raise InputError(f"Array 'x' in {source} has shape {shape}, which is ambiguous between N×H×W×C and "
                             f"N×C×H×W; save it as N×H×W×C.")
    raise InputError(f"Array 'x' in {source} has shape {shape}; expected N×H×W (grey), N×H×W×C or N×C×H×W "
                     f"with C = 1, 3 or 4.")


def _load_npz(path: Path, *, source: str, class_names: list[str], channels: int, size: int,
              preprocess: str, max_images: int | None, max_bytes: int,
              progress: Callable[[int, int], None] | None) -> LabelledData:
    data = images.read_file_limited(path, "a .npz file", max_bytes)
    how = "save the arrays with numpy.savez(path, x=..., y=...)"
    if not data.startswith(b"PK"):    # a .npz is a zip; refuse a bare .npy before numpy reads its header
        raise InputError(f"{source} is not a .npz archive (a zip of arrays); {how}.")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise InputError(f"{source} is not a readable .npz file; {how}.") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{source} is not a .npz archive; {how}.")
    with npz:
        kx, ky = _npz_member(npz, "x"), _npz_member(npz, "y")
        if kx is None or ky is None:
            found = ", ".join(repr(k) for k in npz.files[:8]) or "none"
            raise InputError(f"{source} needs arrays named x (images) and y (labels); it holds {found}.")
        x = _read_npz_array(npz, kx, source, max_bytes)
        y = _read_npz_array(npz, ky, source, max_bytes)

    layout = _npz_layout(x.shape, source)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"Array 'y' in {source} has shape {y.shape}; expected one integer label per image (N,).")
    if len(y) != x.shape[0]:
        raise InputError(f"{source} has {x.shape[0]} images in x but {len(y)} labels in y; they must match.")
    if y.dtype.kind == "f" and not np.all(np.isnan(y) | (y == np.round(y))):
        raise InputError(f"Array 'y' in {source} holds non-integer labels; save integer class indices.")
    if layout == "NHW":
        x = x[..., None]
    elif layout == "NCHW":
        x = np.moveaxis(x, 1, -1)
    n, h, w = x.shape[:3]
    if n == 0:
        raise InputError(f"no usable images in {source}: x holds no images.")
    if h == 0 or w == 0:
        raise InputError(f"The images in {source} have no pixels (shape {x.shape}).")
    if h * w > images.MAX_PIXELS:
        raise InputError(f"The images in {source} are {w}x{h} pixels, over the {images.MAX_PIXELS / 1e6:g}-megapixel "
                         f"limit.")
    _check_counts(n, source, channels=channels, size=size, max_images=max_images)

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[x.shape[3]]
    exact = (h, w, x.shape[3]) == (size, size, channels)
    is_float = x.dtype.kind == "f"
    skipped: list[dict[str, str]] = []
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    for i in range(n):
        if progress is not None and i:
            progress(i, n)
        item = x[i]
        label = y[i]
        where = f"index {i}"
        if is_float:
            if not np.isfinite(item).all():
                skipped.append(_skip(where, "bad pixel values", "the image holds NaN or infinite values."))
                continue
            lo, hi = float(item.min()), float(item.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                skipped.append(_skip(where, "bad pixel values",
                                     f"float pixels must lie in [0,1], these span [{lo:g}, {hi:g}] "
                                     f"(save 0-255 images as uint8)."))
                continue
            u8 = np.rint(np.clip(item, 0.0, 1.0) * 255.0).astype(np.uint8)
        else:
            lo, hi = int(item.min()), int(item.max())
            if lo < 0 or hi > 255:
                skipped.append(_skip(where, "bad pixel values",
                                     f"integer pixels must lie in 0-255, these span [{lo}, {hi}]."))
                continue
            u8 = item.astype(np.uint8)
        if (y.dtype.kind == "f" and not np.isfinite(label)) or not 0 <= label < len(class_names):
            skipped.append(_skip(where, "label out of range",
                                 f"label {label!r} is not a class index in [0, {len(class_names)})."))
            continue
        if exact:
            # Already the model's geometry (e.g. MNIST-shaped arrays): the pixels as they are. The
            # upload preprocessing (crop, re-centre) would cost accuracy on data made for the model.
            xs.append(torch.from_numpy(np.moveaxis(u8, -1, 0).astype(np.float32) / 255.0))
        else:
            img = Image.fromarray(np.ascontiguousarray(u8[..., 0] if mode == "L" else u8))
            xs.append(images.to_model_input(img, channels=channels, size=size, preprocess=preprocess))
        ys.append(int(label))
    if progress is not None:
        progress(n, n)
    if not xs:
        raise _nothing_usable(source, skipped, [])
    return _finish(xs, ys, class_names=class_names, source=source, skipped=skipped, n_found=n,
                   empty=[], channels=channels, size=size)


# ---------------------------------------------------------------------------------------------
# .zip


def _member_parts(name: str) -> tuple[str, ...]:
    """A member name's path parts, or InputError if it could land outside the destination."""
    if "\x00" in name:
        raise InputError(f"The archive has a member name with a NUL character ({name!r}); it was refused.")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise InputError(f"The archive has a member with an absolute path ({name!r}); it was refused.")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise InputError(f"The archive has a member that points outside its folder ({name!r}); it was refused.")
    if not parts:
        raise InputError(f"The archive has a member with an empty name ({name!r}); it was refused.")
    return parts


def _check_members(infos: list[zipfile.ZipInfo], *, max_members: int, max_total_bytes: int,
                   max_ratio: float) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Every check that needs no decompression, over the whole central directory."""
    if len(infos) > max_members:
        raise InputError(f"The archive has {len(infos)} members, over the limit of {max_members}; "
                         f"it was refused.")
    declared = 0
    seen: set[tuple[str, ...]] = set()
    out = []
    for info in infos:
        parts = _member_parts(info.filename)
        if info.flag_bits & 0x1:
            raise InputError(f"The archive member {info.filename!r} is encrypted; give an archive without a password.")
        mode = (info.external_attr >> 16) & 0xFFFF
        ftype = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            raise InputError(f"The archive member {info.filename!r} is a symbolic link; archives with links are "
                             f"refused.")
        if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
            raise InputError(f"The archive member {info.filename!r} is not a regular file or folder; it was refused.")
        if parts in seen:
            raise InputError(f"The archive holds {info.filename!r} twice; it was refused.")
        seen.add(parts)
        if info.is_dir():
            out.append((info, parts))
            continue
        declared += info.file_size
        if declared > max_total_bytes:
            raise InputError(f"The archive expands to more than {max_total_bytes / 2**20:g} MB; it was refused.")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > ZIP_RATIO_FLOOR_BYTES and ratio > max_ratio:
            raise InputError(f"The archive member {info.filename!r} is compressed {ratio:.0f}:1, over the "
                             f"{max_ratio:g}:1 limit (a zip bomb?); it was refused.")
        out.append((info, parts))
    return out


def _mkdirs(dest: Path, parts: tuple[str, ...], created: list[Path]) -> Path:
    """Create ``dest/parts...`` as real folders (never through a link); returns the folder."""
    cur = dest
    for p in parts:
        cur = cur / p
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
            created.append(cur)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"The archive uses {'/'.join(parts)!r} both as a file and as a folder; it was refused.")
    return cur


def safe_extract_zip(src: str | os.PathLike | bytes, dest_dir: str | os.PathLike, *,
                     max_members: int = MAX_ZIP_MEMBERS, max_total_bytes: int = MAX_DATA_BYTES,
                     max_ratio: float = MAX_ZIP_RATIO) -> Path:
    """Extract an untrusted zip archive into ``dest_dir`` and nothing outside it.

    Before anything is written, every member is checked: no absolute names, drive letters or
    ``..`` components, no symbolic links or other special files (Unix mode in ``external_attr``),
    no encrypted members, no duplicates, at most ``max_members`` members, declared sizes summing
    to at most ``max_total_bytes``, and no member over 1 MiB compressed more than ``max_ratio``:1.
    While extracting, the bytes actually written are counted, so a header that lies about sizes
    cannot exceed the limits. Files are created exclusively (never overwriting, never through a
    link). On any refusal, everything this call created is removed.

    Args:
        src: path of the archive, or its bytes.
        dest_dir: folder to extract into (created if missing; existing files are never replaced).
        max_members: most members (files and folders) accepted.
        max_total_bytes: most bytes the archive may expand to.
        max_ratio: highest compression ratio accepted for a member over 1 MiB.

    Returns:
        ``dest_dir`` as a resolved path.

    Raises:
        InputError: the archive is unreadable or unsafe, with one sentence saying why.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src)
    except FileNotFoundError:
        raise InputError(f"There is no file at {str(src)!r}.") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InputError("The file is not a readable .zip archive.") from None
    dest = Path(dest_dir)
    created: list[Path] = []
    with zf:
        members = _check_members(zf.infolist(), max_members=max_members, max_total_bytes=max_total_bytes,
                                 max_ratio=max_ratio)
        if not dest.exists():
            dest.mkdir(parents=True)
            created.append(dest.resolve())
        dest = dest.resolve()
        try:
            total = 0
            for info, parts in members:
                if info.is_dir():
                    _mkdirs(dest, parts, created)
                    continue
                folder = _mkdirs(dest, parts[:-1], created)
                target = folder / parts[-1]
                if not target.resolve().is_relative_to(dest):  # belt and braces: the parts check already ensures this
                    raise InputError(f"The archive member {info.filename!r} points outside its folder; it was refused.")
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                except FileExistsError:
                    raise InputError(f"The archive member {info.filename!r} would replace an existing file; "
                                     f"it was refused.") from None
                created.append(target)
                written = 0
                with os.fdopen(fd, "wb") as out, zf.open(info) as stream:
                    while chunk := stream.read(_CHUNK):
                        written += len(chunk)
                        total += len(chunk)
                        if written > info.file_size or total > max_total_bytes:
                            raise InputError(f"The archive member {info.filename!r} expands beyond its declared "
                                             f"size or the {max_total_bytes / 2**20:g} MB limit; it was refused.")
                        out.write(chunk)
        except InputError:
            _remove(created)
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
                ValueError) as exc:
            _remove(created)
            raise InputError(f"The archive is corrupt or uses an unsupported feature ({type(exc).__name__}); "
                             f"it could not be extracted.") from None
        except BaseException:
            _remove(created)
            raise
    return dest


def _remove(created: list[Path]) -> None:
    """Delete what an extraction created, files first, deepest folders first."""
    for p in reversed(created):
        try:
            if p.is_dir() and not p.is_symlink():
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass


def _locate_payload(root: Path) -> Path:
    """What an extracted archive holds: the folder itself, its single top-level folder (when that
    folder contains sub-folders but no files, i.e. it is the data root, not a class folder), or a
    single .npz file (at the top or in that folder)."""
    for _ in range(2):
        entries = [e for e in sorted(root.iterdir()) if not _is_ignored(e.name)]
        if len(entries) == 1 and entries[0].is_file() and entries[0].suffix.lower() == ".npz":
            return entries[0]
        if len(entries) == 1 and entries[0].is_dir():
            inner = [e for e in entries[0].iterdir() if not _is_ignored(e.name)]
            if inner and (all(e.is_dir() for e in inner)
                          or (len(inner) == 1 and inner[0].suffix.lower() == ".npz")):
                root = entries[0]
                continue
        break
    return root
