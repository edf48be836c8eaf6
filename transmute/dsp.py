"""The one STFT of the project, and what is built on it.

Everything here is batched torch code that runs on any device and respects
per-item lengths: each item is padded as if it were alone (centre padding is
done per item, the overlap-add envelope is computed per item), so a batch gives
the same numbers as its items one by one. Mel filter banks are librosa's (the
reference most vocoders share), computed here as librosa computes them.

Every family plugin that needs spectrograms calls these functions with the
FeatureSpec it was trained on; nothing else in the project computes an STFT.
"""

from __future__ import annotations

import functools
import zlib
from typing import Sequence

import torch

from transmute.signals import FeatureSpec, length_mask


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


def hz_to_mel(hz, htk: bool = False):
    """librosa.hz_to_mel: the HTK formula, or Slaney's (linear to 1 kHz, logarithmic above)."""
    import numpy as np

    hz = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = hz / f_sp
    above = hz >= min_log_hz
    return np.where(above, min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep, mels)


def mel_to_hz(mels, htk: bool = False):
    """librosa.mel_to_hz, the inverse of hz_to_mel."""
    import numpy as np

    mels = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@functools.lru_cache(maxsize=32)
def _mel_basis_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> torch.Tensor:
    """librosa.filters.mel, step for step (its float32 rounding included; tests/test_dsp.py checks every
    option against librosa). Written out because importing librosa.filters pulls in scipy.signal and numba,
    about a second of every command's start-up, for one small matrix."""
    import numpy as np

    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    if norm == "slaney":  # equal area per filter
        weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return torch.from_numpy(weights)


def mel_basis(spec: FeatureSpec, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) filter bank, exactly librosa.filters.mel."""
    return _mel_basis_cpu(
        spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax, spec.htk, spec.mel_norm
    ).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _mel_pinv_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm) -> torch.Tensor:
    basis = _mel_basis_cpu(sr, n_fft, n_mels, fmin, fmax, htk, norm).double()
    return torch.linalg.pinv(basis).float()


def frame_counts(spec: FeatureSpec, sample_lengths: Sequence[int]) -> list[int]:
    return [spec.n_frames(int(n)) for n in sample_lengths]


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """numpy-style 'reflect' source indices for a row of n samples padded by `pad` each side."""
    src = torch.arange(n + 2 * pad, device=device) - pad
    if n == 1:
        return torch.zeros_like(src)
    period = 2 * (n - 1)
    idx = torch.remainder(src, period)
    return torch.where(idx >= n, period - idx, idx)


def _pad_items(x: torch.Tensor, lengths: Sequence[int], pad: int, mode: str,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Pad each row of x (batch, samples) by `pad` on both sides as if it were alone.

    Row i is valid up to lengths[i]; past its own padded end it is zero.
    'reflect' mirrors each row about its own ends (repeatedly, like numpy, when
    the row is shorter than the padding); 'constant' pads with zeros. `out`, if
    given, is a (batch, samples + 2 * pad) buffer to write into.
    """
    if mode not in ("reflect", "constant"):
        raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {mode!r}")
    batch, total = x.shape
    if out is None:
        out = x.new_empty(batch, total + 2 * pad)
    out[:, pad : pad + total].copy_(x)
    out[:, :pad].zero_()
    out[:, pad + total :].zero_()
    for i, n in enumerate(lengths):
        if n < total:
            out[i, pad + n :].zero_()
        if mode == "reflect" and pad:
            if n > pad:
                out[i, :pad] = x[i, 1 : pad + 1].flip(0)
                out[i, n + pad : n + 2 * pad] = x[i, n - pad - 1 : n - 1].flip(0)
            else:
                out[i, : n + 2 * pad] = x[i, _reflect_index(n, pad, x.device)]
    return out


# --------------------------------------------------------------------------- STFT


def _needs_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()

# Inside this module spectra are kept as (batch, frames, bins), contiguous along
# the FFT axis; the public functions return (batch, bins, frames).


class _Frames:
    """Analysis and synthesis for one batch layout (lengths fixed), with reusable buffers.

    Synthesis divides by each item's own overlap-add envelope, so items in a
    batch are reconstructed exactly as they would be alone. Buffers are kept
    between calls: Griffin-Lim calls both many times and would otherwise spend
    most of its time allocating and zeroing fresh memory.
    """

    def __init__(self, spec: FeatureSpec, sample_lengths: Sequence[int], device, dtype=torch.float32,
                 n_frames: int | None = None):
        self.spec = spec
        self.samples = [int(s) for s in sample_lengths]
        self.frame_counts = frame_counts(spec, self.samples)
        batch, total = len(self.samples), max(self.samples)
        self.total = total
        self.n_frames = n_frames or max(self.frame_counts)
        self.pad = spec.n_fft // 2 if spec.center else 0
        padded_len = max(total + 2 * self.pad, (self.n_frames - 1) * spec.hop_length + spec.n_fft)
        self.padded = torch.zeros(batch, padded_len, device=device, dtype=dtype)
        self.frames = torch.empty(batch, self.n_frames, spec.n_fft, device=device, dtype=dtype)
        self.win = window(spec, device, dtype)
        self.partial = any(f < self.n_frames for f in self.frame_counts)
        self.mask = None
        if self.partial:
            self.mask = length_mask(self.frame_counts, self.n_frames, device).to(dtype).unsqueeze(-1)  # (batch, frames, 1)
        self._inv_env = None
        self.tail = None
        if any(n < total for n in self.samples):
            lengths = torch.as_tensor(self.samples, device=device).unsqueeze(1)
            self.tail = (torch.arange(total, device=device).unsqueeze(0) < lengths).to(dtype)

    # ---------------------------------------------------------------- analysis
    def analyse(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, bins) complex; frames past an item's count are zero."""
        spec = self.spec
        if _needs_grad(x):  # a training loss: fresh tensors, no out= buffers (autograd cannot go through them)
            padded = _pad_items(x, self.samples, self.pad, spec.pad_mode)
            frames = padded.unfold(-1, spec.n_fft, spec.hop_length)[:, : self.n_frames]
            if frames.shape[1] < self.n_frames:
                frames = torch.nn.functional.pad(frames, (0, 0, 0, self.n_frames - frames.shape[1]))
            spectra = torch.fft.rfft(frames * self.win, dim=-1)
            return spectra * self.mask if self.mask is not None else spectra
        _pad_items(x, self.samples, self.pad, spec.pad_mode, out=self.padded[:, : x.shape[1] + 2 * self.pad])
        frames = self.padded.unfold(-1, spec.n_fft, spec.hop_length)[:, : self.n_frames]
        torch.mul(frames, self.win, out=self.frames)
        out = torch.fft.rfft(self.frames, dim=-1, out=out)
        if self.mask is not None:
            out.mul_(self.mask)
        return out

    # ---------------------------------------------------------------- synthesis
    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(batch, frames, n_fft) -> (batch, (frames - 1) * hop + n_fft)."""
        batch, n, n_fft = frames.shape
        hop = self.spec.hop_length
        if n_fft % hop == 0:  # the common case: n_fft / hop shifted block additions
            r_blocks = n_fft // hop
            blocks = frames.view(batch, n, r_blocks, hop)
            out = blocks[:, :, 0].new_zeros(batch, n + r_blocks - 1, hop)
            for r in range(r_blocks):
                out[:, r : r + n].add_(blocks[:, :, r])
            return out.view(batch, -1)
        full = (n - 1) * hop + n_fft
        out = torch.nn.functional.fold(
            frames.transpose(1, 2), output_size=(1, full), kernel_size=(1, n_fft), stride=(1, hop)
        )
        return out.view(batch, full)

    @property
    def inv_env(self) -> torch.Tensor:
        if self._inv_env is None:
            squared = (self.win**2).expand_as(self.frames)
            env = self._overlap_add(squared * self.mask if self.mask is not None else squared.contiguous())
            self._inv_env = torch.where(env > 1e-11, 1.0 / env.clamp_min(1e-11), torch.zeros_like(env))
        return self._inv_env

    def synthesize(self, spectra: torch.Tensor) -> torch.Tensor:
        """(batch, frames, bins) complex -> (batch, samples) real, each item its own length."""
        if _needs_grad(spectra):  # a vocoder in training: the same sums, out of place
            frames = torch.fft.irfft(spectra, n=self.spec.n_fft, dim=-1) * self.win
            if self.mask is not None:
                frames = frames * self.mask
            batch, n, n_fft = frames.shape
            full = (n - 1) * self.spec.hop_length + n_fft
            y = torch.nn.functional.fold(frames.transpose(1, 2), output_size=(1, full), kernel_size=(1, n_fft),
                                         stride=(1, self.spec.hop_length)).view(batch, full) * self.inv_env
            y = y[:, self.pad : self.pad + self.total]
            if y.shape[1] < self.total:
                y = torch.nn.functional.pad(y, (0, self.total - y.shape[1]))
            return y * self.tail if self.tail is not None else y
        torch.fft.irfft(spectra, n=self.spec.n_fft, dim=-1, out=self.frames)
        self.frames.mul_(self.win)
        if self.mask is not None:
            self.frames.mul_(self.mask)
        y = self._overlap_add(self.frames).mul_(self.inv_env)
        y = y[:, self.pad : self.pad + self.total]
        if y.shape[1] < self.total:
            y = torch.nn.functional.pad(y, (0, self.total - y.shape[1]))
        return y * self.tail if self.tail is not None else y


def stft(
    x: torch.Tensor, spec: FeatureSpec, lengths: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Complex STFT of (batch, samples) audio -> ((batch, n_fft//2+1, frames), frame counts).

    Frames past an item's own frame count are zero.
    """
    if x.dim() != 2:
        raise ValueError(f"stft expects (batch, samples), got shape {tuple(x.shape)}")
    lengths = [int(n) for n in lengths] if lengths is not None else [x.shape[1]] * x.shape[0]
    frames = _Frames(spec, lengths, x.device, x.dtype)
    return frames.analyse(x[:, : frames.total]).transpose(1, 2), frames.frame_counts


def istft(
    X: torch.Tensor, spec: FeatureSpec, sample_lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Inverse of stft: (batch, bins, frames) complex -> (batch, samples) real."""
    batch, _, n_frames = X.shape
    if sample_lengths is None:
        sample_lengths = [(n_frames - 1) * spec.hop_length + (0 if spec.center else spec.n_fft)] * batch
    frames = _Frames(spec, sample_lengths, X.device, X.real.dtype, n_frames=n_frames)
    return frames.synthesize(X.transpose(1, 2).contiguous())


# --------------------------------------------------------------------------- features


def features(
    x: torch.Tensor, spec: FeatureSpec, lengths: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """(batch, samples) audio -> (batch, n_bins, frames) features as `spec` describes.

    With the default spec these are HiFi-GAN's log-mel settings, framed centred
    (FeatureSpec says what differs from HiFi-GAN); with log=False, power=2 and
    pad_mode='constant' it is librosa.feature.melspectrogram with its defaults.
    Returns the features and each item's frame count.
    """
    X, frames = stft(x, spec, lengths)
    return magnitudes_to_features(X.abs(), spec, frames), frames


def magnitudes_to_features(
    magnitude: torch.Tensor, spec: FeatureSpec, frame_lengths: Sequence[int] | None = None,
    mel_bands: bool = False,
) -> torch.Tensor:
    """|STFT| (batch, n_fft // 2 + 1, frames) -> the features `spec` describes (batch, n_bins, frames).

    Applies, in order, what the spec says: power, mel projection (n_mels > 0),
    log (natural log of max(x, log_floor)) and normalisation. This is how
    `features` turns an STFT into features, so a stage that edits linear
    magnitudes gets back exactly what audio.logmel would have made. Frames past
    an item's `frame_lengths` are set to 0.0 (see transmute.signals.length_mask).

    mel_bands=True takes, for a mel spec, what features_to_magnitudes returns
    (mel_basis @ |STFT|**power, (batch, n_mels, frames)) and skips the power and
    the projection: a stage that edits mel bands goes back to features exactly.
    """
    if mel_bands:
        if not spec.is_mel or magnitude.shape[-2] != spec.n_mels:
            raise ValueError(f"mel_bands=True needs a mel spec and {spec.n_mels} mel bands, got "
                             f"{magnitude.shape[-2]} rows (n_mels {spec.n_mels})")
        feats = magnitude
    elif magnitude.shape[-2] != spec.n_fft // 2 + 1:
        raise ValueError(f"magnitudes_to_features needs {spec.n_fft // 2 + 1} linear bins (n_fft {spec.n_fft}), "
                         f"got {magnitude.shape[-2]}; for mel bands from features_to_magnitudes pass mel_bands=True")
    else:
        feats = magnitude**spec.power if spec.power != 1.0 else magnitude
        if spec.is_mel:
            feats = torch.matmul(mel_basis(spec, feats.device, feats.dtype), feats)
    if spec.log:
        feats = torch.log(torch.clamp(feats, min=spec.log_floor))
    if spec.normalization is not None:
        feats = normalize(feats, spec.normalization)
    if frame_lengths is not None:
        feats = feats * length_mask(frame_lengths, feats.shape[-1], feats.device).unsqueeze(1)
    return feats


def features_to_magnitudes(feats: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Features as `spec` describes -> magnitudes: undoes normalisation, log and power.

    For a linear spec (n_mels = 0) this is |STFT|, (batch, n_fft // 2 + 1,
    frames): the inverse of magnitudes_to_features wherever the magnitude**power
    was above log_floor. The mel projection has no exact inverse, so for a mel
    spec this returns mel-band values, (batch, n_mels, frames), still raised to
    spec.power (mel_basis @ |STFT|**power), which is what mel_to_linear takes
    to estimate |STFT|.
    """
    feats = to_linear_scale(feats, spec)
    if spec.power != 1.0 and not spec.is_mel:
        feats = feats.clamp_min(0) ** (1.0 / spec.power)
    return feats


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


def mel_to_linear(mel: torch.Tensor, spec: FeatureSpec, n_iter: int = 32) -> torch.Tensor:
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
        projected = torch.empty_like(mel)
        denominator = torch.empty_like(lin)
        for _ in range(n_iter):
            # basis.T @ (basis @ lin): two thin products, not the (bins x bins) Gram
            # matrix; in place, since fresh (bins x frames) buffers cost more than the maths.
            torch.matmul(basis, lin, out=projected)
            torch.matmul(basis.T, projected, out=denominator)
            torch.div(numerator, denominator.add_(1e-10), out=denominator)
            lin.mul_(denominator)
    if spec.power != 1.0:
        lin = lin.clamp_min(0) ** (1.0 / spec.power)
    return lin


def linear_magnitude(feats: torch.Tensor, spec: FeatureSpec, mel_iters: int = 32) -> torch.Tensor:
    """Any spectrogram `spec` describes (normalised, log, mel, power) -> the linear magnitude Griffin-Lim needs."""
    magnitudes = features_to_magnitudes(feats, spec)
    return mel_to_linear(magnitudes, spec, mel_iters) if spec.is_mel else magnitudes


def mel_to_audio(feats: torch.Tensor, spec: FeatureSpec, n_iter: int = 32, mel_iters: int = 32,
                 names: Sequence[str] | None = None, **griffin_lim_options) -> torch.Tensor:
    """(batch, bins, frames) features as `spec` describes -> (batch, samples) audio.

    The resynthesize pipeline's vocoder in one call (audio.mel_to_linear, then
    audio.griffinlim): NNLS mel inversion and fast Griffin-Lim.
    """
    return griffin_lim(linear_magnitude(feats, spec, mel_iters), spec, n_iter=n_iter, names=names,
                       **griffin_lim_options)


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
    init: "str | torch.Tensor" = "random",
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): (batch, bins, frames) magnitude -> audio.

    Same update as librosa.griffinlim, batched, on any device. `init` is
    "random", "zeros", or the initial phases themselves (batch, bins, frames),
    e.g. a neural vocoder's, which a few iterations then make consistent.
    """
    batch, bins, n_frames = magnitude.shape
    if bins != spec.n_fft // 2 + 1:
        raise ValueError(f"griffin_lim needs {spec.n_fft // 2 + 1} linear bins, got {bins}")
    if sample_lengths is None:
        counts = frame_lengths or [n_frames] * batch
        sample_lengths = [(f - 1) * spec.hop_length + (0 if spec.center else spec.n_fft) for f in counts]
    device = magnitude.device
    frames = _Frames(spec, sample_lengths, device, torch.float32, n_frames=n_frames)
    # Work in (batch, frames, bins): contiguous along the FFT axis.
    magnitude = magnitude.float().transpose(1, 2).contiguous()
    if frames.mask is not None:
        magnitude.mul_(frames.mask)
    if isinstance(init, torch.Tensor):
        if tuple(init.shape) != (batch, bins, n_frames):
            raise ValueError(f"griffin_lim: initial phases of shape {tuple(init.shape)}, magnitudes {tuple(magnitude.shape)}")
        angles = torch.polar(torch.ones_like(init, dtype=torch.float32), init.float()).transpose(1, 2).contiguous()
    else:
        angles = _initial_phase((batch, bins, n_frames), names, seed, init, device).transpose(1, 2).contiguous()
    spectra = torch.empty_like(angles)
    rebuilt, previous = torch.empty_like(angles), torch.zeros_like(angles)
    accel = momentum / (1.0 + momentum)
    for _ in range(n_iter):
        audio = frames.synthesize(torch.mul(magnitude, angles, out=spectra))
        frames.analyse(audio, out=rebuilt)
        torch.add(rebuilt, previous, alpha=-accel, out=angles)
        angles.sgn_()
        rebuilt, previous = previous, rebuilt
    return frames.synthesize(torch.mul(magnitude, angles, out=spectra))


def spectral_convergence(target_mag: torch.Tensor, audio: torch.Tensor, spec: FeatureSpec) -> float:
    """||S - |STFT(y)|||_F / ||S||_F, the usual Griffin-Lim quality figure."""
    rebuilt, _ = stft(audio, spec)
    frames = min(rebuilt.shape[-1], target_mag.shape[-1])
    diff = target_mag[..., :frames] - rebuilt.abs()[..., :frames]
    return float(torch.linalg.norm(diff) / torch.linalg.norm(target_mag[..., :frames]))
