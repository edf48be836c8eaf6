"""Griffin-Lim: transmute.dsp.griffin_lim against librosa.griffinlim.

Same |STFT| of 60 s of speech (computed once), same n_iter and momentum, random
initial phases on both sides; quality is the spectral convergence of each
output, measured by the one neutral function in common.py.
Target (from the issue): at least 2x faster at equal or better SC.
"""

from __future__ import annotations

import numpy as np

import common

MIN_SPEEDUP = 2.0


def linear_spec():
    from transmute.signals import FeatureSpec

    return FeatureSpec(
        sample_rate=common.SAMPLE_RATE, n_fft=common.N_FFT, hop_length=common.HOP, window="hann",
        center=True, pad_mode="reflect", n_mels=0, power=1.0, log=False,
    )


def transmute_griffin_lim(S: np.ndarray, length: int, seed: int = 0) -> np.ndarray:
    """transmute.dsp.griffin_lim on a numpy (bins, frames) magnitude -> numpy audio."""
    import torch

    from transmute import dsp

    with torch.inference_mode():
        audio = dsp.griffin_lim(
            torch.from_numpy(S).unsqueeze(0), linear_spec(), sample_lengths=[length],
            n_iter=common.N_ITER, momentum=common.MOMENTUM, init="random", seed=seed,
        )
    return audio[0].numpy()


def librosa_griffin_lim(S: np.ndarray, length: int, seed: int) -> np.ndarray:
    import librosa

    return librosa.griffinlim(
        S, n_iter=common.N_ITER, hop_length=common.HOP, win_length=common.N_FFT, n_fft=common.N_FFT,
        window="hann", center=True, pad_mode="reflect", length=length,
        momentum=common.MOMENTUM, init="random", random_state=seed,
    )


def main() -> list[common.Row]:
    import torch

    common.header("Griffin-Lim: transmute.dsp.griffin_lim vs librosa.griffinlim")
    y = common.speech()
    S = common.magnitude(y)
    print(f"input: {len(y) / common.SAMPLE_RATE:.1f} s speech at {common.SAMPLE_RATE} Hz, |STFT| {S.shape}, "
          f"n_fft={common.N_FFT} hop={common.HOP} hann center reflect; n_iter={common.N_ITER} "
          f"momentum={common.MOMENTUM} random init; torch threads={torch.get_num_threads()}")

    # Each timed run starts from other random phases (seed = run number), on both sides.
    ours = common.best_of(lambda seed: transmute_griffin_lim(S, len(y), seed))
    peer = common.best_of(lambda seed: librosa_griffin_lim(S, len(y), seed))
    sc_ours, sc_ours_label = common.mean_spectral_convergence(S, ours.results)
    sc_peer, sc_peer_label = common.mean_spectral_convergence(S, peer.results)
    print(f"transmute.dsp.griffin_lim : {ours.label}  {sc_ours_label}")
    print(f"librosa.griffinlim        : {peer.label}  {sc_peer_label}")
    return [common.speed_quality_row("griffin-lim 60 s", ours, peer, sc_ours, sc_peer, MIN_SPEEDUP)]


if __name__ == "__main__":
    main()
