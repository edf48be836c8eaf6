"""The VAE plugin: its likelihood and bounds, training, stages and pipelines, latent files, outlier scores,
exploration commands and debiasing weights (tiny models on generated images)."""

import csv
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transmute.cli import cli
from transmute.imagedata import ImageSet, read_image_set
from transmute.runner import run
from transmute.training import TrainConfig, train

from transmute_vae.debias import debiasing_weights
from transmute.outliers import auroc, letters
from transmute_vae.networks import VAE, discretised_logistic_log_prob, gaussian_kl, iwae_nll
from transmute_vae.task import VAETask


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def blob(i: int, size: int = 12) -> np.ndarray:
    """A bright square on black at a place that depends on i: a simple family of images."""
    image = np.zeros((size, size), np.uint8)
    top, left = (i * 3) % (size - 4), (i * 5) % (size - 4)
    image[top : top + 4, left : left + 4] = 255
    return image


@pytest.fixture(scope="module")
def digits_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    for i in range(24):
        (root / "train" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob(i)).save(root / "train" / str(i % 2) / f"{i:03d}.png")
    return root / "train"


@pytest.fixture(scope="module")
def model(digits_like, tmp_path_factory):
    data, problems = read_image_set([digits_like], 1, 12)
    assert not problems and len(data) == 24
    out = tmp_path_factory.mktemp("vae-run")
    task = VAETask(data, "tiny", {"steps": 6, "latent_dim": 3}, name="blobs")
    train(task, TrainConfig(out=out, steps=6, batch_size=4, checkpoint_every=3, sample_every=0, progress=False))
    return out / "model.safetensors"


# ---------------------------------------------------------------- likelihood and bounds

def test_discretised_logistic_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256).float() / 127.5 - 1
    for mean, log_scale in ((0.0, -2.0), (0.9, -4.0), (-1.2, 0.5), (0.3, -7.0)):
        logp = discretised_logistic_log_prob(levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale))
        assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=2e-3)


def test_closed_form_kl_matches_torch():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)


def test_importance_weighting_tightens_the_bound():
    torch.manual_seed(0)
    net = VAE(1, 8, 2, 4).eval()
    x = torch.randint(0, 256, (3, 1, 8, 8)).float() / 127.5 - 1
    with torch.no_grad():
        one = torch.stack([iwae_nll(net, x, torch.randn(1, 3, 2)) for _ in range(200)]).mean(0)  # the -ELBO
        many = iwae_nll(net, x, torch.randn(500, 3, 2))
    assert (many < one).all()


# ---------------------------------------------------------------- training

def test_training_logs_both_terms_and_calibrates(model):
    from transmute.checkpoint import read_metadata

    meta = read_metadata(model)
    calibration = meta["extra"]["calibration"]
    assert set(calibration["percentiles"]) == {"elbo", "iwae", "complexity", "ratio"}
    p = calibration["percentiles"]["iwae"]
    assert p["50"] <= p["99"] <= p["99.9"] and len(calibration["latent_std"]) == 3
    lines = (model.parent / "log.jsonl").read_text().splitlines()
    assert all(key in lines[-1] for key in ("rec_bpd", "kl_bpd", "elbo_bpd", "background_elbo_bpd"))


def test_shift_augmentation_moves_the_image_and_keeps_its_levels():
    pixels = np.stack([blob(0)[None]])
    moved = ImageSet(["a"], pixels, shift=2).load(0, np.random.default_rng(3))
    still = ImageSet(["a"], pixels).load(0, np.random.default_rng(3))
    assert moved.shape == still.shape == (1, 12, 12)
    assert not torch.equal(moved, still) and set(moved.unique().tolist()) <= {-1.0, 1.0}


# ---------------------------------------------------------------- stages and pipelines

def test_reconstruct_pipeline_and_batch_independence(model, digits_like, tmp_path):
    sets = [f"encode.model='{model}'", f"decode.model='{model}'"]
    report = run("vae-reconstruct", [digits_like / "0"], tmp_path / "out", overrides=sets, batch_size=5)
    assert len(report.written) == 12 and not report.failed
    one = run("vae-reconstruct", [digits_like / "0"], tmp_path / "alone", overrides=sets, batch_size=1)
    for outcome, alone in zip(report.written, one.written):
        a, b = np.asarray(Image.open(outcome.job.output)), np.asarray(Image.open(alone.job.output))
        assert a.shape == (12, 12) and np.abs(a.astype(int) - b).max() <= 1


def test_latent_files_round_trip_and_refuse_another_model(model, digits_like, tmp_path):
    sets = [f"encode.model='{model}'"]
    report = run("vae-encode", [digits_like / "1"], tmp_path / "z", overrides=sets)
    assert len(report.written) == 12 and report.written[0].job.output.suffix == ".latent"
    back = run("vae-decode", [tmp_path / "z"], tmp_path / "img", overrides=[f"decode.model='{model}'"])
    assert len(back.written) == 12
    copy = model.parent / "copy.safetensors"
    copy.write_bytes(model.read_bytes())  # the same model under another name (as `make` ships one): accepted
    assert len(run("vae-decode", [tmp_path / "z"], tmp_path / "copy", overrides=[f"decode.model='{copy}'"]).written) == 12
    data, _ = read_image_set([digits_like], 1, 12)
    other = tmp_path / "other"
    train(VAETask(data, "tiny", {"steps": 2, "latent_dim": 3}),
          TrainConfig(out=other, steps=2, batch_size=4, seed=5, sample_every=0, progress=False))
    refused = run("vae-decode", [tmp_path / "z"], tmp_path / "o2",
                  overrides=[f"decode.model='{other / 'model.safetensors'}'"])
    assert len(refused.failed) == 12 and "cannot be decoded by 'vae-" in refused.failed[0].reason
    damaged = tmp_path / "bad" / "x.latent"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a safetensors file")
    bad = run("vae-decode", [damaged], tmp_path / "bad-out", overrides=[f"decode.model='{model}'"])
    assert len(bad.failed) == 1 and "x.latent: not a readable latent file" in bad.failed[0].reason


def test_sample_pipeline_is_reproducible(model, tmp_path):
    sets = [f"sample.model='{model}'"]
    a = run("vae-sample", [], tmp_path / "a", overrides=sets, count=3, batch_size=3)
    b = run("vae-sample", [], tmp_path / "b", overrides=sets, count=3, batch_size=1)
    images = [[np.asarray(Image.open(o.job.output)) for o in r.written] for r in (a, b)]
    assert len(images[0]) == 3 and all(np.array_equal(x, y) for x, y in zip(*images))
    assert not np.array_equal(images[0][0], images[0][1])


def test_outlier_pipeline_flags_noise_and_writes_every_score(model, digits_like, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(blob(i)).save(inputs / f"blob{i}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)).save(inputs / "noise.png")
    report = run("vae-outliers", [inputs], tmp_path / "out", overrides=[f"score.model='{model}'", "score.score='iwae'"],
                 batch_size=4)
    with open(tmp_path / "out" / "scores.csv") as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"blob0", "blob1", "blob2", "noise"}
    assert rows["noise"]["unusual"] == "yes" and float(rows["noise"]["iwae"]) > max(
        float(rows[f"blob{i}"]["iwae"]) for i in range(3))
    flagged = {o.job.name for o, _ in report.warnings}
    # The warning lands on the item it is about, not on the whole batch.
    assert "noise" in flagged and flagged == {n for n, r in rows.items() if r["unusual"] == "yes"}


def test_scores_do_not_depend_on_the_batch_and_a_rerun_keeps_one_row_each(model, digits_like, tmp_path):
    sets = [f"score.model='{model}'"]
    run("vae-outliers", [digits_like / "0"], tmp_path / "a", overrides=sets, batch_size=5)
    run("vae-outliers", [digits_like / "0"], tmp_path / "b", overrides=sets, batch_size=1)
    def scores(folder):
        lines = (tmp_path / folder / "scores.csv").read_text().splitlines()
        return {row[0]: np.array([float(v) for v in row[1:5]]) for row in csv.reader(lines[1:])}, len(lines)

    (a, lines), (b, _) = scores("a"), scores("b")
    assert lines == 13 and set(a) == set(b)
    assert all(np.allclose(a[n], b[n], atol=2e-4) for n in a)  # batched convolutions round differently
    run("vae-outliers", [digits_like / "0"], tmp_path / "a", overrides=sets, batch_size=3, overwrite=True)
    again, lines = scores("a")
    assert lines == 13 and all(np.allclose(a[n], again[n], atol=2e-4) for n in a)  # replaced, not appended
    (tmp_path / "a" / "000.png").unlink()  # a rerun scores only what is missing, and keeps the other rows
    run("vae-outliers", [digits_like / "0"], tmp_path / "a", overrides=sets)
    kept, lines = scores("a")
    assert lines == 13 and set(kept) == set(a)


def test_without_a_background_model_the_ratio_is_refused_and_auto_takes_complexity(digits_like, tmp_path):
    data, _ = read_image_set([digits_like], 1, 12)
    task = VAETask(data, "tiny", {"background": 0.0})
    train(task, TrainConfig(out=tmp_path / "run", steps=2, batch_size=4, sample_every=0, progress=False))
    model = tmp_path / "run" / "model.safetensors"
    report = run("vae-outliers", [digits_like / "0"], tmp_path / "auto", overrides=[f"score.model='{model}'"])
    header = (tmp_path / "auto" / "scores.csv").read_text().splitlines()[0]
    assert len(report.written) == 12 and header == "name,elbo,iwae,complexity,threshold_complexity,unusual"
    with pytest.raises(Exception, match="score 'ratio' needs a background model"):
        run("vae-outliers", [digits_like / "0"], tmp_path / "ratio",
            overrides=[f"score.model='{model}'", "score.score='ratio'"])


def test_a_colour_pipeline_for_a_grayscale_model_is_refused(model, digits_like, tmp_path):
    report_error = None
    try:
        run("vae-reconstruct", [digits_like], tmp_path / "o",
            overrides=[f"encode.model='{model}'", f"decode.model='{model}'", "load.mode='RGB'"])
    except Exception as exc:  # noqa: BLE001 - the pipeline check's error
        report_error = str(exc)
    assert report_error and "mode" in report_error and "'L'" in report_error


# ---------------------------------------------------------------- exploration commands

def test_traverse_interpolate_and_arithmetic_write_sheets(model, digits_like, tmp_path):
    grid = tmp_path / "grid.png"
    result = invoke("vae", "traverse", "--model", model, "--dims", "all", "--steps", "5", "-o", grid)
    assert result.exit_code == 0, result.output
    width, height = Image.open(grid).size
    assert height > 3 * 12 * 3 and width > 5 * 12 * 3  # 3 rows of 5 enlarged images
    strip = tmp_path / "strip.png"
    files = sorted((digits_like / "0").glob("*.png"))
    result = invoke("vae", "interpolate", "--model", model, files[0], files[1], "--steps", "4", "-o", strip)
    assert result.exit_code == 0 and Image.open(strip).size[0] > 6 * 36
    sheet = tmp_path / "sum.png"
    result = invoke("vae", "arithmetic", "--model", model, files[0], "--minus", digits_like / "0",
                    "--plus", digits_like / "1", "-o", sheet)
    assert result.exit_code == 0 and sheet.is_file(), result.output
    bad = invoke("vae", "traverse", "--model", model, "--dims", "7", "-o", grid)
    assert bad.exit_code != 0 and "latent 7 does not exist" in bad.output


def test_evaluation_reports_bits_and_auroc(model, digits_like):
    from transmute_vae.evaluate import evaluate

    result = evaluate(str(model), [digits_like], limit=6, samples=4)
    assert result["items"] == 6 and result["bits_per_dim"]["iwae"] > 0
    assert {"noise", "inverted", "letters"} <= set(result["outliers"])
    assert set(result["outliers"]["noise"]["auroc"]) == {"elbo", "iwae", "complexity", "ratio"}
    # Even a barely trained model finds uniform noise far less likely than its own blobs.
    assert result["outliers"]["noise"]["auroc"]["iwae"] == 1.0


# ---------------------------------------------------------------- debiasing and helpers

@pytest.mark.parametrize("density", ["kde", "histogram"])
def test_debiasing_weights_even_out_an_over_represented_cluster(density):
    rng = np.random.default_rng(0)
    common = rng.normal(-2, 0.3, (90, 2))  # 90% of the data
    rare = rng.normal(2, 0.3, (10, 2))
    weights = debiasing_weights(torch.tensor(np.concatenate([common, rare]), dtype=torch.float32), density)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    share_rare = weights[90:].sum() / weights.sum()
    assert share_rare > 0.3  # from 10% of the draws to about half
    assert weights[90:].min() > weights[:90].max() * 0.5


def test_kernel_density_weights_survive_a_narrow_kernel_and_refuse_a_single_item():
    mu = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    mu[:200] = mu[:200] * 0.1  # two thirds of the items in a tight cluster
    weights = debiasing_weights(mu, "kde", bandwidth=0.2)
    assert torch.isfinite(weights).all() and weights[200:].mean() > 2 * weights[:200].mean()
    with pytest.raises(ValueError, match="at least 2 items"):
        debiasing_weights(mu[:1])


def test_weights_command_names_items_as_the_trainers_do(model, digits_like, tmp_path):
    out = tmp_path / "w.csv"
    result = invoke("vae", "weights", "--model", model, digits_like, "-o", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(open(out)))
    data, _ = read_image_set([digits_like], 1, 12)
    assert rows[0] == ["name", "weight"] and [r[0] for r in rows[1:]] == data.names
    assert math.isclose(np.mean([float(r[1]) for r in rows[1:]]), 1.0, rel_tol=1e-3)
    # ... and a trainer takes them.
    result = invoke("train", "vae", "--data", digits_like, "--size", "12", "--preset", "tiny", "--sample-weights",
                    out, "--out", tmp_path / "weighted")
    assert result.exit_code == 0 and (tmp_path / "weighted" / "model.safetensors").is_file(), result.output


def test_auroc_and_letters():
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and auroc([3, 4], [0, 1]) == 0.0 and auroc([1, 1], [1, 1]) == 0.5
    images = letters(5, 28)
    assert images.shape == (5, 1, 28, 28) and images.max() == 255 and (images == 0).mean() > 0.5
