"""The VQ-VAE plugin: the hand codebook lookup, training in the engine's loop, stages, code files, pipelines, eval."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from PIL import Image

from transmute import run
from transmute.cli import cli
from transmute.errors import InputError, PipelineError
from transmute.pipeline import build_from_dict, read_pipeline
from transmute.signals import Images, ImageSpec, Spectrogram

SR = 22050


def squares(folder, count, size=28, seed=0, rgb=False):
    """Bright squares on black (or coloured squares on transparent, RGBA) at random places."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a = np.zeros((size, size, 4), np.uint8)
        x, y = rng.integers(1, size - 8, 2)
        a[y : y + 7, x : x + 7] = [*rng.integers(0, 256, 3), 255] if rgb else 255
        Image.fromarray(a if rgb else a[:, :, 0]).save(folder / f"{i:02d}.png")
    return folder


def hum(seconds, f0, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    return (0.3 * y / np.abs(y).max() * np.clip(np.sin(np.pi * t / seconds) * 3, 0, 1)).astype(np.float32)


def train(data, out, kind="images", *extra):
    result = CliRunner().invoke(cli, ["train", "vqvae", "--data", str(data), "--kind", kind, "--preset", "tiny",
                                      "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    return squares(tmp_path_factory.mktemp("digits") / "train", 12)


@pytest.fixture(scope="session")
def image_model(digits, tmp_path_factory):
    return train(digits, tmp_path_factory.mktemp("image-run"))


@pytest.fixture(scope="session")
def other_image_model(digits, tmp_path_factory):
    return train(digits, tmp_path_factory.mktemp("other-run"), "images", "--seed", "1")


@pytest.fixture(scope="session")
def two_level_model(digits, tmp_path_factory):
    return train(digits, tmp_path_factory.mktemp("two-level-run"), "images", "--hparam", "levels=2")


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech") / "voice"
    root.mkdir()
    for i, seconds in enumerate((1.0, 0.73, 1.31)):  # lengths that are no multiple of the hop or the downsample
        sf.write(root / f"v{i}.wav", hum(seconds, 110 + 40 * i, i), SR)
    return root


@pytest.fixture(scope="session")
def speech_model(speech, tmp_path_factory):
    return train(speech, tmp_path_factory.mktemp("speech-run"), "speech")


def stage(name, **params):
    from transmute.plugins import get_manager

    return get_manager().registry.stages[name](**params)


# --------------------------------------------------------------------------- quantiser


def test_the_hand_lookup_gives_the_library_codes():
    from vector_quantize_pytorch import VectorQuantize

    from transmute_vqvae.networks import nearest_codes
    from transmute_vqvae.task import library_codebook

    torch.manual_seed(0)
    quantizer = VectorQuantize(dim=8, codebook_size=64, kmeans_init=True, rotation_trick=False)
    quantizer(torch.randn(4, 100, 8))  # k-means initialisation and one EMA update
    quantizer.eval()
    vectors = torch.randn(3, 200, 8) * 2
    with torch.no_grad():
        _, library, _ = quantizer(vectors)
    ours = nearest_codes(vectors, library_codebook(quantizer))
    assert ours.shape == library.shape
    assert torch.equal(ours, library)
    assert len(ours.unique()) > 10  # a real test: many different codes


def test_straight_through_gradients_reach_the_encoder():
    from transmute_vqvae.networks import PRESETS, VQVAE
    from transmute_vqvae.task import Trainable, make_quantizer

    torch.manual_seed(0)
    for levels in (1, 2):
        h = dict(PRESETS["tiny"], levels=levels)
        net = VQVAE(1, h, 2)
        trainable = Trainable(net, [make_quantizer(h) for _ in range(levels)])
        x = torch.randn(2, 1, 8, 8)
        recon, codes, commit = trainable(x)
        torch.nn.functional.mse_loss(recon, x).backward()  # the reconstruction loss alone, no commitment
        encoders = [net.encoder] + ([net.encoder_top] if levels == 2 else [])
        for encoder in encoders:
            grads = [p.grad for p in encoder.parameters()]
            assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
        assert [tuple(i.shape) for i, _ in codes] == [(2, 16), (2, 4)][:levels] and recon.shape == x.shape


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("dims", [1, 2])
def test_the_exported_lookup_gives_the_training_codes_at_every_level(levels, dims):
    from transmute_vqvae.networks import PRESETS, VQVAE, encode
    from transmute_vqvae.task import Trainable, library_codebook, make_quantizer

    torch.manual_seed(0)
    h = dict(PRESETS["tiny"], levels=levels, groups=2)
    net = VQVAE(3, h, dims)
    quantizers = [make_quantizer(h) for _ in range(levels)]
    trainable = Trainable(net, quantizers)
    x = torch.randn(4, 3, *((16, 24) if dims == 2 else (24,)))
    trainable(x)  # k-means initialisation of every level's codebook
    trainable.eval()
    with torch.no_grad():
        _, library, _ = trainable(x)
        ours = encode(net, [library_codebook(q) for q in quantizers], x)
    assert torch.equal(ours, net.code_grid(library))
    assert [torch.equal(a, b) for (a, _), (b, _) in zip(net.split_levels(ours), library)] == [True] * levels


@pytest.mark.parametrize("dims", [1, 2])
def test_several_codes_per_position_stack_as_rows_and_decode_back(dims):
    from transmute_vqvae.networks import PRESETS, VQVAE, decode, encode

    torch.manual_seed(0)
    for levels, shape in ((1, (2, 8, 6) if dims == 2 else (2, 2, 6)), (2, (2, 12, 6) if dims == 2 else (2, 4, 6))):
        # rows: 2 groups x 4 rows (images) or 2 groups (speech), then the top level's, half as many and as wide
        net = VQVAE(3, dict(PRESETS["tiny"], groups=2, levels=levels), dims).eval()
        codebooks = [torch.randn(16, PRESETS["tiny"]["code_dim"]) for _ in range(levels)]
        x = torch.randn(2, 3, *((8, 12) if dims == 2 else (12,)))
        codes = encode(net, codebooks, x)
        assert codes.shape == shape
        assert decode(net, codebooks, codes).shape == x.shape
        assert torch.equal(net.code_grid(net.split_levels(codes)), codes)


# --------------------------------------------------------------------------- training


def test_training_writes_a_model_logs_telemetry_and_resumes_exactly(digits, tmp_path):
    from safetensors.torch import load_file

    whole = train(digits, tmp_path / "whole")
    train(digits, tmp_path / "split", "images", "--steps", "10")
    resumed = train(digits, tmp_path / "split", "images", "--steps", "20", "--resume")
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert set(a) == set(b) and "codebook" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert {"recon", "commit", "perplexity", "codes_in_use"} <= set(lines[-1])
    for line in lines:
        assert 1.0 <= line["perplexity"] <= 16 and 0 < line["codes_in_use"] <= 1
    split = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert split[-1]["step"] == 20 and split[-1]["recon"] == pytest.approx(lines[-1]["recon"], rel=1e-5)
    assert split[-1]["codes_in_use"] == lines[-1]["codes_in_use"]  # the usage window is resumed too


def test_a_two_level_model_trains_logs_both_levels_and_round_trips(two_level_model, tmp_path):
    from safetensors.torch import load_file

    from transmute_vqvae.codefile import read_codes

    assert {"codebook", "codebook_top"} <= set(load_file(str(two_level_model)))
    line = json.loads((two_level_model.parent / "log.jsonl").read_text().splitlines()[-1])
    assert {"perplexity", "codes_in_use", "perplexity_top", "codes_in_use_top"} <= set(line)
    squares(tmp_path / "in", 2, size=30)  # padded to a multiple of 4 (2 levels of downsample 2), cropped back
    model = str(two_level_model)
    report = run("vqvae-encode-images", [tmp_path / "in"], tmp_path / "codes", overrides=[f"encode.model={model}"])
    assert not report.failed
    codes, meta = read_codes(tmp_path / "codes" / "00.codes")
    assert tuple(codes.shape) == (16 + 8, 16) and meta["source_size"] == [30, 30]  # bottom 16x16, top 8x8
    report = run("vqvae-decode-images", [tmp_path / "codes"], tmp_path / "out",
                 overrides=[f"codes.model={model}", f"decode.model={model}"])
    assert not report.failed and Image.open(tmp_path / "out" / "00.png").size == (30, 30)


def test_colour_images_with_alpha_are_composited_onto_white(tmp_path):
    from transmute.imagedata import read_image_set

    squares(tmp_path / "emoji", 1, size=64, rgb=True)
    data, problems = read_image_set([tmp_path / "emoji"], 3, 32)
    image = data.tensor()[0]
    assert image.shape == (3, 32, 32) and not problems
    assert torch.allclose(image[:, 0, 0], torch.ones(3))  # transparent corner -> white


# --------------------------------------------------------------------------- stages and code files


def test_image_codes_survive_a_code_file_and_decode_at_the_input_size(image_model, tmp_path):
    squares(tmp_path / "in", 3, size=30)  # 30 is no multiple of the downsample: padded, then cropped back
    model = str(image_model)
    report = run("vqvae-encode-images", [tmp_path / "in"], tmp_path / "codes", overrides=[f"encode.model={model}"])
    assert not report.failed and len(report.written) == 3
    from transmute_vqvae.codefile import read_codes

    encode = stage("vqvae.encode", model=model)
    encode.check(ImageSpec("L", (-1, 1)))
    encode.setup("cpu")
    loader = stage("images.load", mode="L", value_range=[-1, 1])
    for name in ("00", "01", "02"):
        direct = encode.process(loader.load(tmp_path / "in" / f"{name}.png"))
        codes, meta = read_codes(tmp_path / "codes" / f"{name}.codes")
        assert torch.equal(codes, direct.data[0]) and meta["source_size"] == [30, 30]
        assert meta["codebook_id"] == direct.spec.codebook_id and meta["format"] == "transmute-codes"
    report = run("vqvae-decode-images", [tmp_path / "codes"], tmp_path / "out",
                 overrides=[f"codes.model={model}", f"decode.model={model}"])
    assert not report.failed
    assert Image.open(tmp_path / "out" / "01.png").size == (30, 30)


def test_speech_codes_keep_frames_and_samples_through_a_code_file(speech_model, speech, tmp_path):
    from transmute_vqvae.codefile import read_codes

    model = str(speech_model)
    report = run("vqvae-encode-speech", [speech], tmp_path / "codes",
                 overrides=[f"mel.spec_from={model}", f"encode.model={model}"])
    assert not report.failed
    codes, meta = read_codes(tmp_path / "codes" / "v1.codes")
    samples = sf.info(str(speech / "v1.wav")).frames
    assert meta["sample_length"] == samples and meta["source_size"] == [1 + samples // 256]
    report = run("vqvae-decode-speech", [tmp_path / "codes"], tmp_path / "out",
                 overrides=[f"codes.model={model}", f"decode.model={model}"])
    assert not report.failed
    for i in range(3):
        assert sf.info(str(tmp_path / "out" / f"v{i}.wav")).frames == sf.info(str(speech / f"v{i}.wav")).frames


def test_codes_of_another_codebook_are_refused(image_model, other_image_model, tmp_path):
    squares(tmp_path / "in", 1)
    run("vqvae-encode-images", [tmp_path / "in"], tmp_path / "codes", overrides=[f"encode.model={image_model}"])
    mine = stage("vqvae.load_codes", model=str(image_model)).check(None).codebook_id
    theirs = stage("vqvae.load_codes", model=str(other_image_model)).check(None).codebook_id
    assert mine != theirs
    result = CliRunner().invoke(cli, ["run", "vqvae-decode-images", str(tmp_path / "codes"), "-o",
                                      str(tmp_path / "out"), "--set", f"codes.model={other_image_model}",
                                      "--set", f"decode.model={other_image_model}"])
    assert result.exit_code != 0
    line = next(line for line in result.output.splitlines() if "codebook" in line)
    assert "00.codes" in line and mine in line and theirs in line
    # Caught when the pipeline is built, where the specs say it.
    doc = {"stage": [{"use": "images.load", "mode": "L", "value_range": [-1, 1]},
                     {"use": "vqvae.encode", "model": str(image_model)},
                     {"use": "vqvae.decode_images", "model": str(other_image_model)}, {"use": "images.save"}]}
    with pytest.raises(PipelineError, match="codebook_id") as refused:
        build_from_dict(doc)
    assert mine in str(refused.value) and theirs in str(refused.value) and "\n" not in str(refused.value)


def test_a_damaged_or_foreign_code_file_is_one_line_naming_it(image_model, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "torn.codes").write_bytes(b"\x10\x00\x00\x00garbage")
    save_file({"codes": torch.zeros(2, 2, dtype=torch.int16)}, str(tmp_path / "in" / "foreign.codes"))
    result = CliRunner().invoke(cli, ["run", "vqvae-decode-images", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                      "--set", f"codes.model={image_model}", "--set", f"decode.model={image_model}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    torn = [line for line in result.output.splitlines() if "torn.codes" in line]
    foreign = [line for line in result.output.splitlines() if "foreign.codes" in line]
    assert torn and "not a code file" in torn[0]
    assert foreign and "not a transmute code file" in foreign[0]
    with pytest.raises(InputError, match="no 'transmute-codes' metadata"):
        stage("vqvae.load_codes", model=str(image_model)).load(tmp_path / "in" / "foreign.codes")


def test_an_item_has_the_same_codes_alone_or_in_a_batch(image_model, speech_model):
    torch.manual_seed(0)
    encode = stage("vqvae.encode", model=str(image_model))
    encode.check(ImageSpec("L", (-1, 1)))
    encode.setup("cpu")
    images = [Images(torch.rand(1, 1, 12, 16) * 2 - 1, ImageSpec("L", (-1, 1)), [f"i{i}"]) for i in range(3)]
    batch = encode.process(Images.collate(images))
    for item, batched in zip(images, batch.items()):
        assert torch.equal(encode.process(item).data, batched.data)
    speech = stage("vqvae.encode", model=str(speech_model))
    from transmute_vqvae.stages import model_meta, source_spec

    spec = source_spec(model_meta(str(speech_model)))
    speech.setup("cpu")
    mels = [Spectrogram(torch.randn(1, 80, n) - 4, spec, [f"m{n}"]) for n in (9, 20, 13)]
    batch = speech.process(Spectrogram.collate(mels))
    assert batch.source_sizes == [(9,), (20,), (13,)]
    for item, batched in zip(mels, batch.items()):
        assert torch.equal(speech.process(item).data, batched.data)


def test_the_stages_never_import_the_training_quantiser(image_model, tmp_path):
    squares(tmp_path / "in", 2)
    script = ("import sys, transmute\n"
              f"r = transmute.run('vqvae-image-codec', [{str(tmp_path / 'in')!r}], {str(tmp_path / 'out')!r}, "
              f"overrides=['encode.model={image_model}', 'decode.model={image_model}'])\n"
              "assert not r.failed, r.summary()\n"
              "print('vector_quantize_pytorch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --------------------------------------------------------------------------- pipelines and evaluation


def test_the_pipelines_build_with_trained_models(image_model, speech_model):
    models = {"images": str(image_model), "speech": str(speech_model)}
    for name in ("vqvae-image-codec", "vqvae-encode-images", "vqvae-decode-images", "vqvae-codec",
                 "vqvae-encode-speech", "vqvae-decode-speech"):
        doc, _ = read_pipeline(name)
        model = models["images" if "image" in name else "speech"]
        for entry in doc["stage"]:
            if entry["use"].startswith("vqvae.") and "model" in entry:
                entry["model"] = model
            if entry["use"] == "audio.logmel":
                entry["spec_from"] = model
        pipeline = build_from_dict(doc)
        assert pipeline.stages[-1].name in ("images.save", "audio.save", "vqvae.save_codes")


def test_eval_reports_psnr_and_codebook_use(image_model, digits, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "vqvae", "--model", str(image_model), "--data", str(digits),
                                      "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["images"] == 12 and len(figures["files"]) == 12
    assert figures["psnr"] == pytest.approx(np.mean([r["psnr"] for r in figures["files"]]))
    assert 0 < figures["codes_in_use"] <= 1 and 1 <= figures["perplexity"] <= 16
    assert f"{figures['psnr']:.2f} dB" in result.output


def test_speech_eval_puts_the_codec_beside_the_vocoder_alone(speech_model, speech, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "vqvae", "--model", str(speech_model), "--data", str(speech),
                                      "--limit", "2", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["bits_per_second"] == pytest.approx(np.log2(16) * 1 * SR / 256 / 2)  # tiny: 16 codes, 1 group
    methods = {"codec", "vocoder", "codec_griffinlim", "griffinlim"}
    assert set(figures["methods"]) == methods and figures["recordings"] == 2
    assert sorted((r["file"], r["method"]) for r in figures["files"]) == sorted(
        (str(speech / f"v{i}.wav"), m) for i in range(2) for m in methods)
    assert "codes + vocoder" in result.output and "vocoder alone" in result.output
    # Griffin-Lim from the true features is no worse than from the codes' reconstruction.
    assert figures["methods"]["griffinlim"]["stoi"] >= figures["methods"]["codec_griffinlim"]["stoi"] - 0.02


def test_eval_of_a_two_level_model_reports_each_level(two_level_model, digits, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "vqvae", "--model", str(two_level_model), "--data", str(digits),
                                      "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert len(figures["levels"]) == 2 and figures["levels"][0]["codes_in_use"] == figures["codes_in_use"]
    assert all(0 < level["codes_in_use"] <= 1 for level in figures["levels"])
    assert "top level: codes in use" in result.output
