"""ovss.images.load_image: every kind of input -> RGB uint8, and clear errors that name the input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovss import images
from ovss.errors import InputError
from ovss.images import LoadedImage, load_image


def test_rgb_uint8_array_passes_through_unchanged():
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = load_image(a)
    assert isinstance(out, LoadedImage)
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.rgb, a)
    assert out.size == (2, 3) and out.name == "<array>" and out.path is None
    assert load_image(out) is out


def test_grayscale_png_is_repeated_on_three_channels(tmp_path):
    g = np.array([[0, 10, 200], [255, 7, 99]], dtype=np.uint8)
    p = tmp_path / "g.png"
    Image.fromarray(g, mode="L").save(p)
    out = load_image(p)
    assert out.rgb.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(out.rgb[:, :, c], g)
    assert out.path == str(p) and out.name == str(p)


def test_grayscale_2d_array():
    g = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(load_image(g).rgb, np.repeat(g[:, :, None], 3, axis=2))


def test_rgba_png_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), dtype=np.uint8)
    a[0, 0] = (200, 100, 0, 255)     # opaque: colour kept
    a[0, 1] = (200, 100, 0, 0)       # transparent: white
    a[0, 2] = (100, 50, 0, 51)       # alpha 0.2: 0.2*c + 0.8*255
    p = tmp_path / "a.png"
    Image.fromarray(a, mode="RGBA").save(p)
    out = load_image(p).rgb
    np.testing.assert_array_equal(out[0, 0], (200, 100, 0))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 2], (round(0.2 * 100 + 0.8 * 255), round(0.2 * 50 + 0.8 * 255), 204))


def test_rgba_array_and_grey_alpha_array():
    a = np.array([[[0, 0, 0, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(load_image(a).rgb, [[[255, 255, 255], [10, 20, 30]]])
    la = np.array([[[0, 0], [40, 255]]], dtype=np.uint8)   # grey + alpha
    np.testing.assert_array_equal(load_image(la).rgb, [[[255] * 3, [40] * 3]])


def test_palette_png_gives_the_palette_colours(tmp_path):
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    pal = [10, 20, 30, 200, 0, 0, 0, 0, 250] + [0] * (256 * 3 - 9)
    im.putpalette(pal)
    p = tmp_path / "p.png"
    im.save(p)
    out = load_image(p).rgb
    expect = np.array(pal[:9], dtype=np.uint8).reshape(3, 3)[idx]
    np.testing.assert_array_equal(out, expect)


def test_palette_png_with_transparent_index(tmp_path):
    idx = np.array([[0, 1]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([10, 20, 30, 1, 2, 3] + [0] * (256 * 3 - 6))
    p = tmp_path / "pt.png"
    im.save(p, transparency=1)
    np.testing.assert_array_equal(load_image(p).rgb, [[[10, 20, 30], [255, 255, 255]]])


def test_16bit_png_is_scaled_to_8_bit(tmp_path):
    g = np.array([[0, 65535, 257 * 100], [257 * 7, 32768, 257]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p).rgb
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255, 100], [7, 128, 1]])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_dark_16bit_png_stays_dark(tmp_path):
    """A 16-bit image is scaled by its bit depth, not by its content: values <= 255 of 65535 are near black."""
    g = np.array([[0, 255], [128, 200]], dtype=np.uint16)
    p = tmp_path / "dark16.png"
    Image.fromarray(g).save(p)
    out = load_image(p).rgb
    np.testing.assert_array_equal(out[:, :, 1], [[0, 1], [0, 1]])


def test_exif_orientation_6_rotates_the_array(tmp_path):
    # stored 16 high x 32 wide: left half red, right half blue; orientation 6 = rotate 90 degrees clockwise to view
    a = np.zeros((16, 32, 3), dtype=np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, quality=95, exif=exif)
    out = load_image(p).rgb
    assert out.shape == (32, 16, 3)
    # after a clockwise quarter turn, the stored left (red) half is on top, the right (blue) half at the bottom
    top, bottom = out[2:14, 2:14].reshape(-1, 3).mean(0), out[18:30, 2:14].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_float_arrays_in_0_1_and_0_255():
    f01 = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    np.testing.assert_array_equal(load_image(f01).rgb, [[[0, 128, 255]]])
    f255 = np.array([[[0.0, 127.6, 300.0]]], dtype=np.float64)
    np.testing.assert_array_equal(load_image(f255).rgb, [[[0, 128, 255]]])


def test_float_array_with_nan_is_refused():
    a = np.zeros((2, 2, 3), dtype=np.float32)
    a[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_image(a)


def test_pil_image_input():
    im = Image.new("RGB", (3, 2), (1, 2, 3))
    out = load_image(im)
    assert out.rgb.shape == (2, 3, 3) and (out.rgb == (1, 2, 3)).all()


def test_bad_array_shapes_and_types_are_refused():
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((2, 2, 5), dtype=np.uint8))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((2, 2, 3, 1), dtype=np.uint8))
    with pytest.raises(InputError, match="empty"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="unsupported image input"):
        load_image(12345)


def test_missing_file_names_the_path(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(InputError, match="no such file") as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="folder") as e:
        load_image(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_corrupt_file_names_the_path(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(InputError, match="not a readable image") as e:
        load_image(p)
    assert str(p) in str(e.value)
    t = tmp_path / "notes.png"
    t.write_text("hello")
    with pytest.raises(InputError, match="notes.png"):
        load_image(t)


def test_truncated_png_is_an_input_error(tmp_path):
    p = tmp_path / "trunc.png"
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    p.write_bytes(full.read_bytes()[:200])
    with pytest.raises(InputError, match="trunc.png"):
        load_image(p)


def test_too_large_image_via_module_limit(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(p)
    monkeypatch.setattr(images, "MAX_PIXELS", 99)
    with pytest.raises(InputError, match="larger than the limit") as e:
        load_image(p)
    assert str(p) in str(e.value) and "10x10" in str(e.value)
    with pytest.raises(InputError, match="larger than the limit"):
        load_image(np.zeros((10, 10, 3), dtype=np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert load_image(p).size == (10, 10)


def test_too_large_image_via_argument(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (10, 10)).save(p)
    with pytest.raises(InputError, match="big.png"):
        load_image(p, max_pixels=50)
