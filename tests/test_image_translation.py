"""Image translation: the data layouts, pix2pix and CycleGAN training (tiny presets), their networks."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transmute.checkpoint import load_checkpoint
from transmute.cli import cli
from transmute.errors import TransmuteError
from transmute.imagedata import Augment, PairedImages, paired_split, read_rgb, split_aligned, unpaired_split


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def shape_pair(i: int, size: int = 32):
    """A black outline of a box (A) and the same box filled with a colour (B), on white."""
    rng = np.random.default_rng(i)
    a = np.full((size, size, 3), 255, np.uint8)
    top, left = rng.integers(2, size // 2, 2)
    bottom, right = top + rng.integers(6, size // 2), left + rng.integers(6, size // 2)
    b = a.copy()
    b[top:bottom, left:right] = rng.integers(0, 255, 3)
    a[top:bottom, left:right] = 0
    a[top + 1 : bottom - 1, left + 1 : right - 1] = 255
    return a, b


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """One root with every layout: aligned train/ and test/, trainA/trainB/ (same names), plain A/ and B/."""
    root = tmp_path_factory.mktemp("images")
    for split, count in (("train", 8), ("test", 3)):
        for sub in (split, f"{split}A", f"{split}B"):
            (root / sub).mkdir()
        for i in range(count):
            a, b = shape_pair(i if split == "train" else 100 + i)
            Image.fromarray(np.concatenate([a, b], axis=1)).save(root / split / f"{i:02d}.png")
            Image.fromarray(a).save(root / f"{split}A" / f"{i:02d}.png")
            Image.fromarray(b).save(root / f"{split}B" / f"{i:02d}.png")
    return root


# ---------------------------------------------------------------- data layouts

def test_every_layout_gives_the_same_pairs(image_data):
    aligned = paired_split(image_data, "train")
    assert [p.name for p in aligned] == [f"{i:02d}" for i in range(8)] and aligned[0].b is None
    matched = paired_split(image_data / "nothing-here-but", "train", image_data / "trainA", image_data / "trainB")
    assert [p.name for p in matched] == [p.name for p in aligned]
    (left, right), (a, b) = split_aligned(read_rgb(aligned[3].a)), (read_rgb(matched[3].a), read_rgb(matched[3].b))
    assert np.array_equal(left, a) and np.array_equal(right, b)
    # Only trainA/trainB there (no train/): paired by name.
    sub = image_data / "only-unaligned"
    sub.mkdir()
    for side in "AB":
        (sub / f"train{side}").symlink_to(image_data / f"train{side}")
    assert [p.name for p in paired_split(sub)] == [p.name for p in aligned]
    files = unpaired_split(image_data)
    assert len(files["a"]) == len(files["b"]) == 8


def test_layout_problems_are_one_line(image_data, tmp_path):
    with pytest.raises(TransmuteError, match="no val images found; expected val/"):
        paired_split(image_data, "val")
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "A" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "B" / "y.png")
    with pytest.raises(TransmuteError, match="no file names in common"):
        paired_split(None, "train", tmp_path / "A", tmp_path / "B")
    with pytest.raises(TransmuteError, match="trainA/ and .*trainB/"):
        unpaired_split(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(TransmuteError, match="bad.png: not a readable image"):
        read_rgb(tmp_path / "bad.png")


def test_augmentation_crops_pairs_alike_and_pads_small_images_with_white():
    rng = np.random.default_rng(0)
    a = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    for _ in range(10):
        x, y = Augment(32, 36)([a, a.copy()], rng)
        assert x.shape == (3, 32, 32) and torch.equal(x, y)
    small = np.zeros((10, 20, 3), np.uint8)
    (out,) = Augment(32, 0, flip=False)([small], rng)
    assert out.shape == (3, 32, 32) and float(out[:, :10, :20].max()) == -1 and float(out[:, 10:].min()) == 1


def test_transparency_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.save(tmp_path / "t.png")
    rgb = read_rgb(tmp_path / "t.png")
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_btoa_swaps_the_halves(image_data):
    pairs = paired_split(image_data)
    a, b = PairedImages(pairs, Augment(32), "AtoB").read(0)
    b2, a2 = PairedImages(pairs, Augment(32), "BtoA").read(0)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


# ---------------------------------------------------------------- networks

def test_unet_depth_follows_the_image_size_and_matches_the_paper():
    from transmute_pix2pix.networks import UNet, count_parameters, depth_for

    assert [depth_for(s) for s in (256, 128, 64)] == [8, 7, 6]
    net = UNet(width=64, depth=8)
    assert round(count_parameters(net) / 1e6, 1) == 54.4  # the paper's 256x256 generator
    small = UNet(width=8, depth=5).eval().requires_grad_(False)
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    y = small(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1
    # Each image's output is its own: alone or in a batch, the same.
    assert torch.allclose(small(x[:1]), y[:1], atol=1e-5)


def test_resnet_generator_matches_the_paper():
    from transmute_cyclegan.networks import ResnetGenerator, blocks_for, count_parameters

    assert [blocks_for(s) for s in (256, 128, 64)] == [9, 6, 6]
    assert round(count_parameters(ResnetGenerator(width=64, blocks=9)) / 1e6, 2) == 11.37
    net = ResnetGenerator(width=4, blocks=2).eval()
    x = torch.rand(1, 3, 20, 28) * 2 - 1
    assert net(x).shape == x.shape


# ---------------------------------------------------------------- training

RUN = ("--preset", "tiny", "--steps", "8", "--checkpoint-every", "4", "--sample-every", "8", "--hparam",
       "decay_from=4")


@pytest.fixture(scope="session")
def pix2pix_model(image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2p") / "run"
    result = invoke("train", "pix2pix", "--data", image_data, "--out", out, *RUN)
    assert result.exit_code == 0, result.output
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def cyclegan_model(image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cg") / "run"
    result = invoke("train", "cyclegan", "--data", image_data, "--out", out, "--name-a", "outline",
                    "--name-b", "filled", *RUN)
    assert result.exit_code == 0, result.output
    return out / "model.safetensors"


def test_pix2pix_training_writes_model_samples_and_log(pix2pix_model):
    run = pix2pix_model.parent
    ckpt = load_checkpoint(pix2pix_model, plugin="pix2pix", model="generator", version="1.0")
    assert ckpt.hparams["depth"] == 5 and ckpt.spec().mode == "RGB"
    assert all(t.dtype == torch.float16 for t in ckpt.tensors.values())
    grid = Image.open(run / "samples" / "step0000008.png")
    assert grid.width >= 3 * 32 and grid.height >= 4 * 32  # input | output | target, four pairs
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [4, 8] and all(np.isfinite(line["l1"]) for line in log)


def test_pix2pix_resume_with_workers_matches_an_uninterrupted_run(pix2pix_model, image_data, tmp_path):
    half = ("--steps", "4", *RUN[4:])
    assert invoke("train", "pix2pix", "--data", image_data, "--out", tmp_path / "split", "--preset", "tiny", *half,
                  "--workers", "2").exit_code == 0
    result = invoke("train", "pix2pix", "--data", image_data, "--out", tmp_path / "split", *RUN, "--resume")
    assert result.exit_code == 0, result.output
    a, b = load_checkpoint(pix2pix_model).tensors, load_checkpoint(tmp_path / "split" / "model.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cyclegan_keeps_both_directions_and_resumes_exactly_with_its_history(cyclegan_model, image_data, tmp_path):
    ckpt = load_checkpoint(cyclegan_model, plugin="cyclegan", model="generators", version="1.0")
    assert {k.split("/")[0] for k in ckpt.tensors} == {"AtoB", "BtoA"}
    assert ckpt.extra["domains"] == {"A": "outline", "B": "filled"}
    state = load_checkpoint(cyclegan_model.parent / "checkpoints" / "last.safetensors")
    assert int(state.tensors["model/pool_a/count"]) == 4  # the pool (size 4 in tiny) is in the checkpoint
    assert Image.open(cyclegan_model.parent / "samples" / "step0000008.png").height >= 6 * 32
    half = ("--steps", "4", *RUN[4:])
    names = ("--name-a", "outline", "--name-b", "filled")
    assert invoke("train", "cyclegan", "--data", image_data, "--out", tmp_path / "split", "--preset", "tiny",
                  *half, *names).exit_code == 0
    result = invoke("train", "cyclegan", "--data", image_data, "--out", tmp_path / "split", *RUN, *names, "--resume")
    assert result.exit_code == 0, result.output
    a, b = ckpt.tensors, load_checkpoint(tmp_path / "split" / "model.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_options_are_checked_before_reading_data(image_data, tmp_path):
    result = invoke("train", "pix2pix", "--data", image_data, "--out", tmp_path / "r", "--preset", "tiny",
                    "--hparam", "crop_size=48")
    assert result.exit_code != 0 and "crop_size must be a power of two" in result.output
    result = invoke("train", "pix2pix", "--out", tmp_path / "r2", "--preset", "tiny")
    assert result.exit_code != 0 and "--data DIR" in result.output
    result = invoke("train", "cyclegan", "--data", image_data / "trainA", "--out", tmp_path / "r3", "--preset", "tiny")
    assert result.exit_code != 0 and "unpaired data needs" in result.output


# ---------------------------------------------------------------- translation with the trained generators

def _stage(cls, **params):
    stage = cls(**params)
    stage.setup("cpu")
    return stage


def _images(*sizes, seed=0):
    from transmute.signals import Images, ImageSpec

    g = torch.Generator().manual_seed(seed)
    spec = ImageSpec("RGB", (-1.0, 1.0))
    return [Images(torch.rand(1, 3, h, w, generator=g) * 2 - 1, spec, [f"im{i}"]) for i, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("family", ["pix2pix", "cyclegan"])
def test_a_translation_does_not_depend_on_the_batch(family, pix2pix_model, cyclegan_model):
    from transmute.signals import Images

    if family == "pix2pix":
        from transmute_pix2pix.stages import Translate

        stage = _stage(Translate, model=str(pix2pix_model))
    else:
        from transmute_cyclegan.stages import Translate

        stage = _stage(Translate, model=str(cyclegan_model), direction="BtoA")
    items = _images((45, 70), (32, 32), (100, 20))
    together = stage.process(Images.collate(items)).items()
    for alone, item in zip(items, together):
        out = stage.process(alone)
        h, w = alone.sizes[0]
        assert item.sizes == alone.sizes
        torch.testing.assert_close(item.data[..., :h, :w], out.data[..., :h, :w], atol=1e-5, rtol=0)


def test_translate_images_runs_either_family_and_either_direction(pix2pix_model, cyclegan_model, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    a, _ = shape_pair(7, 40)
    Image.fromarray(a[:, :37]).save(source / "odd.png")  # 40x37: no multiple of anything
    outputs = {}
    for name, extra in (("p2p", ("--model", pix2pix_model)), ("ab", ("--model", cyclegan_model)),
                        ("ba", ("--model", cyclegan_model, "--direction", "BtoA"))):
        result = invoke("translate-images", *extra, source, "-o", tmp_path / name, "-q")
        assert result.exit_code == 0, result.output
        image = Image.open(tmp_path / name / "odd.png")
        assert image.size == (37, 40) and image.mode == "RGB"
        outputs[name] = np.asarray(image)
    assert not np.array_equal(outputs["ab"], outputs["ba"])  # two generators, not one
    result = invoke("translate-images", "--model", pix2pix_model, "--direction", "BtoA", source, "-o", tmp_path / "x")
    assert result.exit_code != 0 and "BtoA" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_checkpoint_of_the_other_family_is_one_line(pix2pix_model, cyclegan_model, tmp_path):
    from transmute_pix2pix.stages import Translate

    with pytest.raises(TransmuteError, match="cyclegan"):
        _stage(Translate, model=str(cyclegan_model))


def test_eval_images_translates_a_test_split_with_either_family(pix2pix_model, cyclegan_model, image_data):
    for model, extra in ((pix2pix_model, ()), (cyclegan_model, ("--direction", "BtoA"))):
        result = invoke("eval", "images", "--model", model, "--data", image_data, *extra, "--no-fd")
        assert result.exit_code == 0, result.output
        assert "3 images" in result.output and "identity baseline" in result.output
