"""Quality figures every family's evaluation shares: PSNR for images; PESQ-WB, STOI, LSD, MR-STFT for speech.

One implementation of each, so that a vocoder's figures and a codec's are the
same measurement. Module level imports nothing heavy.
"""

from __future__ import annotations

import math

# PSNR of identical images is infinite. It is counted as this many dB (and any
# higher value is capped to it), so a mean over images stays a number.
PSNR_CAP_DB = 100.0
SPEECH_RATE = 16000  # PESQ-WB is defined at 16 kHz; the festival diphone voices have nothing above 8 kHz
# Parallel WaveGAN's three resolutions: (n_fft, hop, window).
STFT_LOSS_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def psnr(prediction, target) -> float:
    """PSNR in dB of two float arrays in [0, 1], capped at PSNR_CAP_DB (identical images reach the cap)."""
    import numpy as np

    mse = float(np.mean((np.asarray(prediction, dtype=np.float64) - np.asarray(target, dtype=np.float64)) ** 2))
    if mse <= 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, -10 * math.log10(mse))


def loss_specs(sample_rate: int) -> list:
    """The linear-STFT FeatureSpecs of the multi-resolution STFT distance at sample_rate."""
    from transmute.signals import FeatureSpec

    return [FeatureSpec(sample_rate=sample_rate, n_fft=n, hop_length=hop, win_length=win, n_mels=0, log=False)
            for n, hop, win in STFT_LOSS_RESOLUTIONS]


def stft_loss(output, target, specs: list):
    """Multi-resolution STFT distance: spectral convergence + L1 of log magnitudes, averaged over resolutions.

    Differentiable: the vocoder trains with it.
    """
    import torch
    from torch.nn import functional as F

    from transmute import dsp

    total = 0.0
    for spec in specs:
        y, _ = dsp.stft(output, spec)
        x, _ = dsp.stft(target, spec)
        y, x = y.abs(), x.abs()
        convergence = torch.linalg.norm(x - y) / torch.linalg.norm(x).clamp_min(1e-5)
        log_mag = F.l1_loss(torch.log(y.clamp_min(1e-5)), torch.log(x.clamp_min(1e-5)))
        total = total + convergence + log_mag
    return total / len(specs)


def log_spectral_distance(reference, degraded, floor_db: float = 60.0) -> float:
    """Mean over frames of the RMS difference (dB) of the two power spectra, both at 16 kHz.

    Frames more than floor_db under the reference's loudest are dropped.
    """
    import torch

    from transmute import dsp
    from transmute.signals import FeatureSpec

    spec = FeatureSpec(sample_rate=SPEECH_RATE, n_fft=512, hop_length=128, n_mels=0, power=2.0, log=False)
    pair = torch.stack([torch.as_tensor(reference), torch.as_tensor(degraded)]).float()
    X, _ = dsp.stft(pair, spec)
    power = X.abs() ** 2
    db = 10 * torch.log10(power.clamp_min(1e-10))
    frame_db = db[0].max(dim=0).values
    keep = frame_db > frame_db.max() - floor_db
    diff = (db[0] - db[1])[:, keep]
    return float(diff.pow(2).mean(dim=0).sqrt().mean())


def quality(reference, degraded, sample_rate: int) -> dict[str, float]:
    """PESQ-WB, STOI, LSD (at 16 kHz) and MR-STFT distance (at sample_rate) of degraded against reference.

    Both are mono arrays at sample_rate; the longer is cut to the shorter.
    """
    import numpy as np
    import torch
    from pesq import pesq
    from pystoi import stoi

    from transmute.audio import resample

    n = min(len(reference), len(degraded))
    reference, degraded = np.asarray(reference[:n], np.float32), np.asarray(degraded[:n], np.float32)
    ref16 = resample(reference[:, None], sample_rate, SPEECH_RATE)[:, 0]
    deg16 = resample(degraded[:, None], sample_rate, SPEECH_RATE)[:, 0]
    with torch.no_grad():
        mrstft = float(stft_loss(torch.from_numpy(degraded)[None], torch.from_numpy(reference)[None],
                                 loss_specs(sample_rate)))
    return {"pesq": float(pesq(SPEECH_RATE, ref16, deg16, "wb")), "stoi": float(stoi(ref16, deg16, SPEECH_RATE)),
            "lsd": log_spectral_distance(ref16, deg16), "mrstft": mrstft}
