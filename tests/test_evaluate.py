"""`transmute eval vc`'s measures: pairing of files, mel-cepstral distortion, the real speaker encoder."""

import numpy as np
import pytest
import soundfile as sf

from transmute_cyclegan_vc.evaluate import SAMPLE_RATE, MCDVariant, evaluate, mcd_dtw, mel_cepstrum


def vowel(f0, formant, seconds=0.6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    y = sum(np.exp(-(((k * f0) - formant) / 300) ** 2) * np.sin(2 * np.pi * k * f0 * t) / k
            for k in range(1, int(6000 / f0)))
    return (0.3 * y / np.abs(y).max() + 1e-3 * rng.standard_normal(len(t))).astype(np.float32)


def test_files_pair_by_relative_path_not_by_name(tmp_path, fake_speaker_encoder):
    # Two sub-folders hold a file of the same name with different content: each must meet its own target.
    sounds = {"sub1": vowel(110, 700, seed=1), "sub2": vowel(220, 2300, seed=2)}
    for role in ("converted", "source", "target"):
        for sub, audio in sounds.items():
            (tmp_path / role / sub).mkdir(parents=True)
            sf.write(tmp_path / role / sub / "x.wav", audio, SAMPLE_RATE)
    (tmp_path / "target" / "sub2" / "x.wav").rename(tmp_path / "target" / "sub2" / "x.flac")  # extension aside
    sf.write(tmp_path / "target" / "sub2" / "x.flac", sounds["sub2"], SAMPLE_RATE, format="FLAC")
    report = evaluate(tmp_path / "converted", tmp_path / "source", tmp_path / "target", "a2b",
                      encoder=fake_speaker_encoder)
    assert report.pairs == 2
    assert sorted(row["name"] for row in report.per_utterance) == ["sub1/x", "sub2/x"]
    variant = MCDVariant()
    apart = mcd_dtw(mel_cepstrum(sounds["sub1"], variant), mel_cepstrum(sounds["sub2"], variant))
    # Each file met its own sound (FLAC's 16-bit rounding aside), never the other one's.
    assert all(row["mcd"] < 0.05 * apart for row in report.per_utterance), (apart, report.per_utterance)


def test_mcd_is_zero_for_the_same_sound_and_grows_with_the_difference():
    variant = MCDVariant()
    low, high = mel_cepstrum(vowel(110, 700), variant), mel_cepstrum(vowel(110, 2300), variant)
    near = mel_cepstrum(vowel(110, 800), variant)
    assert low.shape[1] == variant.order + 1 and len(low) == pytest.approx(0.6 * 1000 / 5, abs=2)
    assert mcd_dtw(low, low) == 0
    assert 0 < mcd_dtw(low, near) < mcd_dtw(low, high)


def test_mel_cepstrum_uses_the_project_stft():
    """Frames are the engine's centred, zero-padded frames: 1 + samples // hop of them."""
    from transmute import dsp

    audio = vowel(150, 1000, seconds=0.3)
    spec = MCDVariant().spec()
    spectra, frames = dsp.stft(__import__("torch").from_numpy(audio.astype(np.float64))[None], spec)
    assert spec.hop_length == 80 and frames[0] == 1 + len(audio) // 80
    energy = 10 * np.log10((spectra[0].abs() ** 2).sum(0).numpy() + 1e-12)
    assert len(mel_cepstrum(audio, MCDVariant())) == int((energy > energy.max() - 40).sum())


@pytest.mark.slow
def test_the_real_speaker_encoder_tells_two_voices_apart():
    from pathlib import Path

    from transmute_cyclegan_vc.evaluate import _read, speaker_encoder

    speech = Path(__file__).parents[1] / "examples" / "speech"
    embed = speaker_encoder()
    kal1, kal2, slt = (embed(_read(speech / name)) for name in ("kal-01.wav", "kal-02.wav", "slt-01.wav"))
    assert kal1.shape == (256,) and np.linalg.norm(kal1) == pytest.approx(1, abs=1e-3)
    assert kal1 @ kal2 > kal1 @ slt + 0.1


def test_unpaired_folders_are_refused_before_converting_naming_the_users_folders(tmp_path):
    from click.testing import CliRunner

    from transmute.cli import cli

    for role, name in (("source", "a1"), ("target", "b1")):
        (tmp_path / role).mkdir()
        sf.write(tmp_path / role / f"{name}.wav", vowel(110, 700), SAMPLE_RATE)
    result = CliRunner().invoke(cli, ["eval", "vc", "--source", str(tmp_path / "source"), "--target",
                                      str(tmp_path / "target"), "--converted", str(tmp_path / "converted")])
    assert result.exit_code == 1
    assert f"no file in {tmp_path / 'source'} has a file at the same relative path" in result.output
    assert not (tmp_path / "converted").exists()  # nothing was converted first
