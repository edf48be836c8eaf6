"""The one STFT: agreement with librosa, exact batching, inversion quality."""

import librosa
import numpy as np
import pytest
import torch

from transmute import dsp
from transmute.signals import FeatureSpec, Normalization

SR = 22050


def speechlike(seconds=1.0, seed=0):
    """A harmonic tone with vibrato plus a little noise: structured like voiced speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.2
    return (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_log_mel_matches_librosa(pad_mode, power):
    y = speechlike()
    spec = FeatureSpec(sample_rate=SR, pad_mode=pad_mode, power=power, fmax=8000)
    ours, frames = dsp.features(torch.from_numpy(y)[None], spec)
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=1024, hop_length=256, n_mels=80, fmax=8000, pad_mode=pad_mode, power=power
    )
    ref = np.log(np.maximum(mel, 1e-5))
    assert ours.shape == (1, 80, ref.shape[1]) and frames == [ref.shape[1]]
    assert np.abs(ours[0].numpy() - ref).max() < 1e-4


def test_linear_stft_matches_librosa_with_short_window():
    y = speechlike(0.5)
    spec = FeatureSpec(sample_rate=SR, n_fft=512, win_length=400, hop_length=160, n_mels=0, log=False)
    ours, _ = dsp.features(torch.from_numpy(y)[None], spec)
    ref = np.abs(librosa.stft(y, n_fft=512, win_length=400, hop_length=160, pad_mode="reflect"))
    assert np.abs(ours[0].numpy() - ref).max() < 1e-4 * ref.max()


def batch_of(*signals):
    lengths = [len(s) for s in signals]
    x = torch.zeros(len(signals), max(lengths))
    for i, s in enumerate(signals):
        x[i, : len(s)] = torch.from_numpy(s)
    return x, lengths


def test_batched_features_equal_unbatched():
    a, b = speechlike(0.3, seed=1), speechlike(0.9, seed=2)
    x, lengths = batch_of(a, b)
    spec = FeatureSpec(sample_rate=SR)
    batched, frames = dsp.features(x, spec, lengths)
    for i, s in enumerate((a, b)):
        alone, f = dsp.features(torch.from_numpy(s)[None], spec)
        assert frames[i] == f[0]
        assert torch.equal(batched[i, :, : f[0]], alone[0])
    assert frames[0] < frames[1] == batched.shape[-1], "the short item is padded; the long one fills the batch"
    assert batched[0, :, frames[0]:].abs().max() == 0, "frames past the short item's end are zero"


def test_istft_inverts_stft_per_item():
    a, b = speechlike(0.2, seed=3), speechlike(0.7, seed=4)
    x, lengths = batch_of(a, b)
    spec = FeatureSpec(sample_rate=SR)
    X, frames = dsp.stft(x, spec, lengths)
    y = dsp.istft(X, spec, lengths)
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-5)


def test_griffin_lim_batched_equals_unbatched_and_converges():
    a, b = speechlike(0.4, seed=5), speechlike(1.0, seed=6)
    x, lengths = batch_of(a, b)
    spec = FeatureSpec(sample_rate=SR, n_mels=0, log=False)
    X, frames = dsp.stft(x, spec, lengths)
    batched = dsp.griffin_lim(X.abs(), spec, frames, lengths, n_iter=16, names=["a", "b"])
    Xa, fa = dsp.stft(torch.from_numpy(a)[None], spec)
    alone = dsp.griffin_lim(Xa.abs(), spec, fa, [len(a)], n_iter=16, names=["a"])
    assert batched.shape == x.shape
    assert torch.allclose(batched[0, : len(a)], alone[0], atol=1e-6)
    assert batched[0, len(a):].abs().max() == 0
    sc = dsp.spectral_convergence(Xa.abs(), alone, spec)
    assert sc < 0.25, sc


@pytest.mark.parametrize("n", [1, 2, 3, 511, 1024])
def test_tiny_inputs_give_finite_output_of_the_same_length(n):
    spec = FeatureSpec(sample_rate=SR)
    x = torch.full((1, n), 0.1)
    feats, frames = dsp.features(x, spec)
    assert torch.isfinite(feats).all() and frames == [1 + n // 256]
    linear = dsp.mel_to_linear(torch.exp(feats), spec)
    y = dsp.griffin_lim(linear, spec, frames, [n], n_iter=4)
    assert y.shape == (1, n) and torch.isfinite(y).all()


def test_mel_to_linear_is_closer_than_the_pseudo_inverse():
    y = torch.from_numpy(speechlike(1.0))[None]
    lin_spec = FeatureSpec(sample_rate=SR, n_mels=0, log=False)
    mel_spec = FeatureSpec(sample_rate=SR, log=False)
    target, _ = dsp.features(y, lin_spec)
    mel, _ = dsp.features(y, mel_spec)
    errors = {}
    for n_iter in (0, 16):
        est = dsp.mel_to_linear(mel, mel_spec, n_iter)
        assert (est >= 0).all()
        # Projected back to mel, the estimate should reproduce the input mel.
        back = dsp.mel_basis(mel_spec) @ est
        errors[n_iter] = float((back - mel).norm() / mel.norm())
        assert float((est - target).norm() / target.norm()) < 0.6
    assert errors[16] < errors[0]


def test_normalization_round_trip():
    y = torch.from_numpy(speechlike(0.5))[None]
    spec = FeatureSpec(sample_rate=SR)
    feats, _ = dsp.features(y, spec)
    norm = Normalization(mean=tuple(feats.mean(dim=(0, 2)).tolist()), std=tuple(feats.std(dim=(0, 2)).tolist()))
    normed, _ = dsp.features(y, spec.replace(normalization=norm))
    assert abs(float(normed.mean())) < 1e-3
    back = dsp.to_linear_scale(normed, spec.replace(normalization=norm))
    assert torch.allclose(back, torch.exp(feats), rtol=1e-3, atol=1e-6)


def test_feature_spec_round_trips_through_json():
    spec = FeatureSpec(sample_rate=16000, n_mels=64, normalization=Normalization((0.5,), (2.0,), "kal"))
    import json

    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    with pytest.raises(ValueError, match="n_mel"):
        FeatureSpec.from_dict({"n_mel": 80})


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_linear_magnitudes_to_features_and_back(power):
    """A stage that edits |STFT| goes to features and back with the two public functions."""
    norm = Normalization(mean=(-4.0,), std=(2.0,))
    spec = FeatureSpec(sample_rate=SR, n_fft=256, hop_length=64, n_mels=0, power=power, normalization=norm)
    X, frames = dsp.stft(torch.from_numpy(speechlike(0.2))[None], spec)
    magnitude = X.abs()
    feats = dsp.magnitudes_to_features(magnitude, spec, frames)
    torch.testing.assert_close(feats, dsp.features(torch.from_numpy(speechlike(0.2))[None], spec)[0])
    back = dsp.features_to_magnitudes(feats, spec)
    above_floor = magnitude**power > spec.log_floor
    assert above_floor.float().mean() > 0.9
    torch.testing.assert_close(back[above_floor], magnitude[above_floor], rtol=1e-4, atol=1e-6)
    floor = spec.log_floor ** (1 / power)
    torch.testing.assert_close(back[~above_floor], torch.full_like(back[~above_floor], floor), rtol=1e-4, atol=0)


def _mel_round_trip():
    """(spec, |STFT|, frame counts, log-mel features, mel bands back from them) of half a second of speech."""
    spec = FeatureSpec(sample_rate=SR, power=2.0, fmax=8000)
    X, frames = dsp.stft(torch.from_numpy(speechlike(0.5))[None], spec)
    feats = dsp.magnitudes_to_features(X.abs(), spec, frames)
    return spec, X.abs(), frames, feats, dsp.features_to_magnitudes(feats, spec)


def test_mel_features_come_back_as_mel_bands_that_mel_to_linear_takes():
    spec, magnitude, frames, feats, mel_bands = _mel_round_trip()
    assert mel_bands.shape == (1, spec.n_mels, frames[0])
    expected = torch.matmul(dsp.mel_basis(spec), magnitude**2).clamp_min(spec.log_floor)
    torch.testing.assert_close(mel_bands, expected, rtol=1e-4, atol=1e-7)
    linear = dsp.mel_to_linear(mel_bands, spec)  # an estimate of |STFT|: back through the features, close
    again = dsp.magnitudes_to_features(linear, spec, frames)
    error = (again - feats).abs()
    assert error.median() < 0.01 and error.mean() < 0.2


def test_mel_bands_go_back_to_the_same_features():
    spec, magnitude, frames, feats, mel_bands = _mel_round_trip()
    torch.testing.assert_close(dsp.magnitudes_to_features(mel_bands, spec, frames, mel_bands=True), feats,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mel_bands=True needs a mel spec and 80 mel bands, got 513 rows"):
        dsp.magnitudes_to_features(magnitude, spec, mel_bands=True)


def test_magnitudes_to_features_wants_linear_bins():
    with pytest.raises(ValueError, match="needs 513 linear bins \\(n_fft 1024\\), got 80"):
        dsp.magnitudes_to_features(torch.ones(1, 80, 4), FeatureSpec())


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax, htk, norm", [
    (22050, 1024, 80, 0.0, 8000.0, False, "slaney"),
    (22050, 1024, 80, 0.0, 11025.0, False, "slaney"),
    (16000, 512, 40, 50.0, 7600.0, False, "none"),
    (44100, 2048, 128, 20.0, 22050.0, True, "slaney"),
    (24000, 1024, 100, 0.0, 12000.0, True, "none"),
    (8000, 256, 64, 0.0, 4000.0, False, "slaney"),  # more bands than the low bins can fill
])
def test_mel_filter_bank_is_librosas(sr, n_fft, n_mels, fmin, fmax, htk, norm):
    import warnings

    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about empty filters in the last case
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                                       norm=None if norm == "none" else norm)
    ours = dsp._mel_basis_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm).numpy()
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)


def test_mel_features_do_not_import_librosa(run_python):
    code = ("import sys, torch; from transmute import dsp; from transmute.signals import FeatureSpec; "
            "dsp.features(torch.randn(1, 4000), FeatureSpec()); "
            "print(sorted(m for m in ('librosa', 'scipy.signal', 'numba') if m in sys.modules))")
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
