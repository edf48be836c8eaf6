"""Vocos (Siuzdenko, 2023): a ConvNeXt backbone at frame rate and an STFT head, plus its discriminators.

The generator never upsamples: every layer runs at the mel frame rate, and the
head predicts each frame's STFT magnitude and phase, which the engine's one
iSTFT (transmute.dsp.istft) turns into samples. That is what makes it fast on a
CPU. The discriminators are HiFi-GAN's multi-period one and the
multi-resolution spectrogram one Vocos takes from UnivNet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

# Sizes of the generator (backbone) and the discriminators. `default` is the paper's
# 24 kHz model (dim 512, 1536 hidden, 8 blocks: 13.5M parameters). `small` is what 2 CPU
# cores can train in an hour or two; `tiny` is for tests.
PRESETS = {
    "default": dict(dim=512, hidden=1536, blocks=8, phase_reference="frame", mpd_width=32, mrd_width=32, segment_samples=16384,
                    batch_size=16, steps=1_000_000, lr=5e-4, lr_d=5e-4, gan_from=0, mel_weight=45.0,
                    stft_weight=1.0, phase_weight=1.0, fm_weight=2.0, mrd_weight=0.1,
                    checkpoint_every=5000, sample_every=5000, decay_from=0, max_gain_db=-1.0, min_gain_db=-24.0),
    "small": dict(dim=256, hidden=768, blocks=8, phase_reference="time", mpd_width=8, mrd_width=8, segment_samples=8192,
                  batch_size=8, steps=11500, lr=1e-3, lr_d=5e-4, gan_from=9000, mel_weight=45.0,
                  stft_weight=1.0, phase_weight=1.0, fm_weight=2.0, mrd_weight=0.1,
                  checkpoint_every=500, sample_every=500, decay_from=0, max_gain_db=-1.0, min_gain_db=-24.0),
    "tiny": dict(dim=16, hidden=32, blocks=2, phase_reference="time", mpd_width=2, mrd_width=2, segment_samples=2048,
                 batch_size=2, steps=4, lr=1e-3, lr_d=5e-4, gan_from=2, mel_weight=45.0,
                 stft_weight=1.0, phase_weight=1.0, fm_weight=2.0, mrd_weight=0.1,
                 checkpoint_every=2, sample_every=0, decay_from=0, max_gain_db=-1.0, min_gain_db=-24.0),
}
KERNEL = 7  # every convolution of the generator; its receptive field follows from this and the blocks


def receptive_radius(blocks: int) -> int:
    """Frames on each side that an output frame depends on (the input conv plus one depthwise conv per block)."""
    return (KERNEL // 2) * (blocks + 1)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm, pointwise MLP, layer scale; residual. (batch, dim, frames) in and out."""

    def __init__(self, dim: int, hidden: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, KERNEL, padding=KERNEL // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class Vocos(nn.Module):
    """Log-mel (batch, n_mels, frames) -> STFT magnitude and phase (batch, n_fft // 2 + 1, frames).

    `mask` (batch, 1, frames; 1 on an item's frames, 0 on padding) zeroes the
    padding before every convolution, so each item of a batch gets exactly what
    it would get alone (every layer but the convolutions works frame by frame).
    """

    def __init__(self, n_mels: int, n_fft: int, dim: int, hidden: int, blocks: int, initialise: bool = True,
                 phase_reference: str = "frame", hop_length: int = 256):
        super().__init__()
        if phase_reference not in PHASE_REFERENCES:
            raise ValueError(f"phase_reference must be one of {', '.join(PHASE_REFERENCES)}, got {phase_reference!r}")
        self.n_fft, self.phase_reference, self.hop_length = n_fft, phase_reference, hop_length
        self.embed = nn.Conv1d(n_mels, dim, KERNEL, padding=KERNEL // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, hidden, 1.0 / blocks) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_fft + 2)
        if initialise:  # not when weights are loaded next: truncated-normal draws cost half a second of start-up
            self.apply(_init)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor | None = None,
                first_frame: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(magnitude, phase), each (batch, n_fft // 2 + 1, frames); torch.polar makes the spectrum.

        first_frame: the index of mel's first frame in the whole input (a chunk's
        offset), which the 'time' phase reference needs.
        """
        gate = (lambda t: t * mask) if mask is not None else (lambda t: t)
        x = self.embed(gate(mel))
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(gate(x))
        x = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)
        log_magnitude, phase = x.float().chunk(2, dim=1)
        if self.phase_reference == "time":
            phase = phase + bin_advance(self.n_fft, self.hop_length, first_frame, phase.shape[-1], phase.device)
        # Vocos clips the magnitude at 100 (far above any real frame): one wild output cannot blow up the iSTFT.
        return torch.exp(log_magnitude).clamp(max=1e2), phase


# 'frame': the head predicts each frame's STFT phase, as in the paper. 'time': it predicts the phase
# against the start of the input, and the rotation each bin's centre frequency makes from frame to frame
# is added exactly. Why: a convolutional network gives the same output for the same input, so with
# 'frame' a steady vowel comes out with the same phase in every frame, which puts its energy on
# multiples of sample_rate / hop (86 Hz here), whatever its pitch; with 'time' the same output is a
# steady tone at each bin's own frequency (multiples of sample_rate / n_fft, 21.5 Hz).
PHASE_REFERENCES = ("frame", "time")


def bin_advance(n_fft: int, hop_length: int, first_frame: int, frames: int, device) -> torch.Tensor:
    """(bins, frames): each bin's centre-frequency rotation at frames first_frame.., plus pi * bin (the window
    is centred in its frame), mod 2 pi. Whole-number arithmetic: exact however long the input."""
    k = torch.arange(n_fft // 2 + 1, device=device).view(-1, 1)
    t = torch.arange(first_frame, first_frame + frames, device=device).view(1, -1)
    turns = (k * hop_length * t + k * (n_fft // 2)) % n_fft  # in n_fft-ths of a turn
    return (2 * torch.pi / n_fft) * turns.float()


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- discriminators


def _judge(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor):
    """(scores flattened per item, every layer's feature map): what feature matching compares."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's: audio folded into (samples / p, p) and judged by 2-D convs along time."""

    def __init__(self, period: int, width: int):
        super().__init__()
        self.period = period
        chans = [1, width, 4 * width, 16 * width, 32 * width]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0))) for i in range(4))
        self.convs.append(weight_norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: torch.Tensor):
        batch, samples = audio.shape
        if samples % self.period:
            audio = F.pad(audio, (0, self.period - samples % self.period), mode="reflect")
        return _judge(self.convs, self.post, audio.view(batch, 1, -1, self.period))


class ResolutionDiscriminator(nn.Module):
    """UnivNet's, as Vocos uses it: 2-D convs over one STFT magnitude (frames x bins)."""

    def __init__(self, n_fft: int, width: int):
        super().__init__()
        self.n_fft = n_fft
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(1, width, (3, 9), padding=(1, 4)))])
        for _ in range(4):
            self.convs.append(weight_norm(nn.Conv2d(width, width, (3, 9), stride=(1, 2), padding=(1, 4))))
        self.convs.append(weight_norm(nn.Conv2d(width, width, (3, 3), padding=(1, 1))))
        self.post = weight_norm(nn.Conv2d(width, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor, spec):
        from transmute import dsp

        X, _ = dsp.stft(audio, spec)
        return _judge(self.convs, self.post, X.abs().transpose(1, 2).unsqueeze(1))  # (batch, 1, frames, bins)


class Discriminators(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) and multi-resolution (n_fft 512, 1024, 2048) discriminators."""

    PERIODS = (2, 3, 5, 7, 11)
    FFTS = (512, 1024, 2048)

    def __init__(self, sample_rate: int, mpd_width: int, mrd_width: int):
        super().__init__()
        from transmute.signals import FeatureSpec

        self.mpd = nn.ModuleList(PeriodDiscriminator(p, mpd_width) for p in self.PERIODS)
        self.mrd = nn.ModuleList(ResolutionDiscriminator(n, mrd_width) for n in self.FFTS)
        self.specs = [FeatureSpec(sample_rate=sample_rate, n_fft=n, hop_length=n // 4, n_mels=0, log=False)
                      for n in self.FFTS]

    def forward(self, audio: torch.Tensor):
        """[(scores, features)] of each period discriminator, then of each resolution one."""
        return [d(audio) for d in self.mpd], [d(audio, spec) for d, spec in zip(self.mrd, self.specs)]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
