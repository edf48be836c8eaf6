"""The one STFT of the project, and what is built on it.

Everything here is batched torch code that runs on any device and respects
per-item lengths: each item is padded as if it were alone (centre padding is
done per item, the overlap-add envelope is computed per item), so a batch gives
the same numbers as its items one by one. Mel filter banks come from librosa,
the reference implementation most vocoders share.

Every family plugin that needs spectrograms calls these functions with the
FeatureSpec it was trained on; nothing else in the project computes an STFT.
"""

from __future__ import annotations

import functools
import zlib
from typing import Sequence

import torch

from transmute.signals import FeatureSpec


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=32)
def _window_cpu(kind: str, win_length: int, n_fft: int) -> torch.Tensor:
    makers = {
        "hann": torch.hann_window,
        "hamming": torch.hamming_window,
        "blackman": torch.blackman_window,
    }
    if kind in makers:
        w = makers[kind](win_length, periodic=True, dtype=torch.float64)
    else:
        from scipy.signal import get_window

        w = torch.from_numpy(get_window(kind, win_length, fftbins=True))
    left = (n_fft - win_length) // 2
    return torch.nn.functional.pad(w, (left, n_fft - win_length - left))


def window(spec: FeatureSpec, device=None, dtype=torch.float32) -> torch.Tensor:
    """The analysis window, zero-padded to n_fft and centred, as librosa does."""
    return _window_cpu(spec.window, spec.win_length, spec.n_fft).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _mel_basis_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> torch.Tensor:
    import librosa

    basis = librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
        norm=None if norm == "none" else norm,
    )
    return torch.from_numpy(basis).to(torch.float32)


def mel_basis(spec: FeatureSpec, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) filter bank, exactly librosa.filters.mel."""
    return _mel_basis_cpu(
        spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, spec.htk, spec.mel_norm
    ).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _mel_pinv_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> torch.Tensor:
    basis = _mel_basis_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm).double()
    return torch.linalg.pinv(basis).float()


def _as_lengths(lengths: Sequence[int] | None, batch: int, full: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), full, dtype=torch.long, device=device)
    return torch.as_tensor(list(lengths), dtype=torch.long, device=device)


def frame_counts(spec: FeatureSpec, sample_lengths: Sequence[int]) -> list[int]:
    return [spec.n_frames(int(n)) for n in sample_lengths]


def _pad_items(x: torch.Tensor, lengths: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Pad each row of x (batch, samples) by `pad` on both sides as if it were alone.

    Rows are valid up to their length; 'reflect' mirrors each row about its own
    ends (repeatedly, like numpy, when the row is shorter than the padding).
    """
    batch, total = x.shape
    out_len = total + 2 * pad
    pos = torch.arange(out_len, device=x.device).unsqueeze(0) - pad  # (1, out_len)
    n = lengths.unsqueeze(1)  # (batch, 1)
    inside_item = pos < n + pad  # positions past the item's own padded end stay zero
    if mode == "reflect":
        period = torch.clamp(2 * (n - 1), min=1)
        idx = torch.remainder(pos, period)
        idx = torch.where(idx >= n, period - idx, idx)
        idx = torch.where(n == 1, torch.zeros_like(idx), idx)
        valid = inside_item
    elif mode == "constant":
        idx = pos.expand(batch, -1)
        valid = (pos >= 0) & (pos < n)
    else:
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {mode!r}")
    idx = idx.expand(batch, -1).clamp(0, max(total - 1, 0))
    return torch.gather(x, 1, idx) * valid.to(x.dtype)


def _frame_mask(frame_lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    return torch.arange(n_frames, device=frame_lengths.device).unsqueeze(0) < frame_lengths.unsqueeze(1)


# --------------------------------------------------------------------------- STFT


def stft(
    x: torch.Tensor, spec: FeatureSpec, lengths: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Complex STFT of (batch, samples) audio -> ((batch, n_fft//2+1, frames), frame counts).

    Frames past an item's own frame count are zero.
    """
    if x.dim() != 2:
        raise ValueError(f"stft expects (batch, samples), got shape {tuple(x.shape)}")
    batch, total = x.shape
    n = _as_lengths(lengths, batch, total, x.device)
    if spec.center:
        x = _pad_items(x, n, spec.n_fft // 2, spec.pad_mode)
    if x.shape[1] < spec.n_fft:
        x = torch.nn.functional.pad(x, (0, spec.n_fft - x.shape[1]))
    out = torch.stft(
        x, spec.n_fft, spec.hop_length, spec.n_fft,
        window=window(spec, x.device, x.dtype), center=False, return_complex=True,
    )
    frames = frame_counts(spec, n.tolist())
    mask = _frame_mask(torch.as_tensor(frames, device=x.device), out.shape[-1])
    return out * mask.unsqueeze(1), frames


class _Overlap:
    """Cached per-item overlap-add envelope for a fixed set of lengths."""

    def __init__(self, spec: FeatureSpec, frame_lengths: Sequence[int], sample_lengths: Sequence[int],
                 n_frames: int, device, dtype):
        self.spec = spec
        self.n_frames = n_frames
        self.win = window(spec, device, dtype)
        self.mask = _frame_mask(torch.as_tensor(list(frame_lengths), device=device), n_frames).to(dtype)
        self.samples = list(int(s) for s in sample_lengths)
        self.full = (n_frames - 1) * spec.hop_length + spec.n_fft
        sq = (self.win**2).view(1, -1, 1) * self.mask.unsqueeze(1)
        env = self._fold(sq)
        self.inv_env = torch.where(env > 1e-11, 1.0 / env.clamp_min(1e-11), torch.zeros_like(env))

    def _fold(self, frames: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.fold(
            frames, output_size=(1, self.full), kernel_size=(1, self.spec.n_fft),
            stride=(1, self.spec.hop_length),
        )
        return out.view(frames.shape[0], self.full)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        frames = torch.fft.irfft(X, n=spec.n_fft, dim=1) * self.win.view(1, -1, 1)
        y = self._fold(frames * self.mask.unsqueeze(1)) * self.inv_env
        start = spec.n_fft // 2 if spec.center else 0
        total = max(self.samples)
        y = y[:, start : start + total]
        if y.shape[1] < total:
            y = torch.nn.functional.pad(y, (0, total - y.shape[1]))
        keep = torch.arange(total, device=y.device).unsqueeze(0) < torch.as_tensor(self.samples, device=y.device).unsqueeze(1)
        return y * keep.to(y.dtype)


def istft(
    X: torch.Tensor, spec: FeatureSpec, frame_lengths: Sequence[int] | None = None,
    sample_lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Inverse of stft: (batch, bins, frames) complex -> (batch, samples) real."""
    batch, _, n_frames = X.shape
    if frame_lengths is None:
        frame_lengths = [n_frames] * batch
    if sample_lengths is None:
        sample_lengths = [(f - 1) * spec.hop_length + (0 if spec.center else spec.n_fft) for f in frame_lengths]
    ola = _Overlap(spec, frame_lengths, sample_lengths, n_frames, X.device, X.real.dtype)
    return ola(X)


# --------------------------------------------------------------------------- features


def features(
    x: torch.Tensor, spec: FeatureSpec, lengths: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """(batch, samples) audio -> (batch, n_bins, frames) features as `spec` describes.

    With the default spec this is HiFi-GAN's log-mel; with log=False, power=2 and
    mel_norm='slaney' it is librosa.feature.melspectrogram.
    """
    X, frames = stft(x, spec, lengths)
    mag = X.abs()
    if spec.power != 1.0:
        mag = mag**spec.power
    if spec.is_mel:
        mag = torch.matmul(mel_basis(spec, x.device, mag.dtype), mag)
    if spec.log:
        mag = torch.log(torch.clamp(mag, min=spec.log_floor))
    if spec.normalization is not None:
        mag = normalize(mag, spec.normalization)
    mask = _frame_mask(torch.as_tensor(frames, device=x.device), mag.shape[-1])
    return mag * mask.unsqueeze(1), frames


def _stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.view(1, -1, 1) if t.numel() > 1 else t.view(1, 1, 1)


def normalize(feats: torch.Tensor, norm) -> torch.Tensor:
    return (feats - _stats(norm.mean, feats)) / _stats(norm.std, feats)


def denormalize(feats: torch.Tensor, norm) -> torch.Tensor:
    return feats * _stats(norm.std, feats) + _stats(norm.mean, feats)


def to_linear_scale(feats: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Undo normalisation and log: back to (mel or linear) magnitude**power."""
    if spec.normalization is not None:
        feats = denormalize(feats, spec.normalization)
    if spec.log:
        feats = torch.exp(feats)
    return feats


def mel_to_linear(mel: torch.Tensor, spec: FeatureSpec, n_iter: int = 16) -> torch.Tensor:
    """Mel (magnitude**power, not log) -> linear-frequency magnitude, fast and bounded.

    Starts from the pseudo-inverse of the filter bank (clamped to be
    non-negative), then takes a fixed number of multiplicative updates towards
    the non-negative least-squares solution. Cost: a few small matmuls per
    frame, never an unbounded solver.
    """
    basis = mel_basis(spec, mel.device, mel.dtype)
    pinv = _mel_pinv_cpu(
        spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, spec.htk, spec.mel_norm
    ).to(device=mel.device, dtype=mel.dtype)
    mel = mel.clamp_min(0)
    lin = torch.matmul(pinv, mel).clamp_min(0)
    if n_iter > 0:
        tiny = torch.finfo(mel.dtype).tiny
        # A floor keeps multiplicative updates from freezing bins at exactly zero.
        lin = lin + 1e-3 * lin.mean(dim=1, keepdim=True) + tiny
        numerator = torch.matmul(basis.T, mel)
        gram = torch.matmul(basis.T, basis)
        for _ in range(n_iter):
            lin = lin * numerator / (torch.matmul(gram, lin) + 1e-10)
    if spec.power != 1.0:
        lin = lin.clamp_min(0) ** (1.0 / spec.power)
    return lin


# --------------------------------------------------------------------------- Griffin-Lim


def _initial_phase(shape, names: Sequence[str] | None, seed: int, init: str, device) -> torch.Tensor:
    batch, bins, frames = shape
    if init == "zeros":
        return torch.ones(shape, dtype=torch.complex64, device=device)
    phases = torch.empty((batch, bins, frames), dtype=torch.float32)
    for i in range(batch):
        # Seeded per item (by name), so an item gets the same phases in any batch.
        key = names[i] if names is not None and i < len(names) else str(i)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
        # Frame-major, so the first frames get the same draws whatever the padded width.
        phases[i] = torch.rand((frames, bins), generator=gen).T * (2 * torch.pi)
    return torch.polar(torch.ones_like(phases), phases).to(device)


def griffin_lim(
    magnitude: torch.Tensor,
    spec: FeatureSpec,
    frame_lengths: Sequence[int] | None = None,
    sample_lengths: Sequence[int] | None = None,
    n_iter: int = 32,
    momentum: float = 0.99,
    init: str = "random",
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): (batch, bins, frames) magnitude -> audio.

    Same update as librosa.griffinlim, batched, on any device.
    """
    batch, bins, n_frames = magnitude.shape
    if bins != spec.n_fft // 2 + 1:
        raise ValueError(f"griffin_lim needs {spec.n_fft // 2 + 1} linear bins, got {bins}")
    if frame_lengths is None:
        frame_lengths = [n_frames] * batch
    if sample_lengths is None:
        sample_lengths = [(f - 1) * spec.hop_length for f in frame_lengths]
    device = magnitude.device
    magnitude = magnitude.float() * _frame_mask(torch.as_tensor(frame_lengths, device=device), n_frames).unsqueeze(1)
    inverse = _Overlap(spec, frame_lengths, sample_lengths, n_frames, device, torch.float32)
    angles = _initial_phase(magnitude.shape, names, seed, init, device)
    rebuilt = torch.zeros_like(angles)
    accel = momentum / (1.0 + momentum)
    for _ in range(n_iter):
        previous = rebuilt
        audio = inverse(magnitude * angles)
        rebuilt, _ = stft(audio, spec, sample_lengths)
        rebuilt = rebuilt[..., :n_frames]
        angles = rebuilt - accel * previous
        angles = angles / (angles.abs() + 1e-16)
    return inverse(magnitude * angles)


def spectral_convergence(target_mag: torch.Tensor, audio: torch.Tensor, spec: FeatureSpec) -> float:
    """||S - |STFT(y)|||_F / ||S||_F, the usual Griffin-Lim quality figure."""
    rebuilt, _ = stft(audio, spec)
    frames = min(rebuilt.shape[-1], target_mag.shape[-1])
    diff = target_mag[..., :frames] - rebuilt.abs()[..., :frames]
    return float(torch.linalg.norm(diff) / torch.linalg.norm(target_mag[..., :frames]))
