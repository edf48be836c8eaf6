"""Helpers shared by the benchmarks: the test audio, timing, one neutral quality figure.

Every benchmark measures transmute against a peer in the same run, on the same
input, and prints figures and a ratio; none asserts a timing.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEECH_DIR = REPO_ROOT / "examples" / "speech"

SAMPLE_RATE = 22050
N_FFT = 1024
HOP = 256
SECONDS = 60.0
N_ITER = 32
MOMENTUM = 0.99
REPEATS = 3
# SC within this fraction of the peer's counts as equal: random initial phases
# alone move Griffin-Lim's SC on the 60 s test by about +-2% between seeds.
SC_TOLERANCE = 0.02
# A peer run slower than this is timed once (its warm-up run is the measurement).
SLOW_RUN_S = 60.0

# The one analysis both sides are judged with (librosa's, so neither side grades itself).
STFT_ARGS = dict(n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window="hann", center=True, pad_mode="reflect")


@functools.lru_cache(maxsize=1)
def speech(seconds: float = SECONDS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`seconds` of real speech: examples/speech/*.wav, mono, resampled, concatenated and repeated."""
    import soundfile as sf
    import soxr

    clips = []
    for path in sorted(SPEECH_DIR.glob("*.wav")):
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        if sr != sample_rate:
            mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
        clips.append(mono.astype(np.float32))
    if not clips:
        raise SystemExit(f"no speech files in {SPEECH_DIR}")
    one_pass = np.concatenate(clips)
    want = int(round(seconds * sample_rate))
    repeats = -(-want // len(one_pass))
    return np.ascontiguousarray(np.tile(one_pass, repeats)[:want])


def magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| of y, float32, (bins, frames)."""
    import librosa

    return np.abs(librosa.stft(y, **STFT_ARGS)).astype(np.float32)


def relative_error(target: np.ndarray, estimate: np.ndarray) -> float:
    """||target - estimate||_F / ||target||_F over the frames both have."""
    frames = min(estimate.shape[-1], target.shape[-1])
    target = np.asarray(target[..., :frames], dtype=np.float64)
    estimate = np.asarray(estimate[..., :frames], dtype=np.float64)
    return float(np.linalg.norm(target - estimate) / np.linalg.norm(target))


def spectral_convergence(target: np.ndarray, y: np.ndarray) -> float:
    """||S - |STFT(y)|||_F / ||S||_F, with the same STFT for every output."""
    return relative_error(target, magnitude(np.asarray(y, dtype=np.float32).reshape(-1)))


@dataclass
class Timing:
    best_s: float
    results: list  # what each timed run returned

    @property
    def label(self) -> str:
        runs = len(self.results)
        return f"{self.best_s:.3f} s (best of {runs})" if runs > 1 else f"{self.best_s:.3f} s (1 run)"


def best_of(fn: Callable[[int], object], repeats: int = REPEATS, slow_s: float | None = None) -> Timing:
    """One warm-up run, then the best wall time of `repeats` runs; fn gets the run number (a seed).

    If the warm-up alone takes longer than `slow_s`, it is the measurement.
    """
    start = time.perf_counter()
    result = fn(0)
    first = time.perf_counter() - start
    if slow_s is not None and first > slow_s:
        return Timing(first, [result])
    best, results = float("inf"), []
    for run in range(repeats):
        start = time.perf_counter()
        results.append(fn(run))
        best = min(best, time.perf_counter() - start)
    return Timing(best, results)


def mean_spectral_convergence(target: np.ndarray, outputs: list) -> tuple[float, str]:
    """Mean SC over outputs (one per random seed), and a label with the spread."""
    values = [spectral_convergence(target, y) for y in outputs]
    mean = float(np.mean(values))
    if len(values) == 1:
        return mean, f"SC {mean:.4f}"
    return mean, f"SC {mean:.4f} (mean of {len(values)} seeds, {min(values):.4f}-{max(values):.4f})"


@dataclass
class Row:
    """One line of run_all's summary table."""

    name: str
    transmute: str
    peer: str
    ratio: str
    target: str
    verdict: str


def verdict(met: bool) -> str:
    return "PASS" if met else "MISS"


def speed_quality_row(name: str, ours: Timing, peer: Timing, sc_ours: float, sc_peer: float,
                      min_speedup: float) -> Row:
    """Print and return the verdict for 'at least min_speedup x faster at equal or better SC'."""
    ratio = peer.best_s / ours.best_s
    fast = ratio >= min_speedup
    as_good = sc_ours <= sc_peer * (1 + SC_TOLERANCE)
    met = fast and as_good
    print(f"speed ratio (peer / transmute): {ratio:.2f}x")
    print(f"target: >= {min_speedup:g}x faster at equal or better SC -> {verdict(met)}"
          f" (speed {'ok' if fast else 'short'}; SC {'ok' if as_good else 'worse'},"
          f" equal meaning within {SC_TOLERANCE:.0%}, the seed-to-seed spread)")
    return Row(
        name,
        f"{ours.best_s:.2f} s, SC {sc_ours:.4f}",
        f"{peer.best_s:.2f} s, SC {sc_peer:.4f}",
        f"{ratio:.2f}x",
        f">= {min_speedup:g}x, SC <= peer +{SC_TOLERANCE:.0%}",
        verdict(met),
    )


def header(title: str) -> None:
    print()
    print(f"== {title}")
    print(machine_load())


def machine_load() -> str:
    """Timings on a busy machine mean little: say how busy it was."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = "  (busy: timings are inflated, torch's thread pool most)" if load > cores else ""
    return f"load average (1 min) {load:.2f} on {cores} cores{note}"


def print_table(rows: list[Row]) -> None:
    columns = ("benchmark", "transmute", "peer", "ratio", "target", "verdict")
    cells = [columns] + [(r.name, r.transmute, r.peer, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
