"""Audio stages: load, resample, features, mel inversion, Griffin-Lim, save, test tones.

All signal processing calls transmute.dsp, the project's one STFT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transmute.audio import RESAMPLERS, is_audio_file, read_audio, resample
from transmute.errors import PipelineError, TransmuteError
from transmute.signals import FeatureSpec, File, Spectrogram, Waveform, WaveformSpec
from transmute.stages import Param, Stage

class LoadAudio(Stage):
    """Load an audio file soundfile can read; mix down or pick a channel; resample."""

    name = "audio.load"
    consumes = File
    produces = Waveform
    params = {
        "sample_rate": Param(int, 0, "resample to this rate; 0 keeps each file's own rate", min=0),
        "channel": Param(str, "mono", "'mono' mixes channels down, 'all' keeps them, or a channel index (0, 1, ...)"),
        "resampler": Param(str, "soxr_hq", "soxr quality preset", choices=RESAMPLERS),
        "remove_dc": Param(bool, True, "subtract each channel's mean (a DC offset becomes rumble after resynthesis)"),
    }

    def accepts(self, path: Path) -> bool:
        return is_audio_file(path)  # asks soundfile on first use, so listing stages never loads it

    def __init__(self, label=None, **values):
        if isinstance(values.get("channel"), int) and not isinstance(values.get("channel"), bool):
            values["channel"] = str(values["channel"])  # --set load.channel=1
        super().__init__(label, **values)
        if self.channel not in ("mono", "all") and not self.channel.isdigit():
            from transmute.stages import ParamError

            raise ParamError("channel", f"parameter 'channel': expected 'mono', 'all' or an index, got {self.channel!r}")

    def check(self, incoming):
        channels = None if self.channel == "all" else 1
        return WaveformSpec(sample_rate=self.sample_rate or None, channels=channels)

    def setup(self, device) -> None:
        super().setup(device)
        import numpy  # noqa: F401 - imported once here, not half-way through a file when Ctrl-C lands
        import soundfile  # noqa: F401
        import soxr  # noqa: F401
        import torch  # noqa: F401

    def load(self, path: Path) -> Waveform:
        import torch

        audio, rate = read_audio(path, self.sample_rate, self.channel, self.resampler, self.remove_dc)
        data = torch.from_numpy(audio.T.copy()).unsqueeze(0)
        return Waveform(data, WaveformSpec(rate, data.shape[1]), [path.stem])


class Resample(Stage):
    """Resample audio to a fixed rate with soxr (a band-limited, high-quality resampler)."""

    name = "audio.resample"
    consumes = Waveform
    produces = Waveform
    params = {
        "sample_rate": Param(int, 22050, "target sample rate in Hz", min=1),
        "resampler": Param(str, "soxr_hq", "soxr quality preset", choices=RESAMPLERS),
    }

    def check(self, incoming):
        return dataclasses.replace(incoming, sample_rate=self.sample_rate)

    def process(self, signal: Waveform) -> Waveform:
        import torch

        if signal.sample_rate == self.sample_rate:
            return signal
        items = []
        for item in signal.items():
            audio = item.data[0].T.detach().cpu().numpy()
            out = resample(audio, signal.sample_rate, self.sample_rate, self.resampler)
            items.append(Waveform(torch.from_numpy(out.T.copy()).unsqueeze(0).to(signal.data.device),
                                  WaveformSpec(self.sample_rate, signal.spec.channels), item.names))
        return Waveform.collate(items)


_SPEC_DEFAULTS = FeatureSpec()


def _check_window(name: str, length: int) -> None:
    if name in ("hann", "hamming", "blackman"):
        return
    from scipy.signal import get_window

    try:
        get_window(name, length, fftbins=True)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"window '{name}' is not a window scipy knows without extra parameters ({exc})") from None


class LogMel(Stage):
    """Waveform -> (log-)mel or linear spectrogram; librosa's filter bank, torch STFT."""

    name = "audio.logmel"
    consumes = Waveform
    produces = Spectrogram
    params = {
        "n_fft": Param(int, _SPEC_DEFAULTS.n_fft, "FFT size", min=16),
        "hop_length": Param(int, _SPEC_DEFAULTS.hop_length, "samples between frames", min=1),
        "win_length": Param(int, 0, "window length; 0 means n_fft", min=0),
        "window": Param(str, "hann", "window function (hann, hamming, blackman, or a scipy window name)"),
        "center": Param(bool, True, "pad each item by n_fft/2 so frame t is centred on sample t*hop"),
        "pad_mode": Param(str, "reflect", "centre padding", choices=("reflect", "constant")),
        "n_mels": Param(int, _SPEC_DEFAULTS.n_mels, "mel bands; 0 gives a linear-frequency spectrogram", min=0),
        "fmin": Param(float, 0.0, "lowest mel frequency (Hz)", min=0),
        "fmax": Param(float, 0.0, "highest mel frequency (Hz); 0 means sample_rate/2", min=0),
        "power": Param(float, 1.0, "exponent of the magnitude (1 magnitude, 2 power)", min=0.1),
        "mel_norm": Param(str, "slaney", "mel filter normalisation", choices=("slaney", "none")),
        "htk": Param(bool, False, "HTK mel scale instead of Slaney's"),
        "log": Param(bool, True, "natural log of max(x, log_floor)"),
        "log_floor": Param(float, 1e-5, "floor before the log", min=0),
        "spec_from": Param(str, "", "a checkpoint or model name whose feature spec to use "
                           "(then the settings above are taken from it)"),
    }

    def __init__(self, label=None, **values):
        super().__init__(label, **values)
        self.explicit = sorted(k for k in values if k != "spec_from")  # what a spec_from model must agree with

    def check(self, incoming: WaveformSpec) -> FeatureSpec:
        if self.spec_from:
            from transmute.checkpoint import model_feature_spec

            try:
                spec = model_feature_spec(self.spec_from).replace(normalization=None)
            except TransmuteError as exc:
                raise PipelineError(f"spec_from: {exc}") from None
            for key in self.explicit:  # a setting spec_from would silently replace
                value, model_value = self.values[key], getattr(spec, key)
                if key in ("win_length", "fmax") and not value:
                    continue  # 0: "n_fft" / "sample_rate / 2", whatever the model says
                if value != model_value:
                    raise PipelineError(
                        f"{key} = {value!r}, but spec_from = \"{self.spec_from}\" takes every feature setting from "
                        f"that model, whose {key} is {model_value!r}; drop {key}, or set spec_from = \"\" to use "
                        "your own settings")
            if incoming.sample_rate != spec.sample_rate:
                rate = f"{incoming.sample_rate} Hz" if incoming.sample_rate else "at each file's own rate"
                raise PipelineError(
                    f"the model '{self.spec_from}' takes {spec.sample_rate} Hz features, but the incoming audio is "
                    f"{rate}; set sample_rate = {spec.sample_rate} on the load stage"
                )
            if incoming.channels != 1:
                raise PipelineError("needs mono audio; set channel = \"mono\" (or an index) on the load stage")
            return spec
        if not incoming.sample_rate:
            raise PipelineError(
                "needs a known sample rate, but the incoming audio keeps each file's own rate; "
                "set sample_rate on the load stage or add an audio.resample stage"
            )
        if incoming.channels != 1:
            raise PipelineError("needs mono audio; set channel = \"mono\" (or an index) on the load stage")
        fmax = self.fmax or incoming.sample_rate / 2
        if fmax > incoming.sample_rate / 2 + 1e-6:
            raise PipelineError(
                f"fmax {fmax:g} Hz is above the Nyquist frequency {incoming.sample_rate / 2:g} Hz "
                f"of {incoming.sample_rate} Hz audio; lower fmax or resample"
            )
        if self.win_length > self.n_fft:
            raise PipelineError(f"win_length {self.win_length} is larger than n_fft {self.n_fft}")
        window, window_name = (self.win_length, "win_length") if self.win_length else (self.n_fft, "n_fft")
        if self.hop_length > window:
            # Samples between two windows are in no frame: nothing can rebuild them.
            raise PipelineError(f"hop_length {self.hop_length} is larger than {window_name} {window}, so audio "
                                f"between frames would be lost; use a hop_length of at most {window} "
                                f"(usually a quarter: {max(1, window // 4)})")
        _check_window(self.window, self.win_length or self.n_fft)
        settings = {k: v for k, v in self.values.items() if k != "spec_from"}
        return FeatureSpec(sample_rate=incoming.sample_rate, **settings)

    def process(self, signal: Waveform) -> Spectrogram:
        from transmute import dsp

        spec = self.check(signal.spec)
        feats, frames = dsp.features(signal.data[:, 0, :], spec, signal.lengths)
        return Spectrogram(feats, spec, signal.names, frames, list(signal.lengths))


class MelToLinear(Stage):
    """Mel spectrogram -> linear-frequency magnitude: pseudo-inverse plus a few NNLS updates."""

    name = "audio.mel_to_linear"
    consumes = Spectrogram
    produces = Spectrogram
    params = {
        "n_iter": Param(int, 32, "multiplicative NNLS updates after the pseudo-inverse (0: pseudo-inverse only)",
                        min=0, max=1000),
    }

    def check(self, incoming: FeatureSpec) -> FeatureSpec:
        if not incoming.is_mel:
            raise PipelineError("needs a mel spectrogram, but the incoming one is linear (n_mels = 0)")
        return incoming.replace(n_mels=0, power=1.0, log=False, normalization=None)

    def process(self, signal: Spectrogram) -> Spectrogram:
        from transmute import dsp

        linear = dsp.linear_magnitude(signal.data, signal.spec, self.n_iter)
        # The padding of log features (0.0 = log 1) would come out as loud magnitudes: keep it silent,
        # as audio.logmel's magnitudes are (docs/writing-plugins.md, "What the padding holds").
        linear = linear * signal.valid_mask()
        return signal.replace(data=linear, spec=self.check(signal.spec))


class GriffinLim(Stage):
    """Linear magnitude spectrogram -> audio by fast Griffin-Lim (momentum), batched, on any device."""

    name = "audio.griffinlim"
    consumes = Spectrogram
    produces = Waveform
    params = {
        "n_iter": Param(int, 32, "iterations", min=0, max=10000),
        "momentum": Param(float, 0.99, "fast Griffin-Lim momentum (0 is the classic algorithm)", min=0, max=1.5),
        "init": Param(str, "random", "initial phase", choices=("random", "zeros")),
        "seed": Param(int, 0, "seed for the random initial phase (per item, by name)"),
    }

    def check(self, incoming: FeatureSpec) -> WaveformSpec:
        self.require("n_mels", 0, incoming.n_mels, "add an audio.mel_to_linear stage before Griffin-Lim")
        return WaveformSpec(sample_rate=incoming.sample_rate, channels=1)

    def process(self, signal: Spectrogram) -> Waveform:
        from transmute import dsp

        spec = signal.spec
        magnitude = dsp.linear_magnitude(signal.data, spec)
        samples = signal.sample_lengths or [
            (n - 1) * spec.hop_length + (0 if spec.center else spec.n_fft) for n in signal.lengths
        ]
        audio = dsp.griffin_lim(
            magnitude, spec, signal.lengths, samples, n_iter=self.n_iter, momentum=self.momentum,
            init=self.init, seed=self.seed, names=signal.names,
        )
        return Waveform(audio.unsqueeze(1), WaveformSpec(spec.sample_rate, 1), signal.names, list(samples))


SUBTYPES = {"wav": ("PCM_16", "PCM_24", "PCM_32", "FLOAT"), "flac": ("PCM_16", "PCM_24")}


class SaveAudio(Stage):
    """Save audio as WAV or FLAC; peaks above full scale are limited, never wrapped."""

    name = "audio.save"
    consumes = Waveform
    produces = File
    params = {
        "format": Param(str, "wav", "file format", choices=tuple(SUBTYPES)),
        "subtype": Param(str, "PCM_16", "sample encoding", choices=("PCM_16", "PCM_24", "PCM_32", "FLOAT")),
        "peak": Param(str, "limit", "'limit' scales a too-loud item down to -0.1 dBFS, 'clip' clips it, "
                      "'normalize' scales every item to -1 dBFS", choices=("limit", "clip", "normalize")),
    }

    def __init__(self, label=None, **values):
        super().__init__(label, **values)
        if self.subtype not in SUBTYPES[self.format]:
            from transmute.stages import ParamError

            raise ParamError("subtype", f"parameter 'subtype': {self.format} cannot store {self.subtype}; "
                             f"use one of {', '.join(SUBTYPES[self.format])}")

    def suffix(self) -> str:
        return "." + self.format

    def save(self, item: Waveform, path: Path) -> None:
        import numpy as np
        import soundfile

        audio = item.data[0].detach().cpu().numpy().T.astype(np.float32)  # (samples, channels)
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if self.peak == "normalize" and peak > 0:
            audio = audio * (10 ** (-1 / 20) / peak)
        elif self.peak == "limit" and peak > 0.989:
            audio = audio * (0.989 / peak)
        if self.subtype != "FLOAT":
            audio = np.clip(audio, -1.0, 1.0)
        soundfile.write(str(path), audio, item.sample_rate, subtype=self.subtype, format=self.format.upper())


class Tone(Stage):
    """Generate test tones: item i is a sine at frequency * 2**(i/12), optionally swept."""

    name = "audio.tone"
    consumes = None
    produces = Waveform
    params = {
        "frequency": Param(float, 440.0, "frequency of the first tone (Hz)", min=1),
        "sweep_to": Param(float, 0.0, "if set, sweep exponentially from frequency to this (Hz)", min=0),
        "duration": Param(float, 1.0, "seconds", min=0.001, max=3600),
        "sample_rate": Param(int, 22050, "Hz", min=1000),
        "amplitude": Param(float, 0.5, "peak amplitude", min=0, max=1),
    }

    def check(self, incoming):
        top = max(self.frequency, self.sweep_to)
        if top >= self.sample_rate / 2:
            raise PipelineError(f"{top:g} Hz is not below the Nyquist frequency {self.sample_rate / 2:g} Hz")
        return WaveformSpec(self.sample_rate, 1)

    def generate(self, count: int, names: list[str]) -> Waveform:
        import math

        import torch

        n = max(1, int(round(self.duration * self.sample_rate)))
        t = torch.arange(n, dtype=torch.float64) / self.sample_rate
        rows = []
        for i, name in enumerate(names):
            index = int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else i
            f0 = self.frequency * 2 ** (index / 12)
            if self.sweep_to:
                f1 = self.sweep_to * 2 ** (index / 12)
                k = math.log(f1 / f0) / self.duration
                phase = 2 * math.pi * f0 * (torch.expm1(k * t) / k if k else t)
            else:
                phase = 2 * math.pi * f0 * t
            rows.append(self.amplitude * torch.sin(phase))
        data = torch.stack(rows).unsqueeze(1).float()
        return Waveform(data, WaveformSpec(self.sample_rate, 1), list(names))


STAGES = (LoadAudio, Resample, LogMel, MelToLinear, GriffinLim, SaveAudio, Tone)
