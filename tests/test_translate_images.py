"""Image translation: transmute.imaging around a network, torchrun sharding, the translate-images command."""

import numpy as np
import pytest
import torch

from transmute.imaging import apply_image_network
from transmute.signals import Images, ImageSpec


def batch(*sizes, channels=3, value_range=(0.0, 1.0), mode=None, seed=0):
    """Images of these (h, w), collated (padded to the largest), random values in value_range."""
    generator = torch.Generator().manual_seed(seed)
    low, high = value_range
    spec = ImageSpec(mode or {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels], value_range)
    items = [Images(low + (high - low) * torch.rand(1, channels, h, w, generator=generator), spec, [f"im{i}"])
             for i, (h, w) in enumerate(sizes)]
    return Images.collate(items)


def conv_net(channels=3):
    """A fixed 3x3 convolution with a tanh: a network whose border handling matters."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
        conv.bias.zero_()
    return lambda x: torch.tanh(conv(x))


def half(x):
    return x * 0.5


def test_value_range_goes_to_minus_one_one_and_back():
    images = batch((5, 7))
    out = apply_image_network(images, lambda x: -x)
    torch.testing.assert_close(out.data, 1 - images.data, atol=1e-6, rtol=0)
    assert out.spec == ImageSpec("RGB", (0.0, 1.0)) and out.names == images.names and out.sizes == images.sizes

    seen = []
    wide = batch((4, 4), value_range=(-1.0, 1.0))
    out = apply_image_network(wide, lambda x: seen.append(x.clone()) or x)
    torch.testing.assert_close(seen[0], wide.data, atol=1e-6, rtol=0)  # already in the network's range
    torch.testing.assert_close(out.data, wide.data, atol=1e-6, rtol=0)


def test_alpha_is_kept_exactly_and_transparent_pixels_are_composited_on_white():
    images = batch((6, 9), channels=4)
    images.data[0, 3, 0, :] = 0  # a transparent row
    seen = []
    out = apply_image_network(images, lambda x: seen.append(x.clone()) or -x)
    assert out.spec.mode == "RGBA" and out.data.shape == images.data.shape
    assert torch.equal(out.data[:, 3], images.data[:, 3])
    assert torch.all(seen[0][0, :, 0, :] == 1.0)  # white, in the network's [-1, 1]
    alpha = images.data[0, 3:]
    composited = images.data[0, :3] * alpha + (1 - alpha)
    torch.testing.assert_close(out.data[0, :3], 1 - composited, atol=1e-6, rtol=0)

    black = apply_image_network(images, half, background=0.0)
    torch.testing.assert_close(black.data[0, :3, 0, :], torch.full((3, 9), 0.25), atol=1e-6, rtol=0)


def test_grayscale_becomes_rgb_for_an_rgb_network():
    gray = batch((5, 6), channels=1)
    out = apply_image_network(gray, lambda x: x)
    assert out.spec.mode == "RGB" and out.data.shape == (1, 3, 5, 6)
    for c in range(3):
        torch.testing.assert_close(out.data[:, c], gray.data[:, 0], atol=1e-6, rtol=0)
    la = apply_image_network(batch((5, 6), channels=2), lambda x: x)
    assert la.spec.mode == "RGBA" and la.data.shape == (1, 4, 5, 6)


def test_a_one_channel_network_gets_luminance():
    rgb = batch((3, 4))
    out = apply_image_network(rgb, lambda x: x, channels=1)
    luma = 0.299 * rgb.data[:, 0] + 0.587 * rgb.data[:, 1] + 0.114 * rgb.data[:, 2]
    assert out.spec.mode == "L"
    torch.testing.assert_close(out.data[:, 0], luma, atol=1e-6, rtol=0)


def test_tiles_of_a_pointwise_network_equal_the_whole_image():
    images = batch((300, 500))
    calls = []

    def net(x):
        calls.append(tuple(x.shape))
        return half(x)

    whole = apply_image_network(images, half)
    tiled = apply_image_network(images, net, tile=128, overlap=32, max_batch=4)
    torch.testing.assert_close(tiled.data, whole.data, atol=1e-4, rtol=0)
    assert all(shape[0] <= 4 and shape[2:] == (128, 128) for shape in calls)
    assert sum(shape[0] for shape in calls) == 3 * 5  # rows 0, 96, 172; columns 0, 96, 192, 288, 372


def test_tiles_of_a_convolution_show_no_seams():
    images = batch((200, 260))
    net = conv_net()
    whole = apply_image_network(images, net)
    tiled = apply_image_network(images, net, tile=64, overlap=16)
    # A tile's border pixels see its padding, not their neighbours; the blend gives them no weight.
    torch.testing.assert_close(tiled.data, whole.data, atol=1e-5, rtol=0)


def test_a_big_image_round_trips_through_an_identity_network():
    images = batch((1030, 1290))
    out = apply_image_network(images, lambda x: x, tile=256, overlap=32, max_batch=8)
    torch.testing.assert_close(out.data, images.data, atol=1e-5, rtol=0)


def test_padding_to_a_multiple_is_cropped_back_exactly():
    images = batch((300, 500), (7, 3))
    shapes = []

    def net(x):
        shapes.append(tuple(x.shape[2:]))
        assert x.shape[2] % 256 == 0 and x.shape[3] % 256 == 0
        return half(x)

    out = apply_image_network(images, net, multiple=256)
    assert sorted(shapes) == [(256, 256), (512, 512)]
    assert out.data.shape == images.data.shape and out.sizes == [(300, 500), (7, 3)]
    for item, original in zip(out.items(), images.items()):
        torch.testing.assert_close(item.data, (original.data * 2 - 1) * 0.25 + 0.5, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tile", [0, 48])
def test_an_item_gives_the_same_alone_or_in_a_batch_of_other_sizes(tile):
    images = batch((40, 70), (65, 33), (17, 90), channels=4)
    net = conv_net()
    together = apply_image_network(images, net, multiple=8, tile=tile, overlap=8, max_batch=3).items()
    for item, batched in zip(images.items(), together):
        alone = apply_image_network(item, net, multiple=8, tile=tile, overlap=8).items()[0]
        assert alone.data.shape == batched.data.shape
        torch.testing.assert_close(batched.data, alone.data, atol=1e-5, rtol=0)


def test_a_network_that_changes_the_shape_is_named():
    with pytest.raises(ValueError, match=r"returned shape \(1, 3, 2, 2\) for input \(1, 3, 4, 4\)"):
        apply_image_network(batch((4, 4)), lambda x: x[:, :, :2, :2])
    with pytest.raises(ValueError, match="overlap"):
        apply_image_network(batch((4, 4)), half, tile=16, overlap=16)


def test_the_tile_windows_sum_to_one():
    from transmute.imaging import _spans

    for length, tile, overlap in ((500, 128, 32), (300, 128, 32), (228, 128, 32), (260, 64, 0), (100, 40, 3)):
        total = torch.zeros(length)
        for span in _spans(length, tile, overlap):
            total[span.slice] += span.weights("cpu")
        torch.testing.assert_close(total, torch.ones(length), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow  # three interpreters importing torch, twice
def test_torchrun_ranks_share_the_inputs_and_rank_0_sums_them_up(tmp_path, run_python):
    import os
    import sys

    from PIL import Image

    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    for i in range(10):
        folder = source / "sub" if i % 3 == 0 else source
        Image.fromarray(np.full((4 + i, 5, 3), 20 * i, np.uint8)).save(folder / f"im{i}.png")
    (source / "bad.png").write_text("not an image")
    pipeline = tmp_path / "copy.toml"
    pipeline.write_text('[pipeline]\ndevice = "cpu"\nbatch_size = 2\n[[stage]]\nuse = "images.load"\n'
                        '[[stage]]\nuse = "images.save"\n')
    out = tmp_path / "out"
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "transmute", "run",
               pipeline, source, "-o", out]
    path = [p for p in sys.path if p]  # the venv's plugins and transmute, as the test process sees them
    env = {"OMP_NUM_THREADS": "1", "PATH": os.environ.get("PATH", "")}
    first = run_python(command, path, env)
    again = run_python(command, path, env)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([f"sub/im{i}.png" if i % 3 == 0 else f"im{i}.png" for i in range(10)])
    for i in range(10):  # each file is its own input's, not another's
        found = Image.open(out / ("sub" if i % 3 == 0 else "") / f"im{i}.png")
        assert found.size == (5, 4 + i) and found.getpixel((0, 0)) == (20 * i,) * 3
    for result, summary in ((first, "copy: 10 written, 0 skipped (already there), 1 failed"),
                            (again, "copy: 0 written, 10 skipped (already there), 1 failed")):
        lines = result.stderr.splitlines()
        assert result.returncode == 1, result.stderr  # rank 0's status: an input failed
        assert [line for line in lines if line.startswith("copy: ")] == [
            f"{summary} -> {out} (2 processes, device cpu)"], result.stderr
        assert [line for line in lines if line.startswith("FAILED")] == [
            f"FAILED {source / 'bad.png'}: not a readable image (cannot identify image file)"]


# --------------------------------------------------------------------------- translate-images

import types  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from transmute.cli import cli  # noqa: E402
from transmute.errors import PipelineError  # noqa: E402
from transmute.stages import Param, Stage  # noqa: E402


def _family(name: str, with_direction: bool, tmp_path):
    """A plugin module like pix2pix's or cyclegan's: a NAME.translate stage and a built-in NAME-model."""
    from transmute.checkpoint import Checkpoint, read_metadata, resolve_model, save_checkpoint
    from transmute.hookspecs import hookimpl

    class Translate(Stage):
        """Negates in the network's [-1, 1] (AtoB) or halves (BtoA); needs a checkpoint of its family."""

        consumes = Images
        produces = Images
        params = {"model": Param(str, f"{name}-model", "checkpoint or model name"),
                  "tile": Param(int, 0, "tile size", min=0)}
        if with_direction:
            params["direction"] = Param(str, "AtoB", "AtoB or BtoA", choices=("AtoB", "BtoA"))

        def check(self, incoming):
            if incoming.value_range != (-1.0, 1.0):
                raise PipelineError("needs value_range [-1, 1]")
            return ImageSpec("RGBA" if incoming.mode in ("LA", "RGBA") else "RGB", incoming.value_range)

        def setup(self, device):
            super().setup(device)
            assert read_metadata(resolve_model(self.model))["plugin"] == name
            self.net = half if getattr(self, "direction", "AtoB") == "BtoA" else (lambda x: -x)

        def process(self, signal):
            return apply_image_network(signal, self.net, multiple=4, tile=self.tile, overlap=4)

    Translate.name = f"{name}.translate"
    checkpoint = save_checkpoint(tmp_path / f"{name}.safetensors", Checkpoint(
        {"w": torch.zeros(1)}, plugin=name, model="generator", version="1.0"))
    module = types.ModuleType(f"transmute_{name}")
    module.register_stages = hookimpl(lambda register: register(Translate))
    module.register_models = hookimpl(lambda register: register(f"{name}-model", checkpoint, "a test model"))
    return module


@pytest.fixture
def families(tmp_path):
    """Two test families installed beside the built-in plugins: testcg (two directions), testp2p (one)."""
    from transmute.plugins import Manager, reset_manager

    manager = Manager(only={"images", "pipelines", "testcg", "testp2p"})
    manager.add(_family("testcg", True, tmp_path), "testcg")
    manager.add(_family("testp2p", False, tmp_path), "testp2p")
    manager.load_entry_points()
    reset_manager(manager)
    yield manager
    reset_manager()


def translate(*args):
    result = CliRunner().invoke(cli, ["translate-images", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def rgba_noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_the_shipped_pipeline_carries_alpha_in_the_generators_range():
    from transmute.pipeline import read_pipeline

    doc, path = read_pipeline("image-translation")
    load, step, save = doc["stage"]
    assert path.name == "image-translation.toml"
    assert (load["use"], load["mode"], load["value_range"]) == ("images.load", "RGBA", [-1, 1])
    assert (step["use"], step["name"], step["model"]) == ("pix2pix.translate", "translate", "openmoji-color")
    assert (save["use"], save["format"]) == ("images.save", "png")


def test_translate_images_mirrors_folders_keeps_alpha_and_resumes(tmp_path, families):
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    rgba = rgba_noise(9, 13)
    Image.fromarray(rgba).save(source / "a.png")
    gray = np.random.default_rng(1).integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(gray).save(source / "sub" / "b.png")
    Image.fromarray(rgba[..., :3]).save(source / "sub" / "c.jpg", quality=95)
    (source / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"

    first = translate("--model", "testp2p-model", source, "-o", out, "-q")
    assert first.exit_code == 1, first.output  # the broken file fails; the others are written
    lines = first.output.splitlines()
    assert [line for line in lines if line.startswith("FAILED")] == [
        f"FAILED {source / 'broken.png'}: not a readable image (cannot identify image file)"]
    assert lines[-1].startswith("image-translation: 3 written, 0 skipped (already there), 1 failed")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.png", "sub", "sub/b.png",
                                                                              "sub/c.png"]
    a = np.asarray(Image.open(out / "a.png"))
    assert Image.open(out / "a.png").mode == "RGBA" and np.array_equal(a[..., 3], rgba[..., 3])
    opaque = rgba[..., 3] == 255
    composited = (rgba[..., :3] * (rgba[..., 3:] / 255) + 255 * (1 - rgba[..., 3:] / 255))
    assert np.abs(a[..., :3].astype(float) - (255 - composited)).max() <= 1  # on white, then negated
    assert np.array_equal(a[opaque][:, :3], 255 - rgba[opaque][:, :3])
    # Grayscale in, colour out. The pipeline loads everything as RGBA to carry alpha where there is
    # some; images.save writes an alpha channel only where it says something, so an opaque image is RGB.
    b = Image.open(out / "sub" / "b.png")
    assert b.mode == "RGB" and b.size == (5, 6)
    assert np.array_equal(np.asarray(b), np.repeat(255 - gray[..., None], 3, axis=-1))

    (out / "sub" / "b.png").unlink()  # as if the run had been stopped before it
    again = translate("--model", "testp2p-model", source, "-o", out, "-q")
    assert again.output.splitlines()[-1].startswith(
        "image-translation: 1 written, 2 skipped (already there), 1 failed")
    forced = translate("--model", "testp2p-model", "--overwrite", source / "a.png", "-o", out, "-q")
    assert forced.exit_code == 0 and forced.output.splitlines()[-1].startswith(
        "image-translation: 1 written, 0 skipped (already there), 0 failed")


def test_the_models_family_chooses_the_stage_and_its_direction(tmp_path, families):
    Image.fromarray(rgba_noise(8, 8)[..., :3]).save(tmp_path / "x.png")
    pixels = np.asarray(Image.open(tmp_path / "x.png")).astype(float)
    checkpoint = tmp_path / "testcg.safetensors"  # by path: its metadata names the family
    for direction, expected in (("AtoB", 255 - pixels), ("BtoA", 0.5 * pixels + 63.75)):
        out = tmp_path / direction
        result = translate("--model", checkpoint, "--direction", direction, tmp_path / "x.png", "-o", out)
        assert result.exit_code == 0, result.output
        assert np.abs(np.asarray(Image.open(out / "x.png"))[..., :3].astype(float) - expected).max() <= 0.5

    one_way = translate("--model", "testp2p-model", "--direction", "BtoA", tmp_path / "x.png", "-o", tmp_path / "o")
    assert one_way.exit_code == 1 and one_way.output.count("\n") == 1
    assert "Error: --direction BtoA: model testp2p-model is a testp2p model, which translates one way only" \
        in one_way.output
    assert translate("--model", "testp2p-model", "--direction", "AtoB", tmp_path / "x.png", "-o",
                     tmp_path / "o").exit_code == 0

    unknown = translate("--model", "no-such", tmp_path / "x.png", "-o", tmp_path / "o")
    assert unknown.exit_code == 1 and unknown.output == (
        "Error: model 'no-such': no such checkpoint file, and no installed plugin ships a model of that name "
        "(built-in models: testcg-model, testp2p-model)\n")


def test_tiles_from_the_command_line_give_the_same_pixels(tmp_path, families):
    Image.fromarray(rgba_noise(37, 51)).save(tmp_path / "big.png")
    for tile in ("0", "16"):
        result = translate("--model", "testcg-model", "--tile", tile, tmp_path / "big.png", "-o", tmp_path / tile)
        assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "0" / "big.png")),
                          np.asarray(Image.open(tmp_path / "16" / "big.png")))
