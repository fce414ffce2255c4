"""Bring-your-own labelled data: ImageFolder, .npz and .zip inputs, their refusals, hashing and splits."""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nip_core.errors import InputError
from nip_core.images import load_image_file
from nip_core.sources.userdata import (
    LabelledData,
    content_sha256,
    load_labelled_data,
    normalise_class_name,
    safe_extract_zip,
    split_indices,
)

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
RGB = dict(channels=3, size=16, preprocess="imagenet")
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def png(path: Path, colour=(255, 0, 0), side: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), colour).save(path, format="PNG")
    return path


def png_bytes(colour=(255, 0, 0), side: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def dominant(x: torch.Tensor) -> int:
    """Index of the brightest channel of a [3,H,W] image."""
    return int(x.mean(dim=(1, 2)).argmax())


def snapshot(root: Path, exclude: Path) -> set[str]:
    """Every path under root, except those under exclude."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p != exclude and exclude not in p.parents:
                out.add(str(p.relative_to(root)))
    return out


# ---------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_by_names_matches_loosely_and_orders_by_class_then_file(tmp_path):
    png(tmp_path / "T-shirt_top" / "b.png", RED)
    png(tmp_path / "T-shirt_top" / "a.png", RED)
    png(tmp_path / "trouser" / "z.png", GREEN)
    png(tmp_path / "Ankle-boot" / "nested" / "c.png", BLUE)
    png(tmp_path / "PULLOVER" / "p.png", GREEN)
    data = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    assert isinstance(data, LabelledData)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert tuple(data.x.shape) == (5, 3, 16, 16)
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    assert data.y.tolist() == [0, 0, 1, 2, 9]
    assert [dominant(img) for img in data.x] == [0, 0, 1, 1, 2]
    assert data.skipped == [] and data.n_found == 5 and data.empty_classes == []
    assert data.class_counts() == {"T-shirt/top": 2, "Trouser": 1, "Pullover": 1, "Ankle boot": 1}
    assert data.summary_line() == f"read 5 of 5 images from {tmp_path}"
    assert json.loads(json.dumps(data.to_json()))["n_loaded"] == 5


def test_imagefolder_by_indices_grey_model(tmp_path):
    png(tmp_path / "7" / "x.png", (200, 200, 200))
    png(tmp_path / "0" / "x.png", (10, 10, 10))
    png(tmp_path / "03" / "x.png", (100, 100, 100))
    data = load_labelled_data(tmp_path, class_names=[f"class {i}" for i in range(10)],
                              channels=1, size=16, preprocess="imagenet")
    assert tuple(data.x.shape) == (3, 1, 16, 16)
    assert data.y.tolist() == [0, 3, 7]
    means = data.x.mean(dim=(1, 2, 3)).tolist()
    assert means[0] < means[1] < means[2]


def test_class_name_normalisation_and_ambiguity(tmp_path):
    assert normalise_class_name("T-shirt/top") == normalise_class_name("t-shirt_top") == "t shirt top"
    assert normalise_class_name("St. Bernard") == normalise_class_name("st_bernard")
    assert normalise_class_name("potter's wheel") == normalise_class_name("Potters-Wheel")
    names = ["crane", "heron", "crane", "St. Bernard"]          # ImageNet has two 'crane' classes
    png(tmp_path / "crane" / "a.png")
    png(tmp_path / "2" / "a.png")
    png(tmp_path / "st_bernard" / "a.png")
    png(tmp_path / "9" / "a.png")
    data = load_labelled_data(tmp_path, class_names=names, **RGB)
    assert data.y.tolist() == [2, 3]
    reasons = {s["file"]: s["reason"] for s in data.skipped}
    assert "several" in reasons["crane/a.png"] and "index" in reasons["crane/a.png"]
    assert "out of range" in reasons["9/a.png"]


def test_unknown_folder_corrupt_file_links_and_hidden_files_are_reported(tmp_path):
    png(tmp_path / "Trouser" / "good.png", GREEN)
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noisy, "PNG")
    (tmp_path / "Trouser" / "bad.png").write_bytes(noisy.getvalue()[:1500])       # truncated
    (tmp_path / "Trouser" / "notes.txt").write_text("hello")
    png(tmp_path / "Trouser" / ".hidden.png")                        # ignored, not counted
    os.symlink(tmp_path / "Trouser" / "good.png", tmp_path / "Trouser" / "link.png")
    png(tmp_path / "zebra" / "z.png", RED)
    os.symlink(tmp_path / "zebra", tmp_path / "Dress")             # a linked class folder
    (tmp_path / "Coat").mkdir()                                      # empty class folder
    (tmp_path / "README.txt").write_text("my data")
    (tmp_path / "__MACOSX").mkdir()
    png(tmp_path / "__MACOSX" / "Trouser" / "._good.png")
    data = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    assert data.y.tolist() == [1] and dominant(data.x[0]) == 1
    kinds = {s["file"]: s["kind"] for s in data.skipped}
    assert kinds == {
        "Dress": "symbolic link",
        "README.txt": "not in a class folder",
        "Trouser/bad.png": "unreadable",
        "Trouser/link.png": "symbolic link",
        "Trouser/notes.txt": "not an image",
        "zebra/z.png": "in unknown class folder 'zebra'",
    }
    assert data.n_found == len(data) + len(data.skipped) == 7
    assert data.empty_classes == ["Coat"]
    line = data.summary_line()
    assert line.startswith(f"read 1 of 7 images from {tmp_path} (6 skipped: ")
    assert "1 unreadable" in line and "2 symbolic link" in line and "1 in unknown class folder 'zebra'" in line
    assert "empty class folder 'Coat'" in line
    assert "truncated or corrupt" in next(s["reason"] for s in data.skipped if s["file"] == "Trouser/bad.png")


def test_too_large_image_file_is_skipped_before_decoding(tmp_path, monkeypatch):
    import nip_core.images as images
    png(tmp_path / "Bag" / "ok.png")
    (tmp_path / "Bag" / "big.png").write_bytes(png_bytes() + b"\0" * 5000)
    monkeypatch.setattr(images, "MAX_BYTES", 2000)
    data = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    assert len(data) == 1
    assert data.skipped[0]["file"] == "Bag/big.png" and data.skipped[0]["kind"] == "too large"


def test_nothing_usable_raises_one_sentence_with_reasons(tmp_path):
    (tmp_path / "Trouser").mkdir()
    (tmp_path / "Trouser" / "a.png").write_bytes(b"garbage")
    png(tmp_path / "zebra" / "z.png")
    with pytest.raises(InputError, match=r"no usable images in .*: 2 files skipped \(Trouser/a.png: .*zebra"):
        load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no usable images .* no class folders"):
        load_labelled_data(empty, class_names=FASHION, **RGB)


def test_unknown_inputs_name_the_accepted_formats(tmp_path):
    (tmp_path / "labels.csv").write_text("a,b")
    with pytest.raises(InputError, match=r"\.npz file .* \.zip archive"):
        load_labelled_data(tmp_path / "labels.csv", class_names=FASHION, **RGB)
    with pytest.raises(InputError, match="is an image file"):
        load_labelled_data(png(tmp_path / "one.png"), class_names=FASHION, **RGB)
    with pytest.raises(InputError, match="no file or folder"):
        load_labelled_data(tmp_path / "missing", class_names=FASHION, **RGB)
    with pytest.raises(InputError, match="channels"):
        load_labelled_data(tmp_path, class_names=FASHION, channels=2, size=16, preprocess="imagenet")


def test_max_images_and_progress(tmp_path):
    for i in range(4):
        png(tmp_path / "Bag" / f"{i}.png")
    with pytest.raises(InputError, match="holds 4 images, over the limit of 3"):
        load_labelled_data(tmp_path, class_names=FASHION, max_images=3, **RGB)
    calls = []
    load_labelled_data(tmp_path, class_names=FASHION, progress=lambda d, t: calls.append((d, t)), **RGB)
    assert calls[-1] == (4, 4) and len(calls) == 4


# ---------------------------------------------------------------------------------------------
# .npz


def colour_batch(colours, side=10) -> np.ndarray:
    return np.stack([np.full((side, side, 3), c, dtype=np.uint8) for c in colours])


def test_npz_uint8_nhwc(tmp_path):
    x = colour_batch([RED, GREEN, BLUE, GREEN])
    np.savez(tmp_path / "d.npz", x=x, y=np.array([3, 1, 4, 1]))
    data = load_labelled_data(tmp_path / "d.npz", class_names=FASHION, **RGB)
    assert tuple(data.x.shape) == (4, 3, 16, 16)
    assert data.y.tolist() == [3, 1, 4, 1]
    assert [dominant(i) for i in data.x] == [0, 1, 2, 1]
    assert torch.allclose(data.x[0, 0], torch.ones(16, 16))
    assert data.n_found == 4 and data.skipped == []


def test_npz_float_nchw_skips_bad_items(tmp_path):
    x = colour_batch([RED, GREEN, BLUE, RED, GREEN]).astype(np.float32) / 255.0
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))            # N,C,H,W
    x[1, 0, 2, 2] = np.nan
    x[2] *= 255.0                                                 # 0-255 saved as float: out of range
    y = np.array([0, 1, 2, 12, 5], dtype=np.int64)               # 12 is not a class
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    data = load_labelled_data(tmp_path / "d.npz", class_names=FASHION, **RGB)
    assert data.y.tolist() == [0, 5]
    assert [dominant(i) for i in data.x] == [0, 1]
    assert [(s["file"], s["kind"]) for s in data.skipped] == [
        ("index 1", "bad pixel values"), ("index 2", "bad pixel values"), ("index 3", "label out of range")]
    assert data.n_found == 5
    line = data.summary_line()
    assert "read 2 of 5 images" in line and "2 bad pixel values, 1 label out of range" in line


def test_npz_grey_nhw_is_preprocessed_exactly_like_an_upload(tmp_path):
    x = np.zeros((2, 40, 40), dtype=np.uint8)      # not the model's 28×28: preprocessed like an upload
    x[0, 6:32, 18:22] = 255                       # a "1"
    x[1, 8:30, 8:30] = 255
    x[1, 13:25, 13:25] = 0                        # a "0"
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0], dtype=np.uint8))
    data = load_labelled_data(tmp_path / "d.npz", class_names=[str(i) for i in range(10)],
                              channels=1, size=28, preprocess="mnist")
    assert tuple(data.x.shape) == (2, 1, 28, 28) and data.y.tolist() == [1, 0]
    for i in range(2):
        path = tmp_path / f"upload{i}.png"
        Image.fromarray(x[i]).save(path)
        upload = load_image_file(path, channels=1, size=28, preprocess="mnist")
        assert torch.equal(data.x[i], upload)


def test_npz_in_the_models_geometry_keeps_its_pixels(tmp_path):
    """Arrays already shaped for the model (N×28×28 for LeNet) are used as they are: the upload
    preprocessing (crop and re-centre) would cost accuracy on data made for the model."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0, 2]))
    data = load_labelled_data(tmp_path / "d.npz", class_names=[str(i) for i in range(10)],
                              channels=1, size=28, preprocess="mnist")
    assert torch.equal(data.x, torch.from_numpy(x.astype(np.float32) / 255.0)[:, None])


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((3, 8, 8), np.uint8), y=np.zeros(2, np.int64)), "3 images in x but 2 labels"),
    (dict(x=np.zeros((3, 8, 8), np.uint8)), "needs arrays named x"),
    (dict(x=np.zeros((2, 3, 8, 3), np.uint8), y=np.zeros(2, np.int64)), "ambiguous"),
    (dict(x=np.zeros((2, 8), np.uint8), y=np.zeros(2, np.int64)), "expected N×H×W"),
    (dict(x=np.zeros((2, 8, 8), np.uint8), y=np.array([0.5, 1.0])), "non-integer labels"),
    (dict(x=np.zeros((2, 8, 8), bool), y=np.zeros(2, np.int64)), "dtype bool"),
    (dict(x=np.zeros((2, 8, 8), np.uint8), y=np.array(["a", "b"])), "dtype <U1"),
    (dict(x=np.full((2, 8, 8), 300, np.int32), y=np.zeros(2, np.int64)), "2 items skipped .*0-255"),
])
def test_npz_whole_file_problems_raise_one_sentence(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError, match=message) as err:
        load_labelled_data(tmp_path / "d.npz", class_names=FASHION, **RGB)
    assert "\n" not in str(err.value)


def test_bare_npy_renamed_npz_is_refused(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((2, 8, 8), np.uint8))
    os.rename(tmp_path / "d.npy", tmp_path / "d.npz")
    with pytest.raises(InputError, match="not a .npz archive"):
        load_labelled_data(tmp_path / "d.npz", class_names=FASHION, **RGB)


def test_npz_array_header_claiming_huge_size_is_refused_before_reading(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 1000, 1000)})     # claims 1 TB
    y = io.BytesIO()
    np.save(y, np.zeros(2, np.int64))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)   # the header includes the magic
        zf.writestr("y.npy", y.getvalue())
    with pytest.raises(InputError, match=r"Array 'x' .* would take 953674.3 MB, over the 512 MB limit"):
        load_labelled_data(tmp_path / "d.npz", class_names=FASHION, **RGB)


class _Payload:
    """Unpickling this calls open(marker, 'w'), i.e. creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["x", "y"])
def test_npz_object_array_is_refused_and_its_pickle_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = _Payload(marker), 1
    arrays = {"x": np.zeros((2, 8, 8), np.uint8), "y": np.zeros(2, np.int64), where: evil}
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(InputError, match="Python objects .* never loaded"):
        load_labelled_data(tmp_path / "evil.npz", class_names=FASHION, **RGB)
    assert not marker.exists()
    # Control: the payload is live — numpy with allow_pickle=True would have run it.
    np.load(tmp_path / "evil.npz", allow_pickle=True)[where]
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# .zip


def make_zip(path: Path, members: list[tuple]) -> Path:
    """members: (name, bytes) or (ZipInfo, bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def link_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("name", ["../evil.png", "ok/../../evil.png", "..\\evil.png", "/ABS", "C:/evil.png",
                                  "c:evil.png"])
def test_zip_path_traversal_and_absolute_names_are_refused(tmp_path, name, monkeypatch):
    if name == "/ABS":
        name = str(tmp_path / "abs_evil.png")
    src = make_zip(tmp_path / "a.zip", [("good/a.png", png_bytes()), (name, b"owned")])
    before = snapshot(tmp_path, tmp_path / "dest")
    opened, real_open = [], os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    with pytest.raises(InputError, match="absolute path|outside its folder"):
        safe_extract_zip(src, tmp_path / "dest")
    monkeypatch.undo()
    assert opened == []                                           # refused before the first write
    assert not (tmp_path / "dest").exists()                       # nothing written at all
    assert snapshot(tmp_path, tmp_path / "dest") == before
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "abs_evil.png").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    src = make_zip(tmp_path / "a.zip", [("a/x.png", png_bytes()), (link_info("a/link.png"), b"../../../etc/passwd")])
    with pytest.raises(InputError, match="symbolic link"):
        safe_extract_zip(src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_encrypted_member_is_refused(tmp_path):
    src = make_zip(tmp_path / "a.zip", [("a/x.png", png_bytes())])
    patch_headers(src, "a/x.png", flags=0x1)
    assert zipfile.ZipFile(src).getinfo("a/x.png").flag_bits & 0x1
    with pytest.raises(InputError, match="encrypted"):
        safe_extract_zip(src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_bomb_ratio_and_declared_total_are_refused_before_writing(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", [("a/x.png", png_bytes()), ("a/zeros.png", b"\0" * (8 * 2**20))])
    assert bomb.stat().st_size < 100_000
    with pytest.raises(InputError, match="compressed .* over the 200:1 limit"):
        safe_extract_zip(bomb, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    big = make_zip(tmp_path / "big.zip", [("a/x.png", png_bytes()), ("a/y.bin", os.urandom(50_000))])
    with pytest.raises(InputError, match="expands to more than"):
        safe_extract_zip(big, tmp_path / "dest", max_total_bytes=40_000)
    assert not (tmp_path / "dest").exists()


def patch_headers(path: Path, member: str, *, size: int | None = None, flags: int | None = None) -> None:
    """Rewrite the uncompressed size and/or the flag bits of ``member`` in its local header and
    its central-directory entry (what a hand-crafted malicious archive would do)."""
    raw = bytearray(path.read_bytes())
    name = member.encode()
    # signature, offset of flags, of uncompressed size, of name length, of the name itself
    for sig, flags_at, size_at, len_at, name_at in ((b"PK\x03\x04", 6, 22, 26, 30), (b"PK\x01\x02", 8, 24, 28, 46)):
        pos = raw.find(sig)
        while pos != -1:
            n_len = struct.unpack_from("<H", raw, pos + len_at)[0]
            if bytes(raw[pos + name_at:pos + name_at + n_len]) == name:
                if size is not None:
                    struct.pack_into("<I", raw, pos + size_at, size)
                if flags is not None:
                    struct.pack_into("<H", raw, pos + flags_at, flags)
            pos = raw.find(sig, pos + 4)
    path.write_bytes(bytes(raw))


def test_zip_lying_header_cannot_write_more_than_it_declares(tmp_path):
    src = make_zip(tmp_path / "liar.zip", [("a/x.png", png_bytes()), ("a/big.png", b"\0" * (4 * 2**20))])
    patch_headers(src, "a/big.png", size=1000)                        # small enough to pass the ratio check
    assert zipfile.ZipFile(src).getinfo("a/big.png").file_size == 1000
    before = snapshot(tmp_path, tmp_path / "dest")
    with pytest.raises(InputError, match="corrupt"):
        safe_extract_zip(src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()                       # partial output removed
    assert snapshot(tmp_path, tmp_path / "dest") == before


def test_zip_stream_longer_than_declared_is_cut_off_by_the_byte_counter(tmp_path, monkeypatch):
    # Even if the zip library handed back more bytes than the header declares, extraction stops.
    src = make_zip(tmp_path / "a.zip", [("a/x.png", b"0123456789")])
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"\0" * 500_000))
    with pytest.raises(InputError, match="beyond its declared size"):
        safe_extract_zip(src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_with_too_many_members_is_refused(tmp_path):
    src = make_zip(tmp_path / "a.zip", [(f"a/{i}.png", png_bytes()) for i in range(6)])
    with pytest.raises(InputError, match="6 members, over the limit of 5"):
        safe_extract_zip(src, tmp_path / "dest", max_members=5)
    assert not (tmp_path / "dest").exists()
    assert len(list(safe_extract_zip(src, tmp_path / "ok", max_members=6).joinpath("a").iterdir())) == 6


def test_zip_never_replaces_existing_files(tmp_path):
    dest = tmp_path / "dest"
    png(dest / "a" / "x.png", GREEN)
    src = make_zip(tmp_path / "a.zip", [("a/new.png", png_bytes()), ("a/x.png", png_bytes(RED))])
    with pytest.raises(InputError, match="replace an existing file"):
        safe_extract_zip(src, dest)
    assert sorted(p.name for p in (dest / "a").iterdir()) == ["x.png"]      # new.png cleaned up
    assert Image.open(dest / "a" / "x.png").getpixel((0, 0)) == GREEN


def test_good_zip_loads_like_the_folder_it_holds(tmp_path):
    folder = tmp_path / "mydata"
    png(folder / "Trouser" / "a.png", GREEN)
    png(folder / "Bag" / "b.png", BLUE)
    png(folder / "Bag" / "c.png", RED)
    members = [(str(p.relative_to(tmp_path)), p.read_bytes()) for p in sorted(folder.rglob("*.png"))]
    members.append(("__MACOSX/mydata/._a.png", b"junk"))
    src = make_zip(tmp_path / "upload.zip", members)
    before = snapshot(tmp_path, tmp_path / "never")
    from_zip = load_labelled_data(src, class_names=FASHION, **RGB)
    assert snapshot(tmp_path, tmp_path / "never") == before        # temporary extraction cleaned up
    from_folder = load_labelled_data(folder, class_names=FASHION, **RGB)
    assert from_zip.source == str(src)
    assert from_zip.y.tolist() == from_folder.y.tolist() == [1, 8, 8]
    assert torch.equal(from_zip.x, from_folder.x)
    assert from_zip.data_sha256 == from_folder.data_sha256
    assert from_zip.skipped == []
    dest = safe_extract_zip(src.read_bytes(), tmp_path / "fromBytes")
    assert (dest / "mydata" / "Bag" / "b.png").read_bytes() == (folder / "Bag" / "b.png").read_bytes()


def test_zip_holding_one_npz_loads_it(tmp_path):
    np.savez(tmp_path / "d.npz", x=colour_batch([RED, BLUE]), y=np.array([0, 2]))
    src = make_zip(tmp_path / "upload.zip", [("d.npz", (tmp_path / "d.npz").read_bytes())])
    data = load_labelled_data(src, class_names=FASHION, **RGB)
    assert data.y.tolist() == [0, 2] and data.source == str(src)


def test_not_a_zip_is_refused(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a readable .zip"):
        load_labelled_data(tmp_path / "fake.zip", class_names=FASHION, **RGB)


# ---------------------------------------------------------------------------------------------
# Hash and splits


def test_data_sha256_is_stable_and_sensitive_to_one_pixel_and_one_label(tmp_path):
    png(tmp_path / "Bag" / "a.png", (40, 80, 120))
    png(tmp_path / "Coat" / "b.png", (120, 80, 40))
    first = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    second = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    assert first.data_sha256 == second.data_sha256 == content_sha256(first.x, first.y)
    assert len(first.data_sha256) == 64

    im = Image.open(tmp_path / "Bag" / "a.png").convert("RGB")
    im.putpixel((8, 8), (255, 255, 255))
    im.save(tmp_path / "Bag" / "a.png")
    changed = load_labelled_data(tmp_path, class_names=FASHION, **RGB)
    assert changed.data_sha256 != first.data_sha256

    relabelled = content_sha256(first.x, torch.tensor([8, 5]))
    assert relabelled != first.data_sha256


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 400), seed=st.integers(0, 2**31))
def test_split_indices_are_disjoint_covering_and_deterministic(n, seed):
    parts = {s: split_indices(n, s, seed) for s in ("tune", "report", "calib")}
    assert [len(parts[s]) for s in ("tune", "report", "calib")] == [3 * n // 10, 7 * n // 10 - 3 * n // 10,
                                                                   n - 7 * n // 10]
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(n))              # disjoint and covering
    assert np.array_equal(split_indices(n, "all", seed), joined)  # "all" is the permutation order
    assert np.array_equal(split_indices(n, "report", seed), parts["report"])
    assert all(p.dtype == np.int64 for p in parts.values())


def test_split_indices_depend_on_the_seed_and_refuse_unknown_splits():
    assert not np.array_equal(split_indices(100, "all", 0), split_indices(100, "all", 1))
    with pytest.raises(InputError, match="unknown split 'test'; choose one of: tune, report, calib, all"):
        split_indices(10, "test")
    with pytest.raises(InputError, match="non-negative"):
        split_indices(-1, "all")
