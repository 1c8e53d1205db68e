"""Tests for wsss_blocks.data.io: VOC palette, label PNGs, images, atomic writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wsss_blocks.data.io import (
    atomic_write,
    load_image,
    load_label_png,
    save_image,
    save_label_png,
    voc_palette,
)

Image = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------- palette
def test_voc_palette_known_entries():
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal.dtype == np.uint8
    # values from the VOC devkit colour map
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    for i, rgb in expected.items():
        assert tuple(pal[i]) == rgb, i


def test_voc_palette_is_bit_interleaving_and_injective():
    pal = voc_palette().astype(int)
    # independent reference: walk the bits of each index one at a time
    for i in (5, 37, 100, 201):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        assert tuple(pal[i]) == (r, g, b)
    assert len({tuple(p) for p in pal}) == 256
    assert voc_palette(21).shape == (21, 3)
    with pytest.raises(ValueError, match="num_colors"):
        voc_palette(0)


# ---------------------------------------------------------------- label PNGs
def _mask(h=5, w=7):
    m = (np.arange(h * w).reshape(h, w) % 21).astype(np.uint8)
    m[0, 0] = 255
    return m


@pytest.mark.parametrize("palette", [True, False])
@pytest.mark.parametrize("kind", ["uint8", "int64", "tensor"])
def test_label_png_roundtrip(tmp_path, palette, kind):
    m = _mask()
    arg = {"uint8": m, "int64": m.astype(np.int64), "tensor": torch.from_numpy(m.astype(np.int64))}[kind]
    p = tmp_path / "sub" / "m.png"
    save_label_png(p, arg, palette=palette)
    out = load_label_png(p)
    assert out.dtype == np.int64
    assert out.shape == (5, 7)
    np.testing.assert_array_equal(out, m)
    img = Image.open(p)
    assert img.mode == ("P" if palette else "L")
    if palette:
        pal = np.array(img.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(pal, voc_palette())
        # the colours a viewer shows are the VOC colours
        rgb = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(rgb, voc_palette()[m])


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9))), st.booleans())
def test_label_png_roundtrip_property(tmp_path_factory, mask, palette):
    p = tmp_path_factory.mktemp("h") / "m.png"
    save_label_png(p, mask, palette=palette)
    np.testing.assert_array_equal(load_label_png(p), mask.astype(np.int64))


def test_load_label_png_rejects_rgb(tmp_path):
    p = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(p)
    with pytest.raises(ValueError, match=r"mode 'RGB'.*class indices"):
        load_label_png(p)


def test_load_label_png_16bit_greyscale(tmp_path):
    p = tmp_path / "i16.png"
    arr = np.array([[0, 3], [80, 255]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    np.testing.assert_array_equal(load_label_png(p), arr.astype(np.int64))


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_load_label_png_corrupt_names_file(tmp_path, content):
    p = tmp_path / "broken_mask.png"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken_mask.png"):
        load_label_png(p)


def test_load_label_png_truncated_names_file(tmp_path):
    p = tmp_path / "trunc.png"
    save_label_png(p, np.random.default_rng(0).integers(0, 21, (64, 64)).astype(np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc.png"):
        load_label_png(p)


def test_load_label_png_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.png"):
        load_label_png(tmp_path / "nope.png")


@pytest.mark.parametrize(
    ("mask", "exc", "match"),
    [
        (np.zeros((2, 2, 1), np.uint8), ValueError, "H×W"),
        (np.zeros((2, 2), np.float32), TypeError, "integer dtype"),
        (np.array([[0, 256]]), ValueError, r"\[0, 255\].*256"),
        (np.array([[-1, 0]]), ValueError, r"\[-1, 0\]"),
        ([[0, 1]], TypeError, "numpy array or torch.Tensor"),
    ],
)
def test_save_label_png_bad_input(tmp_path, mask, exc, match):
    p = tmp_path / "bad.png"
    with pytest.raises(exc, match=match):
        save_label_png(p, mask)
    assert not p.exists()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- images
def test_image_roundtrip_png_exact(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    p = tmp_path / "x.png"
    save_image(p, arr)
    out = load_image(p)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)
    save_image(p, torch.from_numpy(arr))  # tensors accepted, overwrite works
    np.testing.assert_array_equal(load_image(p), arr)


def test_image_roundtrip_jpeg_close(tmp_path):
    arr = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    p = tmp_path / "x.jpg"
    save_image(p, arr, quality=95)
    assert Image.open(p).format == "JPEG"
    out = load_image(p)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - arr.astype(int)).max() <= 4


def test_load_image_greyscale_becomes_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.array([[10, 20]], np.uint8)).save(p)
    out = load_image(p)
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[..., 1], [[10, 20]])


def test_load_image_scales_16bit_greyscale_instead_of_clipping(tmp_path):
    """A 16-bit greyscale PNG was turned white by PIL's convert("RGB") (issue 19): it is scaled to 8 bits."""
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    ramp[0, 0], ramp[0, 1], ramp[0, 2] = 0, 32896, 65535
    p = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")  # really stored as 16 bits
    img = load_image(p)
    assert img.shape == (64, 64, 3)
    assert img.dtype == np.uint8
    assert img[0, :3].tolist() == [[0, 0, 0], [128] * 3, [255] * 3]
    np.testing.assert_array_equal(img[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert (img == 255).mean() < 0.01  # was 99.6 % white
    f = tmp_path / "float.tif"
    Image.fromarray(ramp.astype(np.float32)).save(f)
    with pytest.raises(ValueError, match=r"float.tif'.*floating-point image \(PIL mode 'F'\)"):
        load_image(f)


def test_load_image_corrupt_names_file(tmp_path):
    p = tmp_path / "2007_000032.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    with pytest.raises(ValueError, match=r"2007_000032\.jpg.*corrupt"):
        load_image(p)
    with pytest.raises(FileNotFoundError, match=r"missing.jpg"):
        load_image(tmp_path / "missing.jpg")


@pytest.mark.parametrize(
    ("arr", "name", "exc", "match"),
    [
        (np.zeros((2, 2, 4), np.uint8), "a.png", ValueError, "H×W×3"),
        (np.zeros((2, 2, 3), np.float32), "a.png", TypeError, "uint8"),
        (np.zeros((2, 2, 3), np.uint8), "a.unknownext", ValueError, "extension"),
    ],
)
def test_save_image_bad_input(tmp_path, arr, name, exc, match):
    with pytest.raises(exc, match=match):
        save_image(tmp_path / name, arr)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_success_and_permissions(tmp_path):
    p = tmp_path / "deep" / "f.bin"
    with atomic_write(p) as f:
        f.write(b"abc")
    assert p.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    with atomic_write(p, "w") as f:
        f.write("text ü")
    assert p.read_text(encoding="utf-8") == "text ü"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]


def _write_then_fail(path, text, error):
    with atomic_write(path, "w") as f:
        f.write(text)
        raise error


def test_atomic_write_failure_leaves_target_untouched(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        _write_then_fail(p, "new partial", RuntimeError("boom"))
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]  # temp file removed


def test_atomic_write_failure_without_existing_target(tmp_path):
    p = tmp_path / "never.txt"
    with pytest.raises(KeyError):
        _write_then_fail(p, "x", KeyError("k"))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_is_a_rename_readers_never_see_partial(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with atomic_write(p, "w") as f:
        f.write("new")
        f.flush()
        assert p.read_text() == "old"  # target unchanged until the with-block ends
    assert p.read_text() == "new"


def test_atomic_write_bad_args(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "a", "ab"):
        pass
    with pytest.raises(FileNotFoundError, match="does not exist"), \
            atomic_write(tmp_path / "no" / "a", make_parents=False):
        pass


# ---------------------------------------------------------------- lazy imports
@pytest.mark.slow
def test_import_does_not_import_pil_or_torchvision():
    code = ("import sys, wsss_blocks.data, wsss_blocks.data.io, wsss_blocks.data.voc, wsss_blocks.data.coco, "
            "wsss_blocks.data.synthetic, wsss_blocks.data.transforms; "
            "bad = [m for m in ('PIL', 'torchvision', 'timm', 'pydensecrf', 'scipy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_missing_pil_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # makes `import PIL.Image` fail
    with pytest.raises(ImportError, match=r"wsss-blocks\[train\]"):
        load_image(tmp_path / "x.png")
