"""`transmute eval vc`: how close converted speech is to the target speaker.

- Mel-cepstral distortion with DTW between each converted utterance and the
  target speaker's utterance of the same sentence (a parallel set), with the
  source-to-target distortion beside it as the baseline.
- Speaker similarity with the speaker encoder shipped inside the resemblyzer
  wheel: cosine of each converted utterance to the target and source speakers'
  centroids; the share closer to the target.
- Log-F0 mean and spread of converted versus target speech.

Files are paired by their path relative to their folder, extension aside
(sub1/x.wav with sub1/x.flac, never with sub2/x.wav). The spectra come from
transmute.dsp, the project's one STFT. `evaluate()` takes the speaker encoder
as an argument; the command uses `speaker_encoder()` from this module, which
tests replace with a cheap stand-in where the real encoder is not under test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import click

from transmute_cyclegan_vc import DEFAULT_MODEL

# Measured at 16 kHz: the festival kal voice has nothing above 8 kHz, and an
# empty band would dominate the distortion of every comparison with it.
SAMPLE_RATE = 16000
MCEP_ORDER = 24
MCEP_ALPHA = 0.42  # the all-pass constant that approximates the mel scale at 16 kHz
FRAME_PERIOD_MS = 5.0
N_FFT = 512
SILENCE_DB = 40.0


@dataclass
class MCDVariant:
    order: int = MCEP_ORDER
    alpha: float = MCEP_ALPHA
    frame_period_ms: float = FRAME_PERIOD_MS
    n_fft: int = N_FFT
    sample_rate: int = SAMPLE_RATE

    def spec(self):
        """The STFT the cepstra are computed from: power spectra, zero-padded centred frames."""
        from transmute.signals import FeatureSpec

        hop = int(round(self.sample_rate * self.frame_period_ms / 1000))
        return FeatureSpec(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=hop, window="hann",
                           center=True, pad_mode="constant", n_mels=0, power=2.0, log=False)

    def describe(self) -> str:
        return (f"MCD in dB: mel-cepstrum c1..c{self.order} (c0 excluded), all-pass alpha {self.alpha}, "
                f"{self.frame_period_ms:g} ms frames, from the cepstrally smoothed log power of a "
                f"{self.n_fft}-point Hann STFT at {self.sample_rate} Hz; DTW on the cepstra; frames more than "
                f"{SILENCE_DB:g} dB below an utterance's peak dropped")


def _freqt(c, order: int, alpha: float):
    """Frequency-warp cepstra (frames, m+1) to mel-cepstra (frames, order+1): SPTK's freqt recursion."""
    import numpy as np

    frames = c.shape[0]
    g = np.zeros((frames, order + 1))
    beta = 1 - alpha * alpha
    for i in range(c.shape[1] - 1, -1, -1):
        d = g.copy()
        g[:, 0] = c[:, i] + alpha * d[:, 0]
        if order >= 1:
            g[:, 1] = beta * d[:, 0] + alpha * d[:, 1]
        for m in range(2, order + 1):
            g[:, m] = d[:, m - 1] + alpha * (d[:, m] - g[:, m - 1])
    return g


def mel_cepstrum(audio, variant: MCDVariant):
    """(frames, order+1) mel-cepstra of mono float audio, silent frames dropped."""
    import numpy as np
    import torch

    from transmute import dsp

    n = variant.n_fft
    spectra, _ = dsp.stft(torch.from_numpy(np.asarray(audio, dtype=np.float64)).unsqueeze(0), variant.spec())
    power = (spectra[0].abs() ** 2).T.numpy()  # (frames, bins)
    energy_db = 10 * np.log10(power.sum(axis=1) + 1e-12)
    keep = energy_db > energy_db.max() - SILENCE_DB
    log_power = np.log(power[keep] + 1e-10)
    cep = np.fft.irfft(log_power, axis=1)[:, : n // 2]
    cep[:, 1:] *= 2  # SPTK's convention: log|H(w)| = c0 + sum_m c(m) cos(m w)
    cep = cep[:, : 2 * variant.order + 1] / 2  # cepstral smoothing keeps the envelope; log power -> log magnitude
    return _freqt(cep, variant.order, variant.alpha)


def mcd_dtw(a, b) -> float:
    """Mean mel-cepstral distortion (dB) along the DTW path between two mel-cepstrum sequences."""
    import librosa
    import numpy as np

    x, y = a[:, 1:], b[:, 1:]
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    _, path = librosa.sequence.dtw(X=x.T, Y=y.T, metric="euclidean")
    diff = x[path[:, 0]] - y[path[:, 1]]
    return float(np.mean((10 / math.log(10)) * np.sqrt(2 * np.sum(diff**2, axis=1))))


def log_f0(audio, sample_rate: int):
    """Log-F0 of voiced frames (librosa's YIN, voicing from frame energy)."""
    import librosa
    import numpy as np

    f0 = librosa.yin(audio, fmin=50, fmax=500, sr=sample_rate, frame_length=2048, hop_length=256)
    rms = librosa.feature.rms(y=audio, frame_length=2048, hop_length=256)[0][: len(f0)]
    voiced = rms > rms.max() * 10 ** (-30 / 20)
    return np.log(f0[voiced[: len(f0)]])


@dataclass
class Report:
    direction: str
    pairs: int
    variant: str
    mcd_converted: float
    mcd_source: float
    closer_to_target: float
    cos_target: float
    cos_source: float
    source_cos_target: float
    f0_converted: tuple[float, float]
    f0_target: tuple[float, float]
    f0_source: tuple[float, float]
    per_utterance: list = field(default_factory=list)

    def text(self) -> str:
        hz = lambda pair: f"mean {math.exp(pair[0]):.0f} Hz (log {pair[0]:.3f}), spread {pair[1]:.3f}"  # noqa: E731
        return "\n".join([
            f"voice conversion ({self.direction}), {self.pairs} parallel utterances",
            f"  {self.variant}",
            f"  MCD converted -> target: {self.mcd_converted:.2f} dB   (source -> target: {self.mcd_source:.2f} dB)",
            f"  speaker similarity (resemblyzer): {self.closer_to_target * 100:.1f}% of converted utterances closer "
            f"to the target than to the source",
            f"    mean cosine to target centroid {self.cos_target:.3f}, to source centroid {self.cos_source:.3f} "
            f"(source utterances to target centroid: {self.source_cos_target:.3f})",
            f"  log-F0: converted {hz(self.f0_converted)}; target {hz(self.f0_target)}; source {hz(self.f0_source)}",
        ])


def _read(path: Path):
    from transmute.audio import read_audio

    audio, _ = read_audio(path, SAMPLE_RATE)
    return audio[:, 0]


def _audio_by_relative_path(folder: Path) -> dict[str, Path]:
    """The audio files below folder, by their relative path without extension (e.g. 'sub/x')."""
    from transmute.audio import is_audio_file
    from transmute.files import discover

    found, _, _ = discover([str(folder)], is_audio_file)
    return {found_file.relative.with_suffix("").as_posix(): found_file.path for found_file in found}


def _pairs(converted: Path, target: Path) -> list[tuple[str, Path, Path]]:
    """(relative name, converted file, target file) for each converted file with a target at the same place."""
    found = _audio_by_relative_path(target)
    pairs = [(name, p, found[name]) for name, p in _audio_by_relative_path(converted).items() if name in found]
    if not pairs:
        raise click.ClickException(f"no file in {converted} has a file at the same relative path in {target}")
    return pairs


def evaluate(converted: Path, source: Path, target: Path, direction: str, encoder=None) -> Report:
    import numpy as np

    variant = MCDVariant()
    pairs = _pairs(converted, target)
    sources = _audio_by_relative_path(source)
    if encoder is None:
        encoder = speaker_encoder()
    rows, emb = [], {"converted": [], "target": [], "source": []}
    f0 = {"converted": [], "target": [], "source": []}
    for name, conv_path, tgt_path in pairs:
        src_path = sources.get(name)
        conv, tgt = _read(conv_path), _read(tgt_path)
        mc_conv, mc_tgt = mel_cepstrum(conv, variant), mel_cepstrum(tgt, variant)
        row = {"name": name, "mcd": mcd_dtw(mc_conv, mc_tgt)}
        signals = {"converted": conv, "target": tgt}
        if src_path is not None:
            src = _read(src_path)
            row["mcd_source"] = mcd_dtw(mel_cepstrum(src, variant), mc_tgt)
            signals["source"] = src
        for key, audio in signals.items():
            emb[key].append(encoder(audio))
            f0[key].append(log_f0(audio, SAMPLE_RATE))
        rows.append(row)
    if not emb["source"]:
        raise click.ClickException(f"no file in {source} is at the same relative path as a converted file")
    centroid = {k: _unit(np.mean(emb[k], axis=0)) for k in ("target", "source")}
    cos_t = np.array([e @ centroid["target"] for e in emb["converted"]])
    cos_s = np.array([e @ centroid["source"] for e in emb["converted"]])
    for row, t, s in zip(rows, cos_t, cos_s):
        row.update(cos_target=float(t), cos_source=float(s))
    stats = {k: (float(np.mean(np.concatenate(v))), float(np.std(np.concatenate(v)))) for k, v in f0.items() if v}
    return Report(
        direction=direction, pairs=len(rows), variant=variant.describe(),
        mcd_converted=float(np.nanmean([r["mcd"] for r in rows])),
        mcd_source=float(np.nanmean([r["mcd_source"] for r in rows if "mcd_source" in r])),
        closer_to_target=float(np.mean(cos_t > cos_s)), cos_target=float(cos_t.mean()), cos_source=float(cos_s.mean()),
        source_cos_target=float(np.mean([e @ centroid["target"] for e in emb["source"]])),
        f0_converted=stats["converted"], f0_target=stats["target"], f0_source=stats["source"], per_utterance=rows,
    )


def _unit(v):
    import numpy as np

    return v / np.linalg.norm(v)


def speaker_encoder():
    """resemblyzer's VoiceEncoder, whose weights ship inside its wheel (nothing is downloaded)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError as exc:
        raise click.ClickException(f"speaker similarity needs the resemblyzer package ({exc}), one of "
                                   "transmute's dependencies; reinstall transmute") from None
    encoder = VoiceEncoder("cpu", verbose=False)

    def embed(audio):
        import numpy as np

        wav = preprocess_wav(np.asarray(audio, dtype=np.float32), source_sr=SAMPLE_RATE)
        return encoder.embed_utterance(wav if len(wav) else np.zeros(16000, dtype=np.float32))

    return embed


@click.command("vc")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Converter checkpoint or built-in model name.")
@click.option("--source", "source", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The source speaker's utterances of the parallel set.")
@click.option("--target", "target", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The target speaker's utterances of the same sentences (same relative paths).")
@click.option("--direction", default="a2b", show_default=True, type=click.Choice(["a2b", "b2a"]))
@click.option("--vocoder", default=None, metavar="MODEL|griffinlim",
              help="What voices the converted mels: griffinlim (the pipeline's default) or a vocoder model "
                   "(festival-vocos).")
@click.option("--converted", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where converted files go (default: a temporary folder); existing ones are reused.")
@click.option("--json", "as_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures, per utterance too, as JSON.")
def eval_vc_command(model, source, target, direction, vocoder, converted, as_json):
    """Convert the source utterances and measure them against the target speaker's."""
    import tempfile

    from transmute import run
    from transmute_cyclegan_vc.commands import conversion_pipeline

    # Before converting anything: a converted file is only measured against a target file at the same
    # relative path, and without one the error named the temporary folder of converted files.
    targets = _audio_by_relative_path(target)
    if not any(name in targets for name in _audio_by_relative_path(source)):
        raise click.ClickException(f"no file in {source} has a file at the same relative path (name without "
                                   f"extension) in {target}; eval vc needs both speakers saying the same sentences")
    with tempfile.TemporaryDirectory() as scratch:
        out = converted or Path(scratch) / "converted"
        conversion = run(conversion_pipeline(model, direction, vocoder), [source], out)
        if conversion.interrupted:
            raise click.Abort()
        if conversion.failed:
            lines = [f"{o.job.label}: {o.reason}" for o in conversion.failed]
            raise click.ClickException(f"{len(lines)} source file(s) could not be converted: {'; '.join(lines)}")
        report = evaluate(out, source, target, direction)
    click.echo(report.text())
    if as_json:
        from dataclasses import asdict

        as_json.write_text(json.dumps(asdict(report), indent=2) + "\n")
