"""Mel -> audio: transmute (mel_to_linear + griffin_lim) against librosa.feature.inverse.mel_to_audio.

Both sides invert the same 80-band power mel (librosa.feature.melspectrogram's
default power=2) of 60 s of speech with 32 Griffin-Lim iterations at momentum
0.99; each output is scored by its spectral convergence against the ORIGINAL
audio's |STFT|. Also sweeps mel_to_linear's n_iter to help pick its default.
Target (from the issue): at least 3x faster at equal or better SC.
"""

from __future__ import annotations

import time

import numpy as np

import common
from bench_griffinlim import transmute_griffin_lim

MIN_SPEEDUP = 3.0
N_MELS = 80
FMAX = common.SAMPLE_RATE / 2
POWER = 2.0
MEL_ITERS = (0, 8, 16, 32, 64)


def mel_spec():
    from transmute.signals import FeatureSpec

    return FeatureSpec(
        sample_rate=common.SAMPLE_RATE, n_fft=common.N_FFT, hop_length=common.HOP, window="hann",
        center=True, pad_mode="reflect", n_mels=N_MELS, fmax=FMAX, power=POWER, log=False,
    )


def librosa_mel(y: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.melspectrogram(
        y=y, sr=common.SAMPLE_RATE, n_mels=N_MELS, fmax=FMAX, power=POWER, **common.STFT_ARGS
    )


def transmute_mel(y: np.ndarray) -> np.ndarray:
    import torch

    from transmute import dsp

    with torch.inference_mode():
        mel, _ = dsp.features(torch.from_numpy(y).unsqueeze(0), mel_spec())
    return mel[0].numpy()


def transmute_mel_to_linear(M: np.ndarray, n_iter: int | None = None) -> np.ndarray:
    """dsp.mel_to_linear with its own default n_iter unless one is given."""
    import torch

    from transmute import dsp

    kwargs = {} if n_iter is None else {"n_iter": n_iter}
    with torch.inference_mode():
        return dsp.mel_to_linear(torch.from_numpy(M).unsqueeze(0), mel_spec(), **kwargs)[0].numpy()


def transmute_mel_to_audio(M: np.ndarray, length: int, seed: int) -> np.ndarray:
    return transmute_griffin_lim(transmute_mel_to_linear(M), length, seed)


def librosa_mel_to_audio(M: np.ndarray, length: int) -> np.ndarray:
    import librosa

    # mel_to_audio passes extra keywords to the filter bank, not to griffinlim:
    # its momentum is griffinlim's default (0.99) and its initial phases are unseeded.
    return librosa.feature.inverse.mel_to_audio(
        M, sr=common.SAMPLE_RATE, n_fft=common.N_FFT, hop_length=common.HOP, win_length=common.N_FFT,
        window="hann", center=True, pad_mode="reflect", power=POWER, n_iter=common.N_ITER,
        length=length, fmax=FMAX,
    )


def librosa_mel_to_stft(M: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.inverse.mel_to_stft(M, sr=common.SAMPLE_RATE, n_fft=common.N_FFT, power=POWER, fmax=FMAX)


def check_mel(y: np.ndarray, M: np.ndarray) -> None:
    ours = transmute_mel(y)
    rel = common.relative_error(M, ours)
    worst = float(np.max(np.abs(ours - M)) / np.max(np.abs(M)))
    print(f"mel check: transmute.dsp.features vs librosa.feature.melspectrogram {M.shape}: "
          f"relative Frobenius error {rel:.2e}, max abs error / max {worst:.2e} -> "
          f"{'same within 1e-4 relative' if rel <= 1e-4 else 'DIFFERENT (> 1e-4 relative)'}")


def default_mel_iters() -> int:
    import inspect

    from transmute import dsp

    return inspect.signature(dsp.mel_to_linear).parameters["n_iter"].default


def sweep_mel_iters(M: np.ndarray, S: np.ndarray, length: int) -> None:
    """Time and score mel_to_linear at each n_iter; Griffin-Lim's cost does not depend on it."""
    default = default_mel_iters()
    griffin_lim = common.best_of(lambda seed: transmute_griffin_lim(transmute_mel_to_linear(M), length, seed))
    lin_default = common.best_of(lambda _: transmute_mel_to_linear(M))
    griffin_lim_s = max(griffin_lim.best_s - lin_default.best_s, 0.0)
    print(f"mel_to_linear n_iter sweep (default {default}), each followed by transmute griffin_lim "
          f"(n_iter={common.N_ITER}, seed 0, about {griffin_lim_s:.2f} s whatever mel_to_linear does):")
    print("  n_iter  mel_to_linear  magnitude-err  audio SC  total")
    for n_iter in MEL_ITERS:
        lin = common.best_of(lambda _: transmute_mel_to_linear(M, n_iter))
        sc = common.spectral_convergence(S, transmute_griffin_lim(lin.results[-1], length))
        print(f"  {n_iter:6d}  {lin.best_s * 1000:10.1f} ms  {common.relative_error(S, lin.results[-1]):13.4f}"
              f"  {sc:8.4f}  {griffin_lim_s + lin.best_s:5.2f} s{'  (default)' if n_iter == default else ''}")
    print("  (magnitude-err = ||S - mel_to_linear(M)||_F / ||S||_F, before any phase is found; "
          "total = griffin_lim + mel_to_linear)")


def main() -> list[common.Row]:
    import torch

    common.header("Mel inversion: transmute mel_to_linear + griffin_lim vs librosa mel_to_audio")
    y = common.speech()
    S = common.magnitude(y)
    M = librosa_mel(y)
    print(f"input: {len(y) / common.SAMPLE_RATE:.1f} s speech, mel {M.shape} power={POWER:g} fmax={FMAX:g} slaney; "
          f"n_fft={common.N_FFT} hop={common.HOP} hann center reflect; griffin-lim n_iter={common.N_ITER} "
          f"momentum={common.MOMENTUM}; torch threads={torch.get_num_threads()}")
    check_mel(y, M)

    # transmute's phases are seeded by run number; librosa's mel_to_audio draws unseeded ones.
    ours = common.best_of(lambda seed: transmute_mel_to_audio(M, len(y), seed))
    peer = common.best_of(lambda _: librosa_mel_to_audio(M, len(y)), slow_s=common.SLOW_RUN_S)
    sc_ours, sc_ours_label = common.mean_spectral_convergence(S, ours.results)
    sc_peer, sc_peer_label = common.mean_spectral_convergence(S, peer.results)
    print(f"transmute mel_to_linear(n_iter={default_mel_iters()}) + griffin_lim : {ours.label}  {sc_ours_label}")
    print(f"librosa mel_to_audio (NNLS + griffinlim)          : {peer.label}  {sc_peer_label}")
    if len(peer.results) == 1:
        print(f"  (librosa took over {common.SLOW_RUN_S:.0f} s, so it was run once)")
    row = common.speed_quality_row("mel->audio 60 s", ours, peer, sc_ours, sc_peer, MIN_SPEEDUP)

    start = time.perf_counter()
    nnls = librosa_mel_to_stft(M)
    print(f"librosa's NNLS alone (mel_to_stft): {time.perf_counter() - start:.2f} s, 1 run, "
          f"magnitude-err {common.relative_error(S, nnls):.4f}")
    sweep_mel_iters(M, S, len(y))
    return [row]


if __name__ == "__main__":
    main()
