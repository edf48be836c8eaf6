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
