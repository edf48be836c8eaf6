"""CycleGAN-VC: training on two synthetic speakers, conversion, chunking, bad input, evaluation."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from transmute.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from transmute.cli import cli
from transmute.errors import PipelineError, TransmuteError
from transmute.pipeline import build_from_dict
from transmute.plugins import get_manager

SR = 22050


def voice(f0, seconds, formants, seed):
    """A vowel-like buzz: harmonics of f0 shaped by a few formant peaks, with slow pitch drift."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    y = np.zeros_like(t)
    for k in range(1, int(5000 / f0)):
        gain = sum(np.exp(-((k * f0 - f) / 150) ** 2) for f in formants) + 0.02
        y += gain * np.sin(k * phase) / k
    envelope = np.clip(np.sin(np.pi * t / seconds) * 3, 0, 1)
    return (0.3 * y / np.abs(y).max() * envelope).astype(np.float32)


@pytest.fixture(scope="session")
def speakers(tmp_path_factory):
    root = tmp_path_factory.mktemp("speakers")
    for name, f0, formants in (("low", 110, (700, 1200)), ("high", 230, (400, 2300))):
        (root / name).mkdir()
        for i in range(6):
            sf.write(root / name / f"{name}-{i}.wav", voice(f0, 1.0 + 0.1 * i, formants, i), SR)
    return root


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def train_tiny(speakers, out, *extra):
    return invoke("train", "cyclegan-vc", "--a", speakers / "low", "--b", speakers / "high", "--preset", "tiny",
                  "--out", out, *extra)


# One short run serves every test that needs a trained model; its learning rate
# decays from step 4 so that the schedule is exercised too.
RUN = ("--steps", "8", "--checkpoint-every", "4", "--sample-every", "8", "--hparam", "decay_from=4")


@pytest.fixture(scope="session")
def model(speakers, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = train_tiny(speakers, out, *RUN)
    assert result.exit_code == 0, result.output
    return out / "model.safetensors"


def test_training_writes_model_samples_log_and_schedule(model):
    run = model.parent
    ckpt = load_checkpoint(model, plugin="cyclegan_vc", model="converter", version="1.0")
    assert {k.split("/")[0] for k in ckpt.tensors} == {"a2b", "b2a"}
    assert ckpt.extra["speakers"] == {"a": "low", "b": "high"}
    assert len(ckpt.extra["stats"]["a"]["mean"]) == 80
    assert ckpt.feature_spec["kind"] == "spectrogram" and ckpt.spec().n_mels == 80
    names = sorted(p.name for p in (run / "samples").iterdir())
    assert names == ["step0000008-a2b.png", "step0000008-a2b.wav", "step0000008-b2a.png", "step0000008-b2a.wav"]
    audio, sr = sf.read(run / "samples" / "step0000008-a2b.wav")
    assert sr == SR and np.isfinite(audio).all() and len(audio) > SR // 2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [4, 8] and all(np.isfinite(line["cycle"]) for line in log)
    state = load_checkpoint(run / "checkpoints" / "last.safetensors")
    # The schedule is the checkpoint's: linear from step 4 to zero at step 8.
    assert state.extra["schedulers"]["g"]["last_epoch"] == 8
    assert state.extra["optimizers"]["g"]["param_groups"][0]["lr"] == 0.0
    assert state.extra["optimizers"]["d"]["param_groups"][0]["lr"] == 0.0
    assert not [k for k in state.tensors if k.startswith("rng/data")]


def test_resume_with_workers_matches_an_uninterrupted_run(model, speakers, tmp_path):
    # Half the run in two worker processes, the rest in the main one: the same batches, the same weights.
    half = ("--steps", "4") + RUN[2:]
    assert train_tiny(speakers, tmp_path / "split", *half, "--workers", "2").exit_code == 0
    result = train_tiny(speakers, tmp_path / "split", *RUN, "--resume")
    assert result.exit_code == 0, result.output
    a = load_checkpoint(model).tensors
    b = load_checkpoint(tmp_path / "split" / "model.safetensors").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A longer run follows the decay to the new end: step 10 of 12 (index 9) runs at 1 - 5/8 of the base
    # rate, where the 8-step run had reached zero.
    result = train_tiny(speakers, tmp_path / "split", "--steps", "12", *RUN[2:], "--resume")
    assert result.exit_code == 0, result.output
    log = {line["step"]: line for line in map(json.loads, (tmp_path / "split" / "log.jsonl").read_text().splitlines())}
    assert sorted(log) == [4, 8, 10, 12]
    assert log[8]["lr/g"] == pytest.approx(2e-4 * (1 - 3 / 4)) and log[8]["lr/d"] == pytest.approx(1e-4 * (1 - 3 / 4))
    assert log[10]["lr/g"] == pytest.approx(2e-4 * (1 - 5 / 8)) and log[12]["lr/g"] == pytest.approx(2e-4 / 8)


def test_convert_voice_both_directions_keeps_length(model, speakers, tmp_path):
    for direction, folder in (("a2b", "low"), ("b2a", "high")):
        out = tmp_path / direction
        result = invoke("convert-voice", speakers / folder, "-o", out, "--model", model, "--direction", direction,
                        "--griffinlim-iters", "4")
        assert result.exit_code == 0, result.output
        for src in (speakers / folder).iterdir():
            y, sr = sf.read(out / src.name)
            assert sr == SR and len(y) == sf.info(src).frames and np.isfinite(y).all()


def test_other_rates_and_bad_audio_give_valid_output_or_one_line_errors(model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "silence.wav", np.zeros(16000), 16000)
    sf.write(src / "noise.wav", np.random.default_rng(0).uniform(-1, 1, 22050), 22050)
    sf.write(src / "one.wav", np.array([0.3]), 22050)
    sf.write(src / "clipped.wav", np.clip(voice(120, 1.0, (600, 1500), 0) * 20, -1, 1), 44100)
    (src / "broken.wav").write_text("not audio")
    result = invoke("convert-voice", src, "-o", tmp_path / "out", "--model", model, "--griffinlim-iters", "4")
    assert result.exit_code == 1
    assert [l for l in result.output.splitlines() if l.startswith("FAILED")] == [
        f"FAILED {src / 'broken.wav'}: not a readable audio file (Format not recognised.)"]
    for name, frames in (("silence", 22050), ("noise", 22050), ("one", 1), ("clipped", 11025)):
        y, _ = sf.read(tmp_path / "out" / f"{name}.wav")
        assert abs(len(y) - frames) <= 1 and np.isfinite(y).all() and np.abs(y).max() <= 1, name


def test_chunked_conversion_has_no_seams(model):
    from transmute_cyclegan_vc.stages import convert_chunked, load_converter

    def context_dependent(x):  # like instance norm: each chunk's output shifts with the chunk's own content
        return x + 3 * x.mean(dim=-1, keepdim=True)

    torch.manual_seed(0)
    x = torch.cumsum(torch.randn(1, 80, 600) * 0.05, dim=-1)[0]  # smooth features: small frame-to-frame change

    def jumps(y):
        return (y[:, 1:] - y[:, :-1]).abs().mean(dim=0)

    hard = jumps(convert_chunked(context_dependent, x, 64, 0))  # chunks without cross-fade: seams show
    soft = jumps(convert_chunked(context_dependent, x, 64, 16))
    inside = jumps(x).median()
    assert hard.max() > 5 * inside, "the test must be able to see a seam"
    assert soft.max() < 2 * hard.max() / 5 and soft.max() < 4 * inside
    from transmute import dsp

    net, source_norm, _, _ = load_converter(str(model), "a2b")
    with torch.no_grad():
        real = convert_chunked(net, dsp.normalize(x.unsqueeze(0), source_norm)[0], 64, 16)
    assert real.shape == x.shape and torch.isfinite(real).all()


def test_features_that_differ_from_the_models_are_refused(model):
    registry = get_manager().registry
    doc = {"stage": [{"use": "audio.load", "sample_rate": 22050}, {"use": "audio.logmel", "n_mels": 64, "name": "mel"},
                     {"use": "cyclegan_vc.convert", "name": "convert", "model": str(model)},
                     {"use": "audio.mel_to_linear"}, {"use": "audio.griffinlim"}, {"use": "audio.save"}]}
    with pytest.raises(PipelineError, match=r"stage 'convert' \(cyclegan_vc.convert\): incoming Spectrogram from "
                                            r"stage 'mel': field 'n_mels' expected 80, got 64; .*spec_from"):
        build_from_dict(doc, registry, source="vc.toml")
    doc["stage"][1] = {"use": "audio.logmel", "name": "mel", "spec_from": str(model)}
    doc["stage"][0]["sample_rate"] = 16000
    with pytest.raises(PipelineError, match=r"takes 22050 Hz features, but the incoming audio is 16000 Hz"):
        build_from_dict(doc, registry, source="vc.toml")


def test_a_checkpoint_of_another_kind_or_missing_is_refused(model, tmp_path, speakers):
    other = tmp_path / "other.safetensors"
    from transmute.signals import FeatureSpec

    save_checkpoint(other, Checkpoint(tensors={"w": torch.ones(1)}, plugin="vocoder", model="hifigan",
                                      version="1.0", feature_spec=FeatureSpec(fmax=8000).to_dict()))
    for ref, message in ((other, "is a vocoder/hifigan checkpoint, not a cyclegan_vc/converter"),
                         (tmp_path / "nope.safetensors", "no such checkpoint file")):
        result = invoke("convert-voice", speakers / "low", "-o", tmp_path / "out", "--model", ref)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1


def test_eval_vc_reports_the_figures(model, speakers, tmp_path, fake_speaker_encoder):
    target = tmp_path / "target"
    target.mkdir()
    for src in (speakers / "low").iterdir():  # a 'parallel' set: same names
        shutil.copy(speakers / "high" / src.name.replace("low", "high"), target / src.name)
    report = tmp_path / "report.json"
    result = invoke("eval", "vc", "--model", model, "--source", speakers / "low", "--target", target,
                    "--json", report)
    assert result.exit_code == 0, result.output
    for text in ("6 parallel utterances", "MCD in dB: mel-cepstrum c1..c24 (c0 excluded), all-pass alpha 0.42, 5 ms",
                 "MCD converted -> target:", "(source -> target:", "closer to the target than to the source",
                 "mean cosine to target centroid", "log-F0: converted mean"):
        assert text in result.output, text
    import json

    data = json.loads(report.read_text())
    assert data["pairs"] == 6 and len(data["per_utterance"]) == 6
    assert data["mcd_source"] > 0 and np.isfinite(data["mcd_converted"])


@pytest.mark.skipif(shutil.which("festival") is None, reason="festival is not installed (apt-get install festival "
                    "festvox-kallpc16k festvox-us-slt-hts); .ci/run installs it")
def test_festival_corpus_is_non_parallel_for_training_and_parallel_for_evaluation(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "festival_corpus.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "c"), "--train", "3", "--eval", "2"], check=True,
                   capture_output=True)
    rows = dict(line.split("\t") for line in (tmp_path / "c" / "sentences.tsv").read_text().splitlines())
    kal = {t for p, t in rows.items() if p.startswith("train/kal/")}
    slt = {t for p, t in rows.items() if p.startswith("train/slt/")}
    assert len(kal) == len(slt) == 3 and not kal & slt
    assert [rows[f"eval/kal/eval-000{i}.wav"] for i in range(2)] == [rows[f"eval/slt/eval-000{i}.wav"] for i in range(2)]
    assert not {rows["eval/kal/eval-0000.wav"]} & (kal | slt)
    assert sf.info(tmp_path / "c" / "train" / "kal" / "kal-0000.wav").samplerate == 16000
    assert sf.info(tmp_path / "c" / "train" / "slt" / "slt-0000.wav").samplerate == 32000


def test_silence_stays_silent_alone_and_inside_speech(model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    speech = voice(120, 1.0, (600, 1500), 3)
    gap = np.zeros(3 * SR, dtype=np.float32)  # longer than a chunk (256 frames is 3 s)
    sf.write(src / "gap.wav", np.concatenate([speech, gap, speech]), SR)
    sf.write(src / "silence.wav", np.zeros(2 * SR), SR)
    result = invoke("convert-voice", src, "-o", tmp_path / "out", "--model", model, "--griffinlim-iters", "4")
    assert result.exit_code == 0, result.output
    silence, _ = sf.read(tmp_path / "out" / "silence.wav")
    assert np.sqrt(np.mean(silence**2)) < 1e-3
    y, _ = sf.read(tmp_path / "out" / "gap.wav")
    rms = lambda a: np.sqrt(np.mean(a**2))  # noqa: E731
    inside = y[len(speech) + SR // 2 : len(speech) + len(gap) - SR // 2]
    assert rms(inside) < 0.01 * rms(y[: len(speech)]), (rms(inside), rms(y[: len(speech)]))


@pytest.mark.parametrize("hparam, message", [
    ("max_mask_frames=100", "max_mask_frames must be at least 0 and below segment_frames (32), got 100"),
    ("batch_size=0", "batch_size must be a whole number of at least 1, got 0"),
    ("gen_channels=3", "gen_channels must be even"),
    ("lr_g=nan", "lr_g must be a learning rate between 0 and 1, got nan"),
])
def test_bad_hparams_are_one_line_errors(speakers, tmp_path, hparam, message):
    result = train_tiny(speakers, tmp_path / "run", "--hparam", hparam)
    assert result.exit_code == 1 and message in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ")


def test_too_little_audio_and_unreadable_training_files(speakers, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    sf.write(few / "one.wav", np.array([0.2]), SR)
    result = invoke("train", "cyclegan-vc", "--a", few, "--b", speakers / "high", "--preset", "tiny",
                    "--out", tmp_path / "run")
    assert result.exit_code == 1 and "too little audio to learn a voice from" in result.output
    mixed = tmp_path / "mixed"
    shutil.copytree(speakers / "low", mixed)
    (mixed / "broken.wav").write_text("not audio")
    result = invoke("train", "cyclegan-vc", "--a", mixed, "--b", speakers / "high", "--preset", "tiny",
                    "--steps", "1", "--out", tmp_path / "run2")
    assert result.exit_code == 0, result.output
    assert f"skipped {mixed / 'broken.wav'}: not a readable audio file" in result.output


def test_the_shipped_model_still_loads():
    from transmute.signals import FeatureSpec
    from transmute_cyclegan_vc import DEFAULT_MODEL, MODELS
    from transmute_cyclegan_vc.stages import load_converter

    net, source_norm, _, ckpt = load_converter(DEFAULT_MODEL, "a2b")
    assert "kind" not in ckpt.feature_spec  # written before specs were tagged: read as a spectrogram's
    assert isinstance(ckpt.spec(), FeatureSpec) and len(source_norm.mean) == 80
    assert ckpt.path == MODELS / f"{DEFAULT_MODEL}.safetensors"
    with torch.no_grad():
        assert net(torch.zeros(1, 80, 16)).shape == (1, 80, 16)


def test_a_damaged_converter_is_one_line(model, tmp_path, speakers):
    damaged = tmp_path / "damaged.safetensors"
    original = load_checkpoint(model)

    def damage(change, message):
        ckpt = load_checkpoint(model)
        change(ckpt)
        save_checkpoint(damaged, ckpt)
        result = invoke("convert-voice", speakers / "low", "-o", tmp_path / "out", "--model", damaged)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("Error: ") and result.output.endswith(f": {damaged}: {message}\n")

    key = "a2b/residual.0.gated.0.weight"
    damage(lambda c: c.hparams.pop("res_blocks"), "metadata field 'hparams.res_blocks' is missing; the checkpoint "
           "was made by another version of its plugin or is damaged")
    damage(lambda c: c.extra["stats"].pop("b"), "metadata field 'extra.stats.b' is missing; the checkpoint was made "
           "by another version of its plugin or is damaged")
    damage(lambda c: c.tensors.update({key: torch.zeros(3, 3)}), f"tensor '{key}' has shape [3, 3], the model "
           f"expects {list(original.tensors[key].shape)}; the checkpoint was made for other model settings")
    damage(lambda c: c.tensors.pop(key), f"tensor '{key}' is missing; the checkpoint was made for another model "
           "or is damaged")
    from transmute_cyclegan_vc.stages import load_converter

    ckpt = load_checkpoint(model)
    ckpt.feature_spec = {"kind": "images", "mode": "RGB"}
    save_checkpoint(damaged, ckpt)
    with pytest.raises(TransmuteError, match=r"damaged.safetensors: metadata field 'feature_spec' must describe a "
                                             r"spectrogram, got ImageSpec$"):
        load_converter(str(damaged), "a2b")


def test_bad_sample_weights_are_one_line(speakers, tmp_path):
    weights = tmp_path / "weights.csv"
    weights.write_text("a/low-0.wav,2\nb/high-1.wav,0\nlow-2.wav,1\n")
    result = train_tiny(speakers, tmp_path / "run", "--steps", "1", "--sample-weights", weights)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (f"Error: {weights}, line 3: no training item is named 'low-2.wav' "
                                              "(names look like 'a/low-0.wav')")


def test_leading_and_trailing_silence_is_trimmed_from_training_audio():
    from transmute.audio import trim_silence

    y = np.zeros((2 * SR, 2), dtype=np.float32)
    y[SR // 2 : 3 * SR // 2, 1] = voice(150, 1.0, (500, 1500), 0)  # speech in the second channel only
    y[:, 0] = 1e-4  # a hum 60 dB down, in the other
    trimmed = trim_silence(y, top_db=40, frame_length=1024, hop_length=256)
    speech_starts = int(np.flatnonzero(trimmed[:, 1] != 0)[0])
    assert speech_starts < 1024 and 0.95 * SR <= len(trimmed) <= SR + 2048  # within a frame of the speech
    assert trim_silence(np.zeros((100, 1)), 40).shape == (100, 1)  # all silence: kept as it is


def test_an_unusable_out_folder_is_said_before_the_recordings_are_read(speakers, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = invoke("train", "cyclegan-vc", "--a", speakers / "low", "--b", speakers / "high", "--preset", "tiny",
                    "--steps", "1", "--out", tmp_path / "file" / "run")
    assert result.exit_code == 1
    assert "reading" not in result.output
    assert f"{tmp_path / 'file' / 'run'}: cannot write to the run folder (not a directory)" in result.output


# --------------------------------------------------------------------------- level and pauses (the built-in model)


def _builtin_features(gain: float, noise_snr_db: float | None = None, pause_s: float = 0.0):
    """Log-mels of examples/speech/kal-01.wav at peak `gain`, with pauses and white noise if asked."""
    from transmute import dsp
    from transmute.audio import read_audio
    from transmute.checkpoint import model_feature_spec

    spec = model_feature_spec("kal-slt").replace(normalization=None)
    audio, _ = read_audio("examples/speech/kal-01.wav", spec.sample_rate)
    speech = audio[:, 0] / np.abs(audio).max() * gain
    pause = np.zeros(int(pause_s * SR), np.float32)
    x = np.concatenate([pause, speech, pause])
    if noise_snr_db is not None:
        noise = np.random.default_rng(0).standard_normal(len(x))
        x = x + noise * np.sqrt(np.mean(speech**2) / 10 ** (noise_snr_db / 10))
    mel, _ = dsp.features(torch.from_numpy(x.astype(np.float32)).unsqueeze(0), spec)
    return mel[0], spec


def _convert(mel, spec, **params):
    import math

    from transmute_cyclegan_vc.stages import Convert

    stage = Convert(**params)
    stage.setup("cpu")
    with torch.no_grad():
        return stage.convert(mel, math.log(spec.log_floor))


def _level_db(mel):
    from transmute_cyclegan_vc.stages import frame_energy_db

    energy = frame_energy_db(mel)
    loud = energy > energy.max() - 30
    return float(10 * torch.log10((10 ** (energy[loud] / 10)).mean()))


@pytest.mark.slow
def test_the_output_keeps_the_inputs_loudness_and_the_conversion_ignores_it():
    loud, spec = _builtin_features(0.9)
    quiet, _ = _builtin_features(0.01)  # -40 dBFS peak
    out_loud, out_quiet = _convert(loud, spec), _convert(quiet, spec)
    assert abs(_level_db(out_loud) - _level_db(loud)) < 1.5
    assert abs(_level_db(out_quiet) - _level_db(quiet)) < 1.5  # not pulled up to the target's training level
    # The same recording 39 dB quieter converts to the same voice: compare with the gain taken out.
    shift = np.log(0.9 / 0.01)
    active = out_loud.max(dim=0).values > out_loud.max() - 5 * np.log(10) / 2  # within 25 dB of the peak
    difference_db = float((out_loud - shift - out_quiet)[:, active].abs().mean()) * 20 / np.log(10)
    assert difference_db < 3.0, difference_db  # 4.8 dB before inputs were levelled (2.3 dB after)
    # normalize: every input lands at the target speaker's training level.
    normal_loud = _convert(loud, spec, loudness="normalize")
    normal_quiet = _convert(quiet, spec, loudness="normalize")
    assert abs(_level_db(normal_loud) - _level_db(normal_quiet)) < 1.5


@pytest.mark.slow
def test_noise_in_pauses_stays_noise():
    from transmute_cyclegan_vc.stages import frame_energy_db

    noisy, spec = _builtin_features(0.9, noise_snr_db=10, pause_s=1.0)
    pause = slice(5, int(0.9 * SR / spec.hop_length))  # the first second holds only noise

    def flatness(mel):
        """Spectral flatness of the mel energies in the pause: near 1 for white noise, near 0 for a voice."""
        power = torch.exp(2 * mel[:, pause].double())
        return float((torch.exp(torch.log(power).mean(dim=0)) / power.mean(dim=0)).mean())

    kept, converted = _convert(noisy, spec), _convert(noisy, spec, pauses="convert")
    assert flatness(kept) > 0.5 * flatness(noisy)
    assert flatness(converted) < 0.6 * flatness(noisy)  # what the option guards against: a ghost voice
    level = lambda mel: float(frame_energy_db(mel[:, pause]).mean())  # noqa: E731
    assert level(kept) <= level(noisy) + 1.0


@pytest.mark.parametrize("vocoder, uses", [
    ("griffinlim", ["audio.mel_to_linear", "audio.griffinlim"]),
    ("festival-vocos", ["vocoder.synthesize"]),
])
def test_convert_voice_picks_what_voices_the_mels(vocoder, uses):
    from transmute_cyclegan_vc.commands import conversion_pipeline

    pipeline = conversion_pipeline(vocoder=vocoder, griffinlim_iters=7)
    between = [s.name for s in pipeline.stages[3:-1]]
    assert between == uses
    if vocoder == "griffinlim":
        assert pipeline.stages[4].n_iter == 7
    else:
        assert pipeline.stages[3].model == "festival-vocos"
