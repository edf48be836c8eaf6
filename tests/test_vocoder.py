"""The Vocos vocoder: the differentiable STFT, the network's masks and chunks, training, the stage, evaluation."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from transmute import dsp, run
from transmute.checkpoint import read_metadata
from transmute.cli import cli
from transmute.errors import PipelineError
from transmute.pipeline import build_from_dict
from transmute.signals import FeatureSpec

SR = 22050
SPEC = FeatureSpec(sample_rate=SR, n_fft=1024, hop_length=256, n_mels=80, fmin=0, fmax=8000)


def buzz(f0, seconds, seed):
    """Harmonics of a drifting f0 under a slow envelope, with a pause in the middle."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.abs(np.sin(2 * np.pi * t / seconds)) * 3, 0, 1)
    return (0.3 * y / np.abs(y).max() * envelope).astype(np.float32)


@pytest.fixture(scope="session")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for name, f0 in (("low", 110), ("high", 220)):
        (root / name).mkdir()
        for i in range(3):
            sf.write(root / name / f"{name}-{i}.wav", buzz(f0, 1.0 + 0.2 * i, i), SR)
    return root


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def train_tiny(voices, out, *extra):
    return invoke("train", "vocoder", "--data", voices / "low", "--data", voices / "high", "--preset", "tiny",
                  "--out", out, *extra)


@pytest.fixture(scope="session")
def model(voices, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = train_tiny(voices, out, "--sample-every", "4")
    assert result.exit_code == 0, result.output
    return out / "model.safetensors"


# --------------------------------------------------------------------------- the one STFT, differentiable


def test_the_stft_gives_the_same_numbers_with_and_without_gradients():
    x = torch.randn(3, 6000)
    lengths = [6000, 3100, 700]
    reference, frames = dsp.stft(x, SPEC, lengths)
    tracked = x.clone().requires_grad_()
    spectra, _ = dsp.stft(tracked, SPEC, lengths)
    assert torch.equal(spectra.detach(), reference)
    audio = dsp.istft(reference, SPEC, lengths)
    spectra_in = reference.clone().requires_grad_()
    rebuilt = dsp.istft(spectra_in, SPEC, lengths)
    assert torch.allclose(rebuilt.detach(), audio, atol=1e-6)
    (rebuilt.square().sum() + spectra.abs().sum()).backward()
    assert tracked.grad is not None and spectra_in.grad is not None
    assert tracked.grad[2, 700:].abs().max() == 0  # past an item's end nothing reaches it
    # A gradient check of the round trip in float64 on a short item.
    small = FeatureSpec(sample_rate=8000, n_fft=16, hop_length=4, n_mels=0, log=False)
    x64 = torch.randn(1, 40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dsp.istft(dsp.stft(v, small)[0], small, [40]), (x64,))


# --------------------------------------------------------------------------- the network


def tiny_net(blocks=2, phase_reference="time"):
    from transmute_vocoder.networks import Vocos

    torch.manual_seed(0)
    return Vocos(80, 1024, 16, 32, blocks, phase_reference=phase_reference).eval()


def test_an_item_sounds_the_same_alone_and_in_a_padded_batch():
    from transmute_vocoder.stages import synthesize

    net = tiny_net()
    mel = torch.randn(2, 80, 50)
    mel[1, :, 30:] = 0.0  # padding, as collate leaves it
    with torch.no_grad():
        both = synthesize(net, mel, SPEC, [50, 30], [50 * 256, 29 * 256])
        alone = synthesize(net, mel[1:, :, :30], SPEC, [30], [29 * 256])
    assert torch.allclose(both[1, : 29 * 256], alone[0], atol=1e-5)
    assert both[1, 29 * 256 :].abs().max() == 0


def test_chunks_reproduce_one_pass_exactly():
    from transmute_vocoder.networks import receptive_radius
    from transmute_vocoder.stages import synthesize

    net = tiny_net(blocks=3)
    mel = torch.randn(1, 80, 200)
    with torch.no_grad():
        whole = synthesize(net, mel, SPEC, [200], [199 * 256], chunk_frames=1000)
        pieces = synthesize(net, mel, SPEC, [200], [199 * 256], chunk_frames=16)
    assert torch.allclose(whole, pieces, atol=1e-5)
    # The radius is the real one: a change at frame 100 moves frames 100 +- radius and nothing further.
    radius = receptive_radius(3)
    with torch.no_grad():  # large weights: a change must not fade below float precision over 12 frames
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    changed = mel.clone()
    changed[:, :, 100] += 1.0
    with torch.no_grad():
        a, _ = net(mel)
        b, _ = net(changed)
    moved = ((a - b).abs().amax(dim=1)[0] > 0).nonzero().flatten()
    assert moved.min() == 100 - radius and moved.max() == 100 + radius


def test_phase_loss_ignores_whole_turns_and_sees_errors():
    from transmute_vocoder.task import phase_loss

    phase = torch.rand(2, 513, 20) * 6
    weight = torch.ones_like(phase)
    assert phase_loss(phase + 2 * np.pi, phase, weight) < 1e-5
    assert phase_loss(phase + 0.5, phase, weight) > 0.49  # the instantaneous phase is off by 0.5 everywhere


# --------------------------------------------------------------------------- training


def test_training_records_the_feature_spec_and_writes_samples(model):
    run_dir = model.parent
    meta = read_metadata(model)
    assert (meta["plugin"], meta["model"]) == ("vocoder", "vocos")
    assert FeatureSpec.from_dict(meta["feature_spec"]) == SPEC
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step0000004-high.png", "step0000004-high.wav", "step0000004-low.png", "step0000004-low.wav"]
    audio, rate = sf.read(run_dir / "samples" / "step0000004-low.wav")
    assert rate == SR and len(audio) > SR // 2
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    losses = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert {"mel", "stft", "phase", "d_mpd", "d_mrd", "g_mpd", "fm_mrd"} <= set(losses)  # GAN from step 2


def test_resume_matches_an_uninterrupted_run(voices, tmp_path):
    from safetensors.torch import load_file

    whole, split = tmp_path / "whole", tmp_path / "split"
    hold = ("--sample-every", "0", "--hparam", "decay_from=4")  # the rate held: the same schedule for 2 or 4 steps
    assert train_tiny(voices, whole, "--steps", "4", *hold).exit_code == 0
    assert train_tiny(voices, split, "--steps", "2", *hold, "--workers", "2").exit_code == 0
    assert train_tiny(voices, split, "--steps", "4", *hold, "--resume").exit_code == 0
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_spec_from_trains_on_another_models_features(voices, tmp_path, model):
    from transmute_vocoder.task import VocoderTask, read_speech

    audio, _ = read_speech([voices / "low"], 16000)
    spec = FeatureSpec(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64)
    task = VocoderTask(audio, "tiny", spec=spec)
    assert task.generator().embed.in_channels == 64 and task.generator().head.out_features == 514


@pytest.mark.parametrize("hparam, message", [
    ("segment_samples=1000", "segment_samples must be at least 2048"),
    ("gan_from=-1", "gan_from must be a step >= 0, got -1"),
    ("lr=2", "lr must be a learning rate between 0 and 1, got 2"),
    ("min_gain_db=3", "need min_gain_db <= max_gain_db <= 0"),
])
def test_bad_hparams_are_one_line_errors(voices, tmp_path, hparam, message):
    result = train_tiny(voices, tmp_path / "run", "--hparam", hparam)
    assert result.exit_code != 0 and message in result.output


def test_too_little_audio_is_refused(tmp_path):
    (tmp_path / "short").mkdir()
    sf.write(tmp_path / "short" / "a.wav", buzz(100, 0.5, 0), SR)
    (tmp_path / "short" / "broken.wav").write_bytes(b"RIFF not really")
    result = invoke("train", "vocoder", "--data", tmp_path / "short", "--preset", "tiny", "--out", tmp_path / "run")
    assert result.exit_code != 0
    assert "0.5 s of readable audio; a vocoder needs at least 2 s" in result.output
    assert "broken.wav" in result.output


# --------------------------------------------------------------------------- the stage


def vocoder_pipeline(model, **mel):
    return {"stage": [{"use": "audio.load", "sample_rate": mel.pop("sample_rate", SR)},
                      {"use": "audio.logmel", "name": "mel", **({"spec_from": str(model)} if not mel else mel)},
                      {"use": "vocoder.synthesize", "model": str(model)},
                      {"use": "audio.save"}]}


@pytest.mark.parametrize("mel, field, want, got", [
    ({"n_mels": 128, "fmax": 8000}, "n_mels", 80, 128),
    ({"fmax": 11025}, "fmax", 8000.0, 11025.0),
    ({"fmax": 8000, "log_floor": 1e-9}, "log_floor", 1e-05, 1e-09),
    ({"sample_rate": 16000, "fmax": 8000}, "sample_rate", 22050, 16000),
])
def test_features_the_vocoder_was_not_trained_on_are_refused_before_any_compute(model, mel, field, want, got):
    with pytest.raises(PipelineError) as info:
        build_from_dict(vocoder_pipeline(model, **mel))
    message = str(info.value)
    assert f"field '{field}' expected {want!r}, got {got!r}" in message and "spec_from" in message


def test_resynthesis_keeps_each_files_length_in_a_mixed_batch(model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    lengths = {"a.wav": 12345, "b.wav": 30000, "c.wav": 700}
    for name, n in lengths.items():
        sf.write(src / name, buzz(150, n / SR, 1), SR)
    report = run(vocoder_pipeline(model), [src], tmp_path / "out", batch_size=3)
    assert not report.failed, report.failed
    for name, n in lengths.items():
        audio, rate = sf.read(tmp_path / "out" / name)
        assert rate == SR and len(audio) == n and np.isfinite(audio).all()


def test_the_shipped_vocoder_voices_speech():
    """The built-in model voices speech it was not trained on (the README has its figures: PESQ-WB 2.2-2.3).

    A regression guard: a damaged or wrongly loaded model, or a phase off by a frame, scores far lower."""
    from transmute.audio import read_audio
    from transmute_vocoder.evaluate import quality
    from transmute_vocoder.stages import load_vocoder, synthesize

    net, spec, _ = load_vocoder("festival-vocos")
    audio, _ = read_audio("examples/speech/slt-01.wav", spec.sample_rate)
    x = torch.from_numpy(audio[:, 0]).unsqueeze(0)
    with torch.no_grad():
        mel, frames = dsp.features(x, spec)
        y = synthesize(net, mel, spec, frames, [x.shape[1]])[0].numpy()
    figures = quality(audio[:, 0], y, spec.sample_rate)
    assert figures["stoi"] > 0.9 and figures["pesq"] > 2.0, figures  # measured: 0.933 and 2.41


def test_eval_vocoder_prints_every_figure_for_every_voice(model, voices, tmp_path):
    result = invoke("eval", "vocoder", "--model", model, "--data", voices / "low", "--data", voices / "high",
                    "--limit", "1", "--griffinlim-iters", "2", "--json", tmp_path / "figures.json")
    assert result.exit_code == 0, result.output
    for word in ("PESQ-WB", "STOI", "LSD dB", "MR-STFT", "vocoder", "griffinlim", "true-phase", "low", "high"):
        assert word in result.output
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert len(figures["files"]) == 2 * 3
    ceiling = figures["voices"]["low"]["true-phase"]
    assert ceiling["stoi"] > 0.9 and np.isfinite(list(ceiling.values())).all()


def test_a_setting_that_spec_from_would_replace_is_refused(model):
    doc = vocoder_pipeline(model)
    doc["stage"][1]["n_mels"] = 128
    with pytest.raises(PipelineError, match=r"n_mels = 128, but spec_from = .* whose n_mels is 80; drop n_mels"):
        build_from_dict(doc)
    doc["stage"][1]["n_mels"] = 80  # the model's own value is no conflict
    build_from_dict(doc)
