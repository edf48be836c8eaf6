"""CycleGAN networks (Zhu et al., 2017): the ResNet generator of Johnson et al. (2016) and presets. The
discriminators are the engine's PatchGAN (transmute.gan.PatchDiscriminator).

Generator: c7s1-w, two stride-2 3x3 convolutions (2w, 4w), `blocks` residual
blocks at 4w (9 at 256 px, 6 at 128 and below), two stride-2 transposed
convolutions back, c7s1-3 with tanh. Reflection padding, instance norm.
"""

from __future__ import annotations

import torch
from torch import nn

PRESETS = {
    # The paper's: 64 wide, batch 1, 256 px crops from 286 px, 9 blocks at 256 (6 below), about 200 epochs.
    "default": {
        "width": 64, "disc_width": 64, "blocks": 0, "crop_size": 256, "load_size": 286, "steps": 400_000,
        "decay_from": 200_000, "batch_size": 1, "lr": 2e-4, "lambda_cycle": 10.0, "lambda_identity": 0.5,
        "pool_size": 50, "checkpoint_every": 2000, "sample_every": 5000,
    },
    # A quarter of the width at 64 px crops: a recognisable translation on 2 CPU cores in about an hour.
    "small": {
        "width": 16, "disc_width": 32, "blocks": 0, "crop_size": 64, "load_size": 72, "steps": 10000,
        "decay_from": 5000, "batch_size": 2, "lr": 2e-4, "lambda_cycle": 10.0, "lambda_identity": 0.5,
        "pool_size": 50, "checkpoint_every": 250, "sample_every": 1000,
    },
    # For tests: seconds.
    "tiny": {
        "width": 4, "disc_width": 8, "blocks": 2, "crop_size": 32, "load_size": 36, "steps": 20,
        "decay_from": 10, "batch_size": 2, "lr": 2e-4, "lambda_cycle": 10.0, "lambda_identity": 0.5,
        "pool_size": 4, "checkpoint_every": 10, "sample_every": 0,
    },
}


def blocks_for(size: int) -> int:
    """The paper's residual blocks for a crop size: 9 at 256 px and above, 6 below."""
    return 9 if size >= 256 else 6


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.InstanceNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(n, 3, H, W) in [-1, 1] -> (n, 3, H, W) in [-1, 1]; H and W multiples of 4."""

    multiple = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 64, blocks: int = 9):
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, w, 7, bias=False),
                                   nn.InstanceNorm2d(w), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(w * mult, w * mult * 2, 3, 2, 1, bias=False), nn.InstanceNorm2d(w * mult * 2),
                       nn.ReLU(True)]
        layers += [ResidualBlock(4 * w) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(w * mult, w * mult // 2, 3, 2, 1, output_padding=1, bias=False),
                       nn.InstanceNorm2d(w * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
