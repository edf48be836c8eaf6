"""The PixelCNN plugin: causal masks without a blind spot (pixels, colour, codes, classes), the cached sampler
against the naive one, drawing one value, and training, sampling, scoring, evaluating and resuming through
the CLI (tiny models on generated images and on the shipped example digits)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from transmute.checkpoint import load_checkpoint
from transmute.cli import cli

from transmute_pixelcnn import MODELS
from transmute_pixelcnn.networks import (PRESETS, PixelCNN, cached_sample, draw, generate, naive_sample,
                                         uniforms)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIGITS = ROOT / "examples" / "digits"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def succeeded(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def error_line(result) -> str:
    """A refusal: a non-zero exit through the CLI's own error handling (no exception escaped), one line."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash with a traceback
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# --------------------------------------------------------------------------- random networks


def random_net(kind, channels=1, classes=0, layers=5, width=6, first_kernel=3, kernel=3, codebook_size=7,
               open_relus=False, seed=0):
    """A float64 PixelCNN with every weight drawn from N(0, 0.5): logits that vary a lot with the input.

    open_relus: the skip sum and the head's first layer biased positive, so no ReLU of the head is dead at
    a position (with random weights a dead ReLU can hide a real dependence; then a missing one can only be
    a fault of the masks or of the stacks' wiring)."""
    torch.manual_seed(seed)
    h = dict(PRESETS["tiny"], width=width, head=width, layers=layers, embed=4, first_kernel=first_kernel,
             kernel=kernel)
    net = PixelCNN(kind, h, channels, codebook_size, classes).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
        if open_relus:
            for layer in net.layers:
                layer.skip.bias.add_(4.0)
            net.head1.weight.abs_()
            net.head1.bias.abs_()
    return net.eval()


def random_input(net, size, seed=1):
    g = torch.Generator().manual_seed(seed)
    if net.kind == "pixels":
        return torch.randint(0, 256, (net.channels, *size), generator=g)
    return torch.randint(0, net.values, size, generator=g)


def dependence(net, size, label=None):
    """(H, W, C_in, C_out, H, W) bool: does the logit of (c_out, i, j) change when the input at (i', j', c_in)
    changes? One forward pass over a batch of the input and its single-value variations."""
    rows, cols = size
    channels = net.channels
    x = random_input(net, size)
    batch = [x]
    for i in range(rows):
        for j in range(cols):
            for c in range(channels):
                y = x.clone()
                if net.kind == "pixels":
                    y[c, i, j] = (y[c, i, j] + 128) % 256
                else:
                    y[i, j] = (y[i, j] + 1) % net.values
                batch.append(y)
    batch = torch.stack(batch)
    labels = None if label is None else torch.full((len(batch),), label)
    with torch.no_grad():
        logits = net(batch, labels)  # (N, C, V, H, W)
    change = (logits[1:] - logits[:1]).abs().amax(2)  # (N - 1, C, H, W)
    return (change > 1e-10).view(rows, cols, channels, channels, rows, cols)


def strictly_before(size, channels):
    """The same shape: is input sub-pixel (i', j', c') before output sub-pixel (i, j, c) in raster order
    (position first, then R < G < B)?"""
    rows, cols = size
    order = torch.arange(rows * cols * channels).view(rows, cols, channels)  # (i, j, c) -> rank
    inputs = order[:, :, :, None, None, None]
    outputs = order.permute(2, 0, 1)[None, None, None]  # (c, i, j)
    return inputs < outputs


NETS = {  # kind, channels, classes
    "codes": ("codes", 1, 0),
    "codes-conditional": ("codes", 1, 3),
    "gray": ("pixels", 1, 0),
    "rgb": ("pixels", 3, 0),
    "rgb-conditional": ("pixels", 3, 4),
}


@pytest.mark.parametrize("which", list(NETS))
def test_no_logit_sees_its_own_or_a_later_value_and_none_has_a_blind_spot(which):
    kind, channels, classes = NETS[which]
    size = (5, 6)
    net = random_net(kind, channels, classes, layers=5, width=12 if channels == 3 else 6, open_relus=True)
    seen = dependence(net, size, label=1 if classes else None)
    before = strictly_before(size, channels)
    # Causality: a change at (i, j, c) moves no logit at or before it (not even c's own at (i, j)).
    leaks = (seen & ~before).nonzero().tolist()
    assert not leaks, f"{len(leaks)} leaks (i', j', c_in, c_out, i, j), e.g. {leaks[:5]}"
    # No blind spot: with 5 layers every logit sees every earlier sub-pixel of the 5x6 map, including what
    # lies up and to the right (the wedge the original PixelCNN's masked 3x3 stack never sees) ...
    missing = (before & ~seen).nonzero().tolist()
    assert not missing, f"{len(missing)} missing (i', j', c_in, c_out, i, j), e.g. {missing[:5]}"
    assert seen[0:4, 3:6, :, :, 4, 2].all()  # (4, 2) sees rows 0-3, columns 3-5
    # ... and with colour, this pixel's R feeds its G and B logits, G its B, and B none of them.
    if channels == 3:
        here = seen[2, 3, :, :, 2, 3]  # (c_in, c_out) at one pixel
        assert here.tolist() == [[False, True, True], [False, False, True], [False, False, False]]


@pytest.mark.parametrize("which", ["codes-conditional", "rgb-conditional"])
def test_the_class_reaches_every_logit_even_the_first(which):
    kind, channels, classes = NETS[which]
    net = random_net(kind, channels, classes, width=6 if channels == 1 else 12, open_relus=True)
    x = random_input(net, (4, 5))[None].expand(classes, *([-1] * (3 if kind == "pixels" else 2)))
    with torch.no_grad():
        logits = net(x, torch.arange(classes))  # the same map under every class
    for k in range(1, classes):
        differs = (logits[k] - logits[0]).abs().amax(1) > 1e-10  # (C, H, W)
        assert differs.all(), f"class {k}: logits unmoved at {(~differs).nonzero().tolist()}"


def test_colour_groups_need_not_divide_the_width_but_need_a_map_per_channel():
    with pytest.raises(ValueError, match="at least the channels"):
        PixelCNN("pixels", dict(PRESETS["tiny"], width=2, head=8), channels=3)
    # The presets' widths (8, 48, 128) are no multiples of 3: the groups are then uneven, and still causal.
    net = random_net("pixels", 3, width=8, open_relus=True)
    size = (4, 5)
    seen, before = dependence(net, size), strictly_before(size, 3)
    assert not (seen & ~before).any() and not (before & ~seen).any()


# --------------------------------------------------------------------------- the two samplers

SAMPLERS = {  # kind, channels, classes, size, (first_kernel, kernel), sampling settings
    "codes-classes": ("codes", 1, 3, (5, 6), (3, 3), {}),
    "gray": ("pixels", 1, 0, (5, 5), (5, 3), {}),
    "rgb": ("pixels", 3, 0, (4, 5), (5, 3), {}),
    "rgb-classes-temperature": ("pixels", 3, 2, (4, 5), (3, 3), {"temperature": 0.7}),
    "gray-top-k": ("pixels", 1, 0, (4, 6), (3, 5), {"top_k": 5}),
    "codes-top-p": ("codes", 1, 0, (4, 6), (5, 3), {"top_p": 0.8}),
    "rgb-all-settings-wide": ("pixels", 3, 0, (3, 7), (3, 5), {"temperature": 0.7, "top_k": 20, "top_p": 0.9}),
    "codes-tall": ("codes", 1, 2, (7, 3), (3, 3), {"temperature": 1.3}),
}


@pytest.mark.parametrize("which", list(SAMPLERS))
def test_the_cached_sampler_draws_exactly_the_naive_samplers_samples(which):
    kind, channels, classes, size, (first_kernel, kernel), settings = SAMPLERS[which]
    net = random_net(kind, channels, classes, layers=3, width=6, first_kernel=first_kernel, kernel=kernel)
    u = uniforms([11, 12, 13], (net.channels, *size))
    labels = torch.tensor([0, 1, 2]) % classes if classes else None
    naive = naive_sample(net, size, u, labels, **settings)
    cached = cached_sample(net, size, u, labels, **settings)
    assert cached.shape == naive.shape == ((3, channels, *size) if kind == "pixels" else (3, *size))
    assert torch.equal(cached, naive), f"{int((cached != naive).sum())} of {naive.numel()} values differ"
    assert len(naive.unique()) > 3 and not torch.equal(naive[0], naive[1])  # real, varied samples
    # Each value is what drawing from the teacher-forced logits of the finished map gives with its uniform
    # number: the samplers read the logits of the right sub-pixel, with the right u, in the right order.
    with torch.no_grad():
        logits = net(naive, labels)  # (B, C, V, H, W)
    flat = logits.permute(0, 1, 3, 4, 2).reshape(-1, net.values)
    again = draw(flat, u.reshape(-1), **settings).view(3, net.channels, *size)
    assert torch.equal(again if kind == "pixels" else again[:, 0], naive)


def test_a_sample_depends_on_its_seed_alone():
    net = random_net("pixels", 3, 2, layers=2, width=6)
    for cached in (True, False):
        alone = generate(net, (4, 4), [5], torch.tensor([1]), cached=cached)
        batch = generate(net, (4, 4), [3, 5], torch.tensor([0, 1]), cached=cached)
        assert torch.equal(alone[0], batch[1])
        assert not torch.equal(batch[0], batch[1])
    other = generate(net, (4, 4), [3, 5], torch.tensor([1, 1]))
    assert torch.equal(other[1], alone[0]) and not torch.equal(other[0], batch[0])  # the class matters too


# --------------------------------------------------------------------------- drawing one value


def random_logits(rows, values, seed=0, scale=2.0):
    return torch.randn(rows, values, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def nucleus(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The fewest most likely values whose probability adds up to at least p (a bool mask)."""
    order = probs.argsort(descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    total = 0.0
    for v in order.tolist():
        keep[v] = True
        total += float(probs[v])
        if total >= p:
            break
    return keep


def test_temperature_zero_top_1_and_a_tiny_top_p_take_the_most_likely_value():
    logits = random_logits(64, 12)
    best = logits.argmax(-1)
    for u in (0.0, 0.3, 0.999999):
        us = torch.full((64,), u, dtype=torch.float64)
        assert torch.equal(draw(logits, us, temperature=0), best)
        assert torch.equal(draw(logits, us, top_k=1), best)
        assert torch.equal(draw(logits, us, top_p=1e-6), best)
        assert torch.equal(draw(logits, us, temperature=0.5, top_k=1, top_p=0.5), best)


def test_top_p_measures_what_top_k_left_renormalised():
    # Probabilities 0.4, 0.3, 0.2, 0.1; top_k 2 leaves 0.4 and 0.3, i.e. 4/7 and 3/7: top_p 0.5 then keeps the
    # first alone (against the unrenormalised mass 0.4 < 0.5 it would keep both).
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64).log().expand(1000, -1)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    assert (draw(logits, u, top_k=2, top_p=0.5) == 0).all()
    both = draw(logits, u, top_k=2, top_p=0.6)  # 4/7 < 0.6: both, as 4/7 and 3/7
    assert torch.bincount(both, minlength=4).tolist() == [571, 429, 0, 0]


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.7, 0, 1.0), (1.0, 3, 1.0),
                                                       (1.0, 0, 0.7), (0.8, 4, 0.6)])
def test_drawn_values_follow_the_softmax_the_settings_leave(temperature, top_k, top_p):
    n, values = 50_000, 8
    logits = random_logits(1, values, seed=3, scale=1.5)
    probs = torch.softmax(logits[0] / temperature, -1)
    if top_k:
        keep = torch.zeros(values, dtype=torch.bool)
        keep[probs.topk(top_k).indices] = True
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    if top_p < 1:
        probs = torch.where(nucleus(probs / probs.sum(), top_p), probs, torch.zeros_like(probs))
    expected = probs / probs.sum()
    u = torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    drawn = draw(logits.expand(n, -1), u, temperature, top_k, top_p)
    frequency = torch.bincount(drawn, minlength=values).double() / n
    assert (frequency - expected).abs().max() < 0.01, (frequency, expected)
    assert (frequency[expected == 0] == 0).all()  # what the settings leave out is never drawn
    assert (expected > 0).sum() >= 2  # not a trivial case


def test_top_k_and_top_p_never_draw_outside_what_they_keep():
    logits = random_logits(2000, 30, seed=5)
    u = torch.rand(2000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    u[:10] = 1 - 2**-53  # the largest float64 below 1: the end of the CDF
    for k in (1, 3, 7):
        drawn = draw(logits, u, top_k=k)
        assert (logits.topk(k, -1).indices == drawn[:, None]).any(1).all(), k
    probs = torch.softmax(logits, -1)
    for p in (0.3, 0.9):
        drawn = draw(logits, u, top_p=p)
        kept = torch.stack([nucleus(row, p) for row in probs])
        assert kept.gather(1, drawn[:, None]).all(), p
        assert len(drawn.unique()) > 5


def test_a_conditional_models_score_without_a_class_is_its_likelihood_under_any_class():
    from transmute_pixelcnn.task import item_nll

    net = random_net("pixels", 1, 3, layers=2)
    x = torch.stack([random_input(net, (4, 4), seed=s) for s in range(5)])
    per_class = torch.stack([net.nll(x, torch.full((5,), k)) for k in range(3)]).double()  # nats/dim (3, 5)
    marginal = -torch.log(torch.exp(-per_class * 16).mean(0)) / 16  # -log(1/K sum_k p(x | k)) per dimension
    assert torch.allclose(item_nll(net, x).double(), marginal, rtol=1e-5)
    assert (item_nll(net, x).double() >= per_class.min(0).values - 1e-5).all()
    assert torch.equal(item_nll(net, x, torch.full((5,), 2)), net.nll(x, torch.full((5,), 2)))
    plain = random_net("codes", 1, 0, layers=2)
    codes = torch.stack([random_input(plain, (4, 4), seed=s) for s in range(3)])
    assert torch.equal(item_nll(plain, codes), plain.nll(codes))


# --------------------------------------------------------------------------- through the CLI


def blob(i: int, size: int = 12) -> np.ndarray:
    """Class a: a bright square at a place that depends on i; class b: a grey bar and a darker column."""
    image = np.zeros((size, size), np.uint8)
    if i % 2 == 0:
        top, left = (i * 3) % (size - 4), (i * 5) % (size - 4)
        image[top : top + 4, left : left + 4] = 255
    else:
        image[5:7, :] = 200
        image[:, i % size : i % size + 2] = 100
    return image


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs") / "data"
    for i in range(12):
        folder = root / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob(i)).save(folder / f"{i:02d}.png")
    return root


PIXEL_RUN = ("--conditional", "--size", "12", "--preset", "tiny")


@pytest.fixture(scope="module")
def pixel_model(blobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pixel-run")
    succeeded(invoke("train", "pixelcnn", "--data", blobs, *PIXEL_RUN, "--sample-every", "20", "--out", out))
    return out / "model.safetensors"


def example_digits(root: Path) -> Path:
    """examples/digits (10 PNGs named like 3-1529.png) copied into class folders by their first character."""
    files = sorted(EXAMPLE_DIGITS.glob("*.png"))
    assert len(files) == 10
    for f in files:
        (root / f.name[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.name[0] / f.name)
    return root


@pytest.fixture(scope="module")
def digit_classes(tmp_path_factory):
    return example_digits(tmp_path_factory.mktemp("digits") / "data")


@pytest.fixture(scope="module")
def code_model(digit_classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("code-run")
    succeeded(invoke("train", "pixelcnn", "--data", digit_classes, "--codes-from", "digits-vqvae", "--conditional",
                     "--preset", "tiny", "--out", out))
    return out / "model.safetensors"


def pngs(folder: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_training_a_pixel_model_writes_its_classes_thresholds_log_and_samples(pixel_model):
    ckpt = load_checkpoint(pixel_model, plugin="pixelcnn", model="pixelcnn", version="1.0")
    assert ckpt.hparams["kind"] == "pixels" and ckpt.hparams["channels"] == 1 and ckpt.hparams["classes"] == 2
    assert ckpt.extra["classes"] == ["a", "b"] and ckpt.extra["map_size"] == [12, 12]
    calibration = ckpt.extra["calibration"]
    assert calibration["unit"] == "bits/dim" and calibration["items"] == 12
    levels = [calibration["percentiles"][p] for p in ("50", "90", "95", "99", "99.5", "99.9")]
    assert levels == sorted(levels) and 0 < levels[0] <= 8.5  # bits per sub-pixel of 256 levels, barely trained
    assert not [k for k in ckpt.tensors if k.endswith("mask")]  # masks are rebuilt, never saved
    log = [json.loads(line) for line in (pixel_model.parent / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [10, 20] and all(0 < line["bits_per_dim"] < 9 for line in log)
    sheet = Image.open(pixel_model.parent / "samples" / "step0000020.png")  # a row per class, 8 samples each
    assert sheet.width >= 8 * 12 and sheet.height >= 2 * 12


def test_pixel_samples_are_pngs_of_the_training_size_the_same_at_any_batch_size(pixel_model, tmp_path):
    model = f"sample.model={pixel_model}"
    succeeded(invoke("run", "pixelcnn-sample", "--count", "4", "-o", tmp_path / "a", "--set", model))
    succeeded(invoke("run", "pixelcnn-sample", "--count", "4", "-o", tmp_path / "b", "--set", model,
                     "--batch-size", "1"))
    a, b = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert len(a) == 4 and a.keys() == b.keys()
    for name, image in a.items():
        assert image.shape == (12, 12) and Image.open(tmp_path / "a" / name).mode == "L"
        assert np.array_equal(image, b[name]), name
    assert not np.array_equal(a["sample-0000.png"], a["sample-0001.png"])
    # The naive sampler (cached = false) gives the same samples.
    succeeded(invoke("run", "pixelcnn-sample", "--count", "2", "-o", tmp_path / "naive", "--set", model,
                     "--set", "sample.cached=false"))
    naive = pngs(tmp_path / "naive")
    assert len(naive) == 2 and all(np.array_equal(naive[n], a[n]) for n in naive)
    # A sheet: a labelled row per class.
    result = succeeded(invoke("pixelcnn", "grid", "--model", pixel_model, "--per-row", "3", "-o", tmp_path / "g.png"))
    assert "2 x 3 samples" in result.output
    sheet = Image.open(tmp_path / "g.png")
    assert sheet.width >= 3 * 12 and sheet.height >= 2 * 12


def test_class_name_fixes_the_class_and_an_unknown_one_is_refused_by_name(pixel_model, tmp_path):
    model = f"sample.model={pixel_model}"
    succeeded(invoke("run", "pixelcnn-sample", "--count", "4", "-o", tmp_path / "cycle", "--set", model))
    succeeded(invoke("run", "pixelcnn-sample", "--count", "4", "-o", tmp_path / "b", "--set", model,
                     "--set", "sample.class_name=b"))
    cycle, only_b = pngs(tmp_path / "cycle"), pngs(tmp_path / "b")
    assert len(only_b) == 4
    # Cycling gives sample i class i mod 2 (a, b, a, b): the odd ones are b's with the same seeds.
    for i in (1, 3):
        assert np.array_equal(only_b[f"sample-{i:04d}.png"], cycle[f"sample-{i:04d}.png"])
    assert not all(np.array_equal(only_b[f"sample-{i:04d}.png"], cycle[f"sample-{i:04d}.png"]) for i in (0, 2))
    line = error_line(invoke("run", "pixelcnn-sample", "--count", "2", "-o", tmp_path / "zebra", "--set", model,
                             "--set", "sample.class_name=zebra"))
    assert "class_name 'zebra'" in line and "a, b" in line
    assert not list((tmp_path / "zebra").glob("*.png"))


def test_outlier_scores_have_a_row_per_image_and_agree_with_eval(pixel_model, blobs, tmp_path):
    out = tmp_path / "out"
    succeeded(invoke("run", "pixelcnn-outliers", blobs, "-o", out, "--set", f"score.model={pixel_model}"))
    with open(out / "scores.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["name", "bits_per_dim", "threshold", "unusual"]
    assert sorted(r["name"] for r in rows) == sorted(f"{'ab'[i % 2]}/{i:02d}" for i in range(12))
    threshold = load_checkpoint(pixel_model).extra["calibration"]["percentiles"]["99"]
    for r in rows:
        bits = float(r["bits_per_dim"])
        assert 0 < bits < 9 and float(r["threshold"]) == pytest.approx(threshold, abs=1e-4)
        if abs(bits - threshold) > 1e-4:  # (the CSV rounds to 4 decimals)
            assert r["unusual"] == ("yes" if bits > threshold else "no"), r
    assert {r["unusual"] for r in rows} <= {"yes", "no"}
    assert len(pngs(out / "a")) == 6  # the images pass through
    # eval scores the same images the same way: the class-marginal likelihood.
    report = tmp_path / "eval.json"
    result = succeeded(invoke("eval", "pixelcnn", "--model", pixel_model, "--data", blobs, "--no-outliers",
                              "--json", report))
    figures = json.loads(report.read_text())
    assert figures["items"] == 12 and figures["unit"] == "bits/dim" and "outliers" not in figures
    assert figures["nll"] == pytest.approx(np.mean([float(r["bits_per_dim"]) for r in rows]), abs=2e-4)
    assert f"{figures['nll']:.3f} bits/dim" in result.output
    assert f"lossless PNG of the same images: {figures['baseline']['png']:.3f} bits/dim" in result.output
    assert f"({figures['nll_given_class']:.3f} given the class)" in result.output


def test_a_code_prior_trains_samples_digits_and_evaluates(code_model, digit_classes, tmp_path):
    ckpt = load_checkpoint(code_model, plugin="pixelcnn")
    assert ckpt.hparams["kind"] == "codes" and ckpt.hparams["classes"] == 10
    assert ckpt.extra["classes"] == [str(d) for d in range(10)] and ckpt.extra["map_size"] == [7, 7]
    assert ckpt.extra["code_spec"]["vqvae"] == "digits-vqvae" and ckpt.extra["source_size"] == [28, 28]
    assert ckpt.extra["calibration"]["unit"] == "nats/code"
    succeeded(invoke("run", "sample-codes", "--count", "3", "-o", tmp_path / "out", "--set",
                     f"sample.model={code_model}"))
    images = pngs(tmp_path / "out")
    assert sorted(images) == ["sample-0000.png", "sample-0001.png", "sample-0002.png"]
    assert all(image.shape == (28, 28) for image in images.values())
    assert not np.array_equal(images["sample-0000.png"], images["sample-0001.png"])
    result = succeeded(invoke("eval", "pixelcnn", "--model", code_model, "--data", digit_classes, "--no-outliers"))
    assert "10 held-out images" in result.output and "nats/code" in result.output


def test_a_stage_handed_the_other_kind_of_model_names_the_stage_to_use(pixel_model, code_model, tmp_path):
    line = error_line(invoke("run", "sample-codes", "--count", "1", "-o", tmp_path / "a", "--set",
                             f"sample.model={pixel_model}"))
    assert "PixelCNN over pixels" in line and "use pixelcnn.sample" in line
    line = error_line(invoke("run", "pixelcnn-sample", "--count", "1", "-o", tmp_path / "b", "--set",
                             f"sample.model={code_model}"))
    assert "PixelCNN over codes" in line and "use pixelcnn.sample_codes" in line
    line = error_line(invoke("run", "pixelcnn-outliers", tmp_path, "-o", tmp_path / "c", "--set",
                             f"score.model={code_model}"))
    assert "use pixelcnn.score_codes" in line


def test_training_refusals_are_one_line(digit_classes, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in EXAMPLE_DIGITS.glob("*.png"):
        shutil.copy(f, flat / f.name)
    line = error_line(invoke("train", "pixelcnn", "--data", flat, "--conditional", "--preset", "tiny",
                             "--out", tmp_path / "a"))
    assert "--conditional" in line and "directly in the data folder" in line
    # A speech VQ-VAE's codes are not an image prior's: images are no recordings.
    line = error_line(invoke("train", "pixelcnn", "--data", digit_classes, "--codes-from", "speech-vqvae",
                             "--preset", "tiny", "--out", tmp_path / "b"))
    assert "audio" in line or "speech" in line
    line = error_line(invoke("train", "pixelcnn", "--data", digit_classes, "--codes-from", "digits-vqvae",
                             "--size", "12", "--preset", "tiny", "--out", tmp_path / "c"))
    assert "--size 28" in line
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(pixel_model, blobs, tmp_path, monkeypatch):
    # Interrupted as the engine's own tests interrupt (Ctrl-C during a step), after the step-10 checkpoint;
    # then the same command with --resume. (A run first given --steps 10 would differ: the cosine decay of the
    # learning rate runs over the --steps given, as the engine intends for a longer run.)
    from safetensors.torch import load_file

    from transmute_pixelcnn.task import PixelCNNTask

    step = PixelCNNTask.train_step

    def interrupted(self, batch, index, ctx):
        if index == 14:
            raise KeyboardInterrupt
        return step(self, batch, index, ctx)

    run = tmp_path / "split"
    monkeypatch.setattr(PixelCNNTask, "train_step", interrupted)
    result = invoke("train", "pixelcnn", "--data", blobs, *PIXEL_RUN, "--sample-every", "20", "--out", run)
    assert result.exit_code != 0 and "(step 10)" in result.output, result.output
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").extra["step"] == 10
    monkeypatch.setattr(PixelCNNTask, "train_step", step)
    succeeded(invoke("train", "pixelcnn", "--data", blobs, *PIXEL_RUN, "--sample-every", "20", "--out", run,
                     "--resume"))
    a, b = load_file(str(pixel_model)), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (pixel_model.parent / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [10, 20] and log[-1]["bits_per_dim"] == whole[-1]["bits_per_dim"]
    assert load_checkpoint(run / "model.safetensors").extra["calibration"] == load_checkpoint(
        pixel_model).extra["calibration"]


# --------------------------------------------------------------------------- the shipped models

SHIPPED = ("digits-codes-pixelcnn", "digits-pixelcnn", "speech-codes-pixelcnn")


def shipped(*names):
    missing = [m for m in names if not (MODELS / f"{m}.safetensors").is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"not in plugins/transmute_pixelcnn/models: {', '.join(missing)}")


needs_shipped = shipped(*SHIPPED)


@needs_shipped
def test_the_shipped_models_are_listed():
    listed = {line.split()[0] for line in succeeded(invoke("models")).output.splitlines() if line.strip()}
    assert set(SHIPPED) <= listed


@shipped("digits-pixelcnn")
def test_the_shipped_pixel_model_beats_png_on_held_out_digits(tmp_path):
    data = example_digits(tmp_path / "digits")
    report = tmp_path / "eval.json"
    result = succeeded(invoke("eval", "pixelcnn", "--model", "digits-pixelcnn", "--data", data, "--no-outliers",
                              "--json", report))
    figures = json.loads(report.read_text())
    assert figures["items"] == 10 and figures["kind"] == "pixels"
    assert 0 < figures["nll"] < figures["baseline"]["png"], figures
    assert f"{figures['nll']:.3f} bits/dim" in result.output


@shipped("digits-codes-pixelcnn")
def test_the_shipped_code_prior_knows_each_digits_class():
    # The prior given the right digit is the likeliest for (nearly) every example: the conditioning works.
    from transmute.imagedata import read_image_set
    from transmute_pixelcnn.codec import Codec
    from transmute_pixelcnn.task import load_pixelcnn

    net, ckpt = load_pixelcnn("digits-codes-pixelcnn")
    data, problems = read_image_set([EXAMPLE_DIGITS], 1, 28)
    assert not problems and len(data) == 10
    codes = Codec(ckpt.extra["code_spec"]["vqvae"]).encode_images(data.pixels)
    with torch.no_grad():
        nll = torch.stack([net.nll(codes, torch.full((10,), k)) for k in range(10)])  # (class, image)
    truth = torch.tensor([ckpt.extra["classes"].index(Path(name).name[0]) for name in data.names])
    assert (nll.argmin(0) == truth).sum() >= 8, nll.argmin(0).tolist()


@shipped("digits-codes-pixelcnn")
def test_the_documented_class_name_setting_draws_one_digit(tmp_path):
    # The pipeline's own comment and the plugin's README give: --set sample.class_name=3
    result = invoke("run", "sample-codes", "--count", "2", "-o", tmp_path / "threes", "--set", "sample.class_name=3")
    assert result.exit_code == 0, result.output
    assert len(pngs(tmp_path / "threes")) == 2


# --------------------------------------------------------------------------- colour, classes, speech


def test_a_colour_model_trains_at_the_presets_widths_samples_rgb_and_refuses_rgba(tmp_path):
    root = tmp_path / "colour"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.zeros((8, 8, 3), np.uint8)
        image[..., i % 3] = 200
        image[rng.integers(0, 8), :, :] = 255
        Image.fromarray(image).save(root / f"{i}.png")
    run = tmp_path / "run"
    succeeded(invoke("train", "pixelcnn", "--data", root, "--channels", "3", "--size", "8", "--preset", "tiny",
                     "--out", run))  # width and head 8: no multiple of 3
    model = run / "model.safetensors"
    succeeded(invoke("run", "pixelcnn-sample", "--count", "2", "-o", tmp_path / "s", "--set", f"sample.model={model}"))
    samples = pngs(tmp_path / "s")
    assert [a.shape for a in samples.values()] == [(8, 8, 3)] * 2
    # Scoring loads images as the model learnt them: RGB; RGBA is refused before any work, naming the fix.
    line = error_line(invoke("run", "pixelcnn-outliers", root, "-o", tmp_path / "o", "--set", f"score.model={model}",
                             "--set", "load.mode=RGBA"))
    assert "'mode'" in line and 'mode = "RGB"' in line
    succeeded(invoke("run", "pixelcnn-outliers", root, "-o", tmp_path / "o", "--set", f"score.model={model}",
                     "--set", "load.mode=RGB"))
    with open(tmp_path / "o" / "scores.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_scores_given_a_class_are_judged_by_that_classs_thresholds(pixel_model, blobs, tmp_path):
    calibration = load_checkpoint(pixel_model).extra["calibration"]
    assert set(calibration["per_class"]) == {"a", "b"}
    out = tmp_path / "b"
    succeeded(invoke("run", "pixelcnn-outliers", blobs, "-o", out, "--set", f"score.model={pixel_model}",
                     "--set", "score.class_name=b"))
    with open(out / "scores.csv", newline="") as handle:
        thresholds = {row["threshold"] for row in csv.DictReader(handle)}
    assert thresholds == {f"{calibration['per_class']['b']['99']:.4f}"}
    line = error_line(invoke("run", "pixelcnn-outliers", blobs, "-o", tmp_path / "z", "--set",
                             f"score.model={pixel_model}", "--set", "score.class_name=zebra"))
    assert "class_name 'zebra'" in line


def test_with_several_data_folders_each_is_a_class_and_one_class_is_refused(blobs, tmp_path):
    run = tmp_path / "run"
    succeeded(invoke("train", "pixelcnn", "--data", blobs / "a", "--data", blobs / "b", *PIXEL_RUN, "--out", run))
    assert load_checkpoint(run / "model.safetensors").extra["classes"] == ["a", "b"]
    line = error_line(invoke("train", "pixelcnn", "--data", blobs / "a", "--data", blobs / "a", *PIXEL_RUN,
                             "--out", tmp_path / "one"))
    assert "at least two classes" in line


SPEECH = ROOT / "examples" / "speech"


@pytest.fixture(scope="module")
def speech_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    for wav in sorted(SPEECH.glob("*.wav")):
        (root / wav.name[:3]).mkdir(exist_ok=True)
        shutil.copy(wav, root / wav.name[:3] / wav.name)
    run = root / "run"
    succeeded(invoke("train", "pixelcnn", "--data", root / "kal", "--data", root / "slt", "--codes-from",
                     "speech-vqvae", "--conditional", "--preset", "tiny", "--out", run))
    return root, run / "model.safetensors"


def test_a_speech_code_prior_babbles_in_each_voice_at_the_length_asked(speech_model, tmp_path):
    import soundfile as sf

    root, model = speech_model
    ckpt = load_checkpoint(model)
    assert ckpt.extra["layout"] == "time" and ckpt.extra["classes"] == ["kal", "slt"]
    assert ckpt.extra["map_size"] == [PRESETS["tiny"]["segment"], 4]  # 4 codes (groups) per position
    speech = ckpt.extra["speech"]
    out = tmp_path / "babble"
    succeeded(invoke("run", "sample-codes-speech", "--count", "2", "-o", out, "--set", f"sample.model={model}",
                     "--set", "sample.seconds=0.5"))
    rows = -(-0.5 * speech["sample_rate"] // (speech["hop_length"] * speech["frames_per_row"]))
    for wav in sorted(out.glob("*.wav")):
        audio, rate = sf.read(wav)
        assert rate == speech["sample_rate"]
        assert len(audio) == rows * speech["frames_per_row"] * speech["hop_length"]
        assert np.abs(audio).max() > 1e-3  # a voice, not silence
    assert len(list(out.glob("*.wav"))) == 2
    # An image pipeline is refused for it in one line.
    line = error_line(invoke("run", "sample-codes", "--count", "1", "-o", tmp_path / "img",
                             "--set", f"sample.model={model}"))
    assert line.startswith("Error:")


def test_a_speech_code_prior_is_evaluated_in_nats_per_code_with_speakers_from_one_folder(speech_model, tmp_path):
    root, model = speech_model
    report = tmp_path / "eval.json"
    # One --data folder holding kal/ and slt/: the speakers are its sub-folders, as in training with two.
    result = succeeded(invoke("eval", "pixelcnn", "--model", model, "--data", root, "--json", report))
    figures = json.loads(report.read_text())
    assert figures["items"] == 4 and figures["unit"] == "nats/code"
    assert 0 < figures["nll"] < 1.2 * figures["baseline"]["uniform"]
    assert "nll_given_class" in figures and "held-out recordings" in result.output
