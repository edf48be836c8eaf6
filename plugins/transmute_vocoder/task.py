"""Training the Vocos vocoder on folders of speech, in the engine's loop.

Losses (the plugin README says where each comes from and what differs from the paper):
- L1 between the log-mels of the output and of the target (HiFi-GAN, Vocos; weight 45);
- multi-resolution STFT loss, spectral convergence + log-magnitude L1 at three
  resolutions (Parallel WaveGAN);
- phase: the anti-wrapping instantaneous-phase, group-delay and
  instantaneous-frequency losses of APNet (Ai & Ling, 2023) on the head's phase,
  weighted by the target's magnitude (our addition; it is what lets a CPU-sized
  model get the phase right before the discriminators start);
- from step `gan_from` on: least-squares adversarial losses of the
  multi-period and multi-resolution discriminators, and feature matching.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.gan import adversarial_loss
from transmute.metrics import loss_specs, stft_loss
from transmute.signals import FeatureSpec
from transmute.training import Context, Task, TrainingData, require_hparam

from transmute_vocoder.networks import PHASE_REFERENCES, PRESETS, Discriminators, Vocos, count_parameters

PLUGIN, MODEL, VERSION = "vocoder", "vocos", "1.0"

# The voice converter's features (HiFi-GAN's mel settings with fmax 8000), so the
# shipped vocoder takes what the shipped converter makes.
FEATURES = FeatureSpec(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=80, fmin=0, fmax=8000)
MIN_SECONDS = 2.0


def validate_hparams(h: dict) -> None:
    need = require_hparam
    for key in ("dim", "hidden", "blocks", "mpd_width", "mrd_width", "segment_samples", "batch_size", "steps"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    need(h["segment_samples"] >= 2048, f"segment_samples must be at least 2048 (the largest loss STFT), "
                                       f"got {h['segment_samples']}")
    need(h["phase_reference"] in PHASE_REFERENCES,
         f"phase_reference must be one of {', '.join(PHASE_REFERENCES)}, got {h['phase_reference']!r}")
    for key in ("lr", "lr_d"):
        need(0 < h[key] < 1, f"{key} must be a learning rate between 0 and 1, got {h[key]!r}")
    for key in ("mel_weight", "stft_weight", "phase_weight", "fm_weight", "mrd_weight"):
        need(isinstance(h[key], (int, float)) and h[key] >= 0, f"{key} must be a number >= 0, got {h[key]!r}")
    for key in ("gan_from", "decay_from"):
        need(isinstance(h[key], int) and h[key] >= 0, f"{key} must be a step >= 0, got {h[key]!r}")
    need(h["min_gain_db"] <= h["max_gain_db"] <= 0,
         f"need min_gain_db <= max_gain_db <= 0, got {h['min_gain_db']} and {h['max_gain_db']}")


def read_speech(folders: list[Path], sample_rate: int) -> tuple[dict, list[str]]:
    """{'FOLDER/relative path': mono float32 audio at sample_rate} of every readable file, and what was skipped."""
    from transmute.audio import read_audio_folders

    audio, skipped = read_audio_folders(folders, sample_rate)
    seconds = sum(a.shape[0] for a in audio.values()) / sample_rate
    if seconds < MIN_SECONDS:
        unread = f"; {len(skipped)} files could not be read, e.g. {skipped[0]}" if skipped else ""
        raise TransmuteError(f"{', '.join(map(str, folders))}: {seconds:.1f} s of readable audio; a vocoder needs "
                             f"at least {MIN_SECONDS:g} s (hours for a good one){unread}")
    return audio, skipped


class SpeechSegments(TrainingData):
    """An item is a random segment of one recording at a random level (peak between min and max gain, dBFS).

    The random level is what makes the vocoder follow the level of its input
    instead of learning one loudness.
    """

    def __init__(self, audio: dict, segment_samples: int, gain_db: tuple[float, float]):
        self.names = list(audio)
        self.audio = list(audio.values())
        self.peaks = [float(max(abs(a).max(), 1e-4)) for a in self.audio]
        self.samples, self.gain_db = segment_samples, gain_db

    def items(self):
        return self.names

    def load(self, index, rng):
        import numpy as np

        audio, n = self.audio[index], self.samples
        if audio.shape[0] < n:
            audio = np.pad(audio, (0, n - audio.shape[0]))
        start = int(rng.integers(audio.shape[0] - n + 1))
        gain = 10 ** (rng.uniform(*self.gain_db) / 20) / self.peaks[index]
        return torch.from_numpy(audio[start : start + n] * np.float32(gain))


def anti_wrapped(x: torch.Tensor) -> torch.Tensor:
    """|x| after wrapping into [-pi, pi]: the distance between two phases (APNet's anti-wrapping function)."""
    return torch.abs(x - 2 * math.pi * torch.round(x / (2 * math.pi)))


def phase_loss(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Instantaneous phase + group delay (along frequency) + instantaneous frequency (along time).

    (batch, bins, frames) each; `weight` says how much each bin counts (its
    magnitude, relative to the item's mean: the phase of silence is noise).
    """
    ip = (anti_wrapped(predicted - target) * weight).mean()
    gd = (anti_wrapped(torch.diff(predicted, dim=1) - torch.diff(target, dim=1)) * weight[:, 1:]).mean()
    iaf = (anti_wrapped(torch.diff(predicted, dim=2) - torch.diff(target, dim=2)) * weight[:, :, 1:]).mean()
    return ip + gd + iaf


def cosine_decay(steps: int, decay_from: int = 0):
    """Vocos' schedule: cosine from the full rate (held until decay_from) down to 1% at the last step."""
    def factor(step: int) -> float:
        progress = min(max(step - decay_from, 0), steps - decay_from) / max(1, steps - decay_from)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class VocoderTask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, audio: dict, preset: str = "small", overrides: dict | None = None,
                 spec: FeatureSpec = FEATURES, corpus: str = ""):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.preset = preset
        self.h = dict(PRESETS[preset], **(overrides or {}))
        validate_hparams(self.h)
        self.spec = spec.replace(normalization=None)
        self.audio = audio
        self.corpus = corpus
        # Samples: the longest recording of each folder, first 4 s.
        by_folder = {}
        for name, a in audio.items():
            folder = name.split("/", 1)[0]
            if folder not in by_folder or a.shape[0] > audio[by_folder[folder]].shape[0]:
                by_folder[folder] = name
        self.sample_names = sorted(by_folder.values())[:4]
        self.skipped: list[str] = []

    def hparams(self) -> dict:
        # The schedule (steps, decay_from) may change when a run is resumed for longer.
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "decay_from", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, **settings, "feature_spec": self.spec.to_dict()}

    def generator(self) -> Vocos:
        h = self.h
        return Vocos(self.spec.n_bins, self.spec.n_fft, h["dim"], h["hidden"], h["blocks"],
                     phase_reference=h["phase_reference"], hop_length=self.spec.hop_length)

    def setup(self, ctx: Context) -> None:
        h, dev = self.h, ctx.device
        self.ctx = ctx
        self.nets = {"generator": self.generator().to(dev),
                     "discriminators": Discriminators(self.spec.sample_rate, h["mpd_width"], h["mrd_width"]).to(dev)}
        self.run = {name: ctx.wrap(net) for name, net in self.nets.items()}
        # Before gan_from the discriminators' optimizer does not step, but the loop steps its scheduler.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        betas = (0.8, 0.9)  # HiFi-GAN's and Vocos'
        self.opt = {"g": torch.optim.AdamW(self.nets["generator"].parameters(), lr=h["lr"], betas=betas),
                    "d": torch.optim.AdamW(self.nets["discriminators"].parameters(), lr=h["lr_d"], betas=betas)}
        decay = cosine_decay(h["steps"], h["decay_from"])
        self.sched = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.opt.items()}
        self.loss_specs = loss_specs(self.spec.sample_rate)

    def modules(self):
        return self.nets

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> SpeechSegments:
        h = self.h
        return SpeechSegments(self.audio, h["segment_samples"], (h["min_gain_db"], h["max_gain_db"]))

    # ---------------------------------------------------------------- step
    def synthesize(self, mel: torch.Tensor, samples: int, generator=None):
        """(batch, n_mels, frames) -> ((batch, samples) audio, magnitude, phase)."""
        from transmute import dsp

        magnitude, phase = (generator or self.run["generator"])(mel)
        audio = dsp.istft(torch.polar(magnitude, phase), self.spec, [samples] * mel.shape[0])
        return audio, magnitude, phase

    def train_step(self, batch, step: int, ctx: Context) -> dict[str, torch.Tensor]:
        from transmute import dsp

        h, spec = self.h, self.spec
        audio = batch.to(ctx.device, non_blocking=True)
        samples = audio.shape[1]
        with torch.no_grad():
            target_stft, _ = dsp.stft(audio, spec)
            magnitude = target_stft.abs()
            mel = dsp.magnitudes_to_features(magnitude, spec)
            weight = magnitude / magnitude.mean(dim=(1, 2), keepdim=True).clamp_min(1e-8)
        with ctx.autocast():
            output, _, phase = self.synthesize(mel, samples)
        gan = step >= h["gan_from"]
        losses = {}
        if gan:  # discriminators first, on the output as it is before this step's generator update
            self.opt["d"].zero_grad(set_to_none=True)
            with ctx.autocast():
                real_mpd, real_mrd = self.run["discriminators"](audio)
                fake_mpd, fake_mrd = self.run["discriminators"](output.detach())
                d_mpd = sum(adversarial_loss(r, True) + adversarial_loss(f, False)
                            for (r, _), (f, _) in zip(real_mpd, fake_mpd))
                d_mrd = sum(adversarial_loss(r, True) + adversarial_loss(f, False)
                            for (r, _), (f, _) in zip(real_mrd, fake_mrd))
                loss_d = d_mpd + h["mrd_weight"] * d_mrd
            loss_d.float().backward()
            self.opt["d"].step()
            losses.update({"d_mpd": d_mpd.detach(), "d_mrd": d_mrd.detach()})

        self.opt["g"].zero_grad(set_to_none=True)
        with ctx.autocast():
            output_mel = dsp.magnitudes_to_features(dsp.stft(output, spec)[0].abs(), spec)
            loss_mel = F.l1_loss(output_mel, mel)
            loss_stft = stft_loss(output, audio, self.loss_specs)
            loss_phase = phase_loss(phase, target_stft.angle(), weight)
            loss = h["mel_weight"] * loss_mel + h["stft_weight"] * loss_stft + h["phase_weight"] * loss_phase
            if gan:
                with torch.no_grad():
                    real_mpd, real_mrd = self.run["discriminators"](audio)
                fake_mpd, fake_mrd = self.run["discriminators"](output)
                adv_mpd = sum(adversarial_loss(f, True) for f, _ in fake_mpd)
                adv_mrd = sum(adversarial_loss(f, True) for f, _ in fake_mrd)
                fm_mpd = feature_matching(real_mpd, fake_mpd)
                fm_mrd = feature_matching(real_mrd, fake_mrd)
                loss = loss + adv_mpd + h["fm_weight"] * fm_mpd + h["mrd_weight"] * (adv_mrd + h["fm_weight"] * fm_mrd)
                losses.update({"g_mpd": adv_mpd.detach(), "g_mrd": adv_mrd.detach(),
                               "fm_mpd": fm_mpd.detach(), "fm_mrd": fm_mrd.detach()})
        loss.float().backward()
        self.opt["g"].step()
        losses.update({"mel": loss_mel.detach(), "stft": loss_stft.detach(), "phase": loss_phase.detach()})
        return losses

    # ---------------------------------------------------------------- outputs
    def write_samples(self, step: int, folder: Path) -> None:
        import soundfile

        from transmute import dsp
        from transmute.files import atomic_path
        from transmute.viz import spectrogram_png

        folder.mkdir(parents=True, exist_ok=True)
        net = self.nets["generator"]
        net.eval()
        try:
            for name in self.sample_names:
                audio = torch.from_numpy(self.audio[name][: 4 * self.spec.sample_rate]).unsqueeze(0).to(self.ctx.device)
                with torch.no_grad():
                    mel, _ = dsp.features(audio, self.spec)
                    output, _, _ = self.synthesize(mel, audio.shape[1], net)
                    output_mel, _ = dsp.features(output, self.spec)
                label = f"step{step:07d}-{name.split('/', 1)[0]}"
                spectrogram_png([mel[0].cpu(), output_mel[0].cpu()], folder / f"{label}.png",
                                titles=[f"{name} (input)", f"vocoder, step {step}"])
                with atomic_path(folder / f"{label}.wav") as tmp:
                    soundfile.write(str(tmp), output[0].clamp(-1, 1).cpu().numpy(), self.spec.sample_rate,
                                    format="WAV", subtype="PCM_16")
        finally:
            net.train()

    def export(self) -> Checkpoint:
        # float16 halves the file; synthesis runs in float32 after loading.
        tensors = {k: v.detach().to(torch.float16) for k, v in self.nets["generator"].state_dict().items()}
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={k: self.h[k] for k in ("dim", "hidden", "blocks", "phase_reference")} | {"preset": self.preset},
            feature_spec=self.spec, extra={"corpus": self.corpus},
        )

    def describe_size(self) -> str:
        return (f"generator {count_parameters(self.nets['generator']) / 1e6:.2f}M parameters, "
                f"discriminators {count_parameters(self.nets['discriminators']) / 1e6:.2f}M")


def feature_matching(real: list, fake: list) -> torch.Tensor:
    """Mean L1 between the discriminators' feature maps of real and generated audio (HiFi-GAN)."""
    total, count = 0.0, 0
    for (_, real_features), (_, fake_features) in zip(real, fake):
        for r, f in zip(real_features, fake_features):
            total = total + F.l1_loss(f, r.detach())
            count += 1
    return total / max(1, count)
