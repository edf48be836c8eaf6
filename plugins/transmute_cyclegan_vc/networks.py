"""MaskCycleGAN-VC networks (Kaneko et al., ICASSP 2021; the CycleGAN-VC2 2-1-2D design).

Generator: 2D convolutions down-sample time and frequency by 4, 1D residual
blocks with gated linear units work on the flattened features, 2D sub-pixel
convolutions up-sample back. Its input is two channels: the (masked) mel
spectrogram and the mask. Discriminator: a 2D PatchGAN with GLUs.

Widths come from a preset; the paper's are the "default" preset.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PRESETS = {
    # The paper's widths: 128-channel 2D convolutions, 256-channel residual blocks,
    # a 128-channel discriminator. Trains on one GPU in hours.
    "default": {
        "gen_channels": 128, "res_channels": 256, "res_blocks": 6, "disc_channels": 128,
        "steps": 200_000, "batch_size": 1, "lr_g": 2e-4, "lr_d": 1e-4, "decay_from": 100_000,
        "identity_until": 10_000, "segment_frames": 64, "max_mask_frames": 25,
        "checkpoint_every": 2000, "sample_every": 10_000,
    },
    # An eighth of the width (0.43 s a step at batch 4 on 2 CPU cores): learns a
    # usable conversion on a CPU in under an hour.
    "small": {
        "gen_channels": 16, "res_channels": 64, "res_blocks": 6, "disc_channels": 16,
        "steps": 6000, "batch_size": 4, "lr_g": 2e-4, "lr_d": 1e-4, "decay_from": 3000,
        "identity_until": 10_000, "segment_frames": 64, "max_mask_frames": 25,
        "checkpoint_every": 250, "sample_every": 1000,
    },
    # For tests: seconds, not minutes.
    "tiny": {
        "gen_channels": 8, "res_channels": 16, "res_blocks": 2, "disc_channels": 8,
        "steps": 20, "batch_size": 2, "lr_g": 2e-4, "lr_d": 1e-4, "decay_from": 10,
        "identity_until": 10_000, "segment_frames": 32, "max_mask_frames": 12,
        "checkpoint_every": 10, "sample_every": 0,
    },
}


class GLUConv2d(nn.Sequential):
    """Conv2d producing 2x channels, optional instance norm, then a gated linear unit."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, norm=True):
        layers = [nn.Conv2d(cin, 2 * cout, kernel, stride, padding)]
        if norm:
            layers.append(nn.InstanceNorm2d(2 * cout, affine=True))
        layers.append(nn.GLU(dim=1))
        super().__init__(*layers)


class UpsampleGLU(nn.Sequential):
    """Sub-pixel up-sampling by 2 in both axes: conv -> PixelShuffle -> instance norm -> GLU."""

    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, 2 * cout * 4, 5, 1, 2),
            nn.PixelShuffle(2),
            nn.InstanceNorm2d(2 * cout, affine=True),
            nn.GLU(dim=1),
        )


class ResidualBlock1d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gated = nn.Sequential(
            nn.Conv1d(channels, 4 * channels, 3, 1, 1), nn.InstanceNorm1d(4 * channels, affine=True), nn.GLU(dim=1)
        )
        self.out = nn.Sequential(nn.Conv1d(2 * channels, channels, 3, 1, 1), nn.InstanceNorm1d(channels, affine=True))

    def forward(self, x):
        return x + self.out(self.gated(x))


class Generator(nn.Module):
    """(batch, n_mels, frames) features and mask -> converted features of the same shape.

    n_mels must be a multiple of 4; frames are padded inside to a multiple of 4,
    and to at least 8 so the down-sampled features have more than one frame for
    instance normalisation (a 1-sample file has one frame).
    """

    def __init__(self, n_mels=80, gen_channels=128, res_channels=256, res_blocks=6):
        super().__init__()
        if n_mels % 4:
            raise ValueError(f"n_mels must be a multiple of 4, got {n_mels}")
        c = gen_channels
        self.n_mels = n_mels
        self.entry = GLUConv2d(2, c, (5, 15), 1, (2, 7), norm=False)
        self.down = nn.Sequential(GLUConv2d(c, 2 * c, 5, 2, 2), GLUConv2d(2 * c, 2 * c, 5, 2, 2))
        flat = 2 * c * (n_mels // 4)
        self.to_1d = nn.Sequential(nn.Conv1d(flat, res_channels, 1), nn.InstanceNorm1d(res_channels, affine=True))
        self.residual = nn.Sequential(*[ResidualBlock1d(res_channels) for _ in range(res_blocks)])
        self.to_2d = nn.Sequential(nn.Conv1d(res_channels, flat, 1), nn.InstanceNorm1d(flat, affine=True))
        self.up = nn.Sequential(UpsampleGLU(2 * c, c), UpsampleGLU(c, c // 2))
        self.exit = nn.Conv2d(c // 2, 1, (5, 15), 1, (2, 7))

    def forward(self, x, mask=None):
        frames = x.shape[-1]
        if mask is None:
            mask = torch.ones_like(x)
        pad = max(8, frames + (-frames) % 4) - frames
        if pad:
            x = F.pad(x, (0, pad), mode="replicate")
            mask = F.pad(mask, (0, pad), value=1.0)
        h = self.down(self.entry(torch.stack([x * mask, mask], dim=1)))
        b, ch, fr, t = h.shape
        h = self.to_2d(self.residual(self.to_1d(h.reshape(b, ch * fr, t)))).reshape(b, ch, fr, t)
        return self.exit(self.up(h))[:, 0, :, :frames]


class Discriminator(nn.Module):
    """2D PatchGAN over (batch, n_mels, frames): one real/fake score per patch."""

    def __init__(self, disc_channels=128):
        super().__init__()
        d = disc_channels
        self.net = nn.Sequential(
            GLUConv2d(1, d, 3, 1, 1, norm=False),
            GLUConv2d(d, 2 * d, 3, 2, 1),
            GLUConv2d(2 * d, 4 * d, 3, 2, 1),
            GLUConv2d(4 * d, 8 * d, 3, 2, 1),
            GLUConv2d(8 * d, 8 * d, (1, 5), 1, (0, 2)),
            nn.Conv2d(8 * d, 1, (1, 3), 1, (0, 1)),
        )

    def forward(self, x):
        return self.net(x.unsqueeze(1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
