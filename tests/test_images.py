"""The image plugin: loading every kind of file, fitting to a multiple of N, saving back exactly."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import transmute_image
from transmute.cli import cli
from transmute.errors import InputError, PipelineError
from transmute.pipeline import build_from_dict
from transmute.plugins import get_manager
from transmute.signals import Images, ImageSpec
from transmute.stages import ParamError
from transmute_image.stages import FitImages, LoadImages, SaveImages

if transmute_image.__file__ is None:  # pragma: no cover - a set-up problem, not a code one
    pytest.fail("transmute_image imports as a namespace package, so its hooks never register: the editable "
                "install predates plugins/transmute_image/__init__.py; run `.venv/bin/pip install --no-deps -e .`",
                pytrace=False)

PIPELINE = """
[pipeline]
device = "cpu"

[[stage]]
use = "images.load"

[[stage]]
use = "images.fit"
multiple_of = 16
method = "pad"

[[stage]]
use = "images.save"
format = "png"
"""


def noise(h, w, channels=3, seed=0):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * y / max(h - 1, 1), 255 * x / max(w - 1, 1), 128 + 0 * x], -1).round().astype(np.uint8)


def read(path):
    """A decoded image whose file is closed again."""
    with Image.open(path) as image:
        image.load()
    return image


def load(path, **params):
    return LoadImages(**params).load(path)


def run(*args):
    """`transmute run ...` in-process -> (result, {file name: its FAILED line})."""
    result = CliRunner().invoke(cli, ["run", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    return result, {line.split(":")[0].rsplit("/", 1)[-1]: line for line in failed}


@pytest.fixture
def pipeline_file(tmp_path):
    path = tmp_path / "fit.toml"
    path.write_text(PIPELINE)
    return path


# --------------------------------------------------------------------------- loading


def test_stage_module_is_cheap_to_import():
    code = "import sys, transmute_image.stages; print(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_load_rgb_and_grayscale(tmp_path):
    pixels = noise(5, 7)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    signal = load(tmp_path / "rgb.png")
    assert signal.data.dtype == torch.float32 and signal.data.shape == (1, 3, 5, 7)
    assert signal.spec == ImageSpec("RGB", (0.0, 1.0))
    assert signal.names == ["rgb"] and signal.sizes == [(5, 7)] and signal.original_sizes == [(5, 7)]
    assert np.allclose(signal.data[0].permute(1, 2, 0).numpy(), pixels / 255, atol=1e-7)

    gray = noise(4, 3, channels=1)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    as_l = load(tmp_path / "gray.png", mode="L")
    assert as_l.data.shape == (1, 1, 4, 3) and np.allclose(as_l.data[0, 0].numpy(), gray / 255, atol=1e-7)
    as_rgb = load(tmp_path / "gray.png")
    assert as_rgb.data.shape == (1, 3, 4, 3) and torch.equal(as_rgb.data[:, :1].expand(-1, 3, -1, -1), as_rgb.data)


def test_load_rgba_and_la_keep_or_drop_alpha(tmp_path):
    pixels = noise(4, 4, channels=4)
    Image.fromarray(pixels).save(tmp_path / "rgba.png")
    rgba = load(tmp_path / "rgba.png", mode="RGBA")
    assert rgba.data.shape == (1, 4, 4, 4) and np.allclose(rgba.data[0].permute(1, 2, 0).numpy(), pixels / 255)
    assert torch.equal(load(tmp_path / "rgba.png").data, rgba.data[:, :3])

    Image.fromarray(noise(3, 3, channels=2)).save(tmp_path / "la.png")
    assert load(tmp_path / "la.png", mode="L").data.shape == (1, 1, 3, 3)


def test_load_palette_with_transparency(tmp_path):
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1, 1, 0, 1, 1])
    image.save(tmp_path / "p.png", transparency=0)
    rgba = load(tmp_path / "p.png", mode="RGBA").data[0]
    assert rgba[3].tolist() == [[0, 1, 1], [0, 1, 1]]
    assert rgba[:3, 0, 1].tolist() == [0, 0, 1]
    assert load(tmp_path / "p.png").data.shape == (1, 3, 2, 3)


def test_load_cmyk_and_float(tmp_path):
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = load(tmp_path / "cmyk.jpg").data[0, :, 0, 0]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1

    Image.fromarray(np.array([[0.0, 51.0, 255.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.allclose(load(tmp_path / "f.tif", mode="L").data[0, 0].numpy(), [[0, 0.2, 1]], atol=1e-7)


def test_16_bit_grayscale_keeps_every_bit(tmp_path):
    values = np.array([[0, 1, 1000], [32768, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert read(tmp_path / "deep.png").mode.startswith("I")
    signal = load(tmp_path / "deep.png", mode="L")
    assert abs(float(signal.data[0, 0, 0, 2]) - 1000 / 65535) < 1e-6
    assert np.allclose(signal.data[0, 0].numpy(), values / 65535, atol=1e-7, rtol=0)
    assert np.allclose(load(tmp_path / "deep.png").data[0].numpy(), values / 65535, atol=1e-7, rtol=0)

    saver = SaveImages(bit_depth=16)
    saver.save(signal, tmp_path / "back.part")
    back = read(tmp_path / "back.part")
    assert back.format == "PNG" and np.array_equal(np.asarray(back), values)


def _png16(path, values, colour_type):
    """A 16-bit PNG written by hand (Pillow writes 16 bits only for grayscale): 2 = RGB, 6 = RGBA."""
    import struct
    import zlib

    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6)])
def test_16_bit_rgb_and_rgba_png_load_at_8_bit_precision(tmp_path, channels, colour_type):
    # Pillow opens a 16-bit colour PNG as 8-bit RGB(A), keeping each value's high byte: the colours are
    # right to 1/255, and the alpha comes through.
    values = np.random.default_rng(0).integers(0, 65536, (3, 5, channels))
    values[0, 0] = 65535
    _png16(tmp_path / "deep.png", values, colour_type)
    signal = load(tmp_path / "deep.png", mode="RGBA")
    expected = np.concatenate([values / 65535, np.ones((3, 5, 4 - channels))], -1)
    assert np.abs(signal.data[0].permute(1, 2, 0).numpy() - expected).max() <= 1 / 255 + 1e-6
    assert signal.data[0, :, 0, 0].tolist() == [1.0] * 4


def test_load_la_as_rgba_keeps_its_alpha(tmp_path):
    la = noise(3, 4, channels=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    rgba = load(tmp_path / "la.png", mode="RGBA").data[0].numpy()
    assert np.allclose(rgba[3], la[..., 1] / 255) and all(np.allclose(rgba[c], la[..., 0] / 255) for c in range(3))


def test_load_gif_palette_transparency_as_alpha(tmp_path):
    image = Image.new("P", (4, 3))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putdata([0, 1] * 6)
    image.save(tmp_path / "p.gif", transparency=1)
    assert load(tmp_path / "p.gif", mode="RGBA").data[0, 3].tolist() == [[1, 0, 1, 0]] * 3


def test_exif_orientation_turns_the_pixels(tmp_path):
    values = (np.arange(6, dtype=np.uint8) * 40).reshape(2, 3)
    image = Image.fromarray(values)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.png", exif=exif)  # PNG: lossless, so the pixels can be compared
    turned = load(tmp_path / "rotated.png", mode="L").data[0, 0].numpy() * 255
    assert np.array_equal(turned.round(), np.rot90(values, -1))


def test_value_range_minus_one_to_one(tmp_path):
    Image.fromarray(np.array([[0, 255], [51, 204]], dtype=np.uint8)).save(tmp_path / "g.png")
    signal = load(tmp_path / "g.png", mode="L", value_range=[-1, 1])
    assert signal.spec.value_range == (-1.0, 1.0)
    assert np.allclose(signal.data[0, 0].numpy(), [[-1, 1], [-0.6, 0.6]], atol=1e-6)
    SaveImages().save(signal, tmp_path / "back.part")
    assert np.array_equal(np.asarray(read(tmp_path / "back.part")), [[0, 255], [51, 204]])


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(noise(2, 3))
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif)
    signal = load(tmp_path / "rotated.jpg")
    assert signal.sizes == [(3, 2)] and signal.original_sizes == [(3, 2)]


@pytest.mark.parametrize("content, reason", [
    (b"this is not an image\n", "not a readable image (cannot identify image file)"),
    (b"", "not a readable image (cannot identify image file)"),
])
def test_unreadable_file_is_one_line_input_error(tmp_path, content, reason):
    (tmp_path / "fake.png").write_bytes(content)
    with pytest.raises(InputError) as caught:
        load(tmp_path / "fake.png")
    assert str(caught.value) == reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_refused(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(noise(64, 64)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match="^image file is truncated$"):
        load(path)


def test_bad_parameters_are_refused_before_running():
    with pytest.raises(ParamError, match="value_range"):
        LoadImages(value_range=[1, 0])
    with pytest.raises(ParamError, match="value_range"):
        LoadImages(value_range=[0, 1, 2])
    with pytest.raises(ParamError, match="bit_depth"):
        SaveImages(format="jpeg", bit_depth=16)
    with pytest.raises(ParamError, match="multiple_of"):
        FitImages(multiple_of=0)
    doc = {"stage": [{"use": "images.load"}, {"use": "images.save", "bit_depth": 16}]}
    with pytest.raises(PipelineError, match="bit_depth 16 needs single-channel images, got mode RGB"):
        build_from_dict(doc, get_manager().registry)
    doc["stage"][0]["mode"] = "L"
    assert build_from_dict(doc, get_manager().registry).specs[-1] == ImageSpec("L", (0.0, 1.0))


# --------------------------------------------------------------------------- fitting


def _batch(*sizes):
    items = [Images(torch.rand(1, 3, h, w)) for h, w in sizes]
    for i, item in enumerate(items):
        item.names = [f"item{i}"]
    return Images.collate(items)


def test_fit_pad_keeps_content_and_sizes():
    batch = _batch((37, 53), (1, 1), (64, 64))
    for pad_mode in ("reflect", "replicate", "constant"):
        out = FitImages(multiple_of=16, pad_mode=pad_mode).process(batch)
        assert out.data.shape == (3, 3, 64, 64)
        assert out.sizes == batch.sizes and out.original_sizes == batch.original_sizes
        for before, after in zip(batch.items(), out.items()):
            assert torch.equal(before.data, after.data)
    reflect = FitImages(multiple_of=16).process(batch).data[0]
    assert torch.equal(reflect[:, 37:48, :53], batch.data[0, :, 25:36, :53].flip(1))  # mirrored about row 36
    assert torch.equal(FitImages(multiple_of=16).process(batch).data[1, :, :16, :16],
                       batch.data[1, :, :1, :1].expand(3, 16, 16))  # 1x1: replicate


def test_fit_resize_rounds_to_nearest_multiple():
    batch = _batch((37, 53), (1, 1), (64, 64))
    out = FitImages(multiple_of=16, method="resize").process(batch)
    assert out.sizes == [(32, 48), (16, 16), (64, 64)]
    assert out.original_sizes == [(37, 53), (1, 1), (64, 64)]
    assert torch.equal(out.items()[2].data, batch.items()[2].data)  # already a multiple: untouched


# --------------------------------------------------------------------------- running folders


@pytest.fixture
def odd_sizes(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(noise(37, 53, seed=1)).save(src / "odd.png")
    Image.fromarray(noise(1, 1, seed=2)).save(src / "dot.png")
    Image.fromarray(noise(64, 64, seed=3)).save(src / "sub" / "square.png")
    Image.fromarray(noise(20, 9, seed=4)).save(src / "thin.bmp")
    return src


def _outputs(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _same_pixels(a, b):
    return np.array_equal(np.asarray(read(a).convert("RGB")), np.asarray(read(b).convert("RGB")))


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_pad_round_trip_is_pixel_exact_and_batch_independent(odd_sizes, pipeline_file, tmp_path, pad_mode):
    batched, single = tmp_path / "batched", tmp_path / "single"
    setting = ["--set", f"fit.pad_mode={pad_mode}"]
    assert run(pipeline_file, odd_sizes, "-o", batched, *setting)[0].exit_code == 0
    assert run(pipeline_file, odd_sizes, "-o", single, "--batch-size", "1", *setting)[0].exit_code == 0
    assert _outputs(batched) == ["dot.png", "odd.png", "sub/square.png", "thin.png"]
    for name in _outputs(batched):
        source = next(odd_sizes.glob(name.rsplit(".", 1)[0] + ".*"))
        assert _same_pixels(batched / name, source), name
        assert (batched / name).read_bytes() == (single / name).read_bytes(), name


def test_resize_round_trip_restores_sizes(tmp_path, pipeline_file):
    src = tmp_path / "in"
    src.mkdir()
    for name, (h, w) in {"odd": (37, 53), "dot": (1, 1), "square": (64, 64), "wide": (30, 90)}.items():
        Image.fromarray(gradient(h, w)).save(src / f"{name}.png")
    out = tmp_path / "out"
    result, _ = run(pipeline_file, src, "-o", out, "--set", "fit.method=resize")
    assert result.exit_code == 0, result.output
    for path in src.iterdir():
        before = np.asarray(read(path), dtype=np.float64)
        after = np.asarray(read(out / path.name), dtype=np.float64)
        assert after.shape == before.shape, path.name
        assert np.abs(after - before).mean() < 3, path.name
    assert _same_pixels(out / "square.png", src / "square.png")


def test_bad_files_fail_alone_and_a_rerun_skips_what_was_written(tmp_path, pipeline_file):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise(37, 53)).save(src / "good.png")
    Image.fromarray(noise(20, 30)).save(src / "photo.jpg", quality=90)
    (src / "notes.txt").write_text("not an image")
    (src / "fake.png").write_text("not an image either")
    for name, fmt in (("cut.png", "PNG"), ("broken.jpg", "JPEG")):
        Image.fromarray(noise(64, 64)).save(src / name, format=fmt)
        data = (src / name).read_bytes()
        (src / name).write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "out"

    result, failed = run(pipeline_file, src, "-o", out)
    assert result.exit_code == 1
    assert sorted(failed) == ["broken.jpg", "cut.png", "fake.png"]
    assert failed["fake.png"].endswith(": not a readable image (cannot identify image file)")
    assert failed["cut.png"].endswith(": image file is truncated")
    assert failed["broken.jpg"].endswith(": image file is truncated")
    for name, line in failed.items():
        assert line.count(name) == 1, line  # the path once, from the runner
    assert "2 written, 0 skipped (already there), 3 failed, 1 ignored" in result.output
    assert _outputs(out) == ["good.png", "photo.png"]  # nothing half-written, no .part left behind

    again, failed_again = run(pipeline_file, src, "-o", out)
    assert again.exit_code == 1 and sorted(failed_again) == sorted(failed)
    assert "0 written, 2 skipped (already there), 3 failed" in again.output
    assert _outputs(out) == ["good.png", "photo.png"]


# --------------------------------------------------------------------------- saving


def test_jpeg_of_rgba_composites_on_white(tmp_path, pipeline_file):
    src = tmp_path / "in"
    src.mkdir()
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0, 255)  # opaque red | fully transparent (black) right half
    Image.fromarray(pixels).save(src / "rgba.png")
    out = tmp_path / "out"
    result, _ = run(pipeline_file, src, "-o", out, "--set", "load.mode=RGBA", "--set", "save.format=jpeg")
    assert result.exit_code == 0, result.output
    saved = read(out / "rgba.jpg")
    assert saved.format == "JPEG" and saved.mode == "RGB" and saved.size == (16, 16)
    array = np.asarray(saved, dtype=np.int64)
    assert np.abs(array[4:12, 1:5] - [255, 0, 0]).max() < 12
    assert np.abs(array[4:12, 11:15] - [255, 255, 255]).max() < 12


def test_webp_and_suffixes(tmp_path):
    assert [SaveImages(format=f).suffix() for f in ("png", "jpeg", "webp")] == [".png", ".jpg", ".webp"]
    signal = Images(torch.rand(1, 4, 8, 8), ImageSpec("RGBA"))
    SaveImages(format="webp", quality=80).save(signal, tmp_path / "x.webp.part")
    saved = read(tmp_path / "x.webp.part")
    assert saved.format == "WEBP" and saved.size == (8, 8)


def test_pillows_pixel_limit_is_restored_only_when_the_last_overlapping_load_ends():
    # Loads run on several threads: one that ends must not switch Pillow's check back on under another.
    from PIL import Image
    from transmute_image.stages import _own_pixel_limit

    before = Image.MAX_IMAGE_PIXELS
    first, second = _own_pixel_limit(), _own_pixel_limit()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS is None
    second.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == before
