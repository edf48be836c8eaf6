"""pix2pix networks (Isola et al., 2017): a U-Net generator and presets. The discriminator is the engine's
PatchGAN (transmute.gan.PatchDiscriminator) on the input and output stacked (6 channels).

U-Net: `depth` stride-2 4x4 convolutions down to a 1x1 bottleneck (8 at 256 px,
7 at 128, 6 at 64), widths 1, 2, 4, 8, 8, ... x `width`, and transposed
convolutions back up, each decoder layer fed the matching encoder layer's
output (the skip connections). Encoder: LeakyReLU 0.2; decoder: ReLU; dropout
0.5 in the first three decoder layers; tanh out.
"""

from __future__ import annotations

import torch
from torch import nn

PRESETS = {
    # The paper's: 64-wide U-Net and PatchGAN, batch 1, 256 px crops from 286 px (random jitter),
    # 200 epochs of a few thousand images at constant rate then as many decaying. GPU, hours.
    "default": {
        "width": 64, "disc_width": 64, "crop_size": 256, "load_size": 286, "steps": 400_000, "decay_from": 200_000,
        "batch_size": 1, "lr": 2e-4, "lambda_l1": 100.0, "gan_loss": "vanilla", "dropout": 0.5,
        "checkpoint_every": 2000, "sample_every": 5000,
    },
    # Half the width at 128 px: learns a recognisable translation on 2 CPU cores in about an hour.
    "small": {
        "width": 32, "disc_width": 32, "crop_size": 128, "load_size": 142, "steps": 8000, "decay_from": 4000,
        "batch_size": 4, "lr": 2e-4, "lambda_l1": 100.0, "gan_loss": "vanilla", "dropout": 0.5,
        "checkpoint_every": 250, "sample_every": 1000,
    },
    # For tests: seconds.
    "tiny": {
        "width": 8, "disc_width": 8, "crop_size": 32, "load_size": 36, "steps": 20, "decay_from": 10,
        "batch_size": 2, "lr": 2e-4, "lambda_l1": 100.0, "gan_loss": "vanilla", "dropout": 0.5,
        "checkpoint_every": 10, "sample_every": 0,
    },
}


def depth_for(size: int) -> int:
    """Down-samplings that take a `size` crop to a 1x1 bottleneck (8 at 256), at least 3."""
    return max(3, size.bit_length() - 1)


class UNet(nn.Module):
    """(n, in_channels, H, W) in [-1, 1] -> (n, out_channels, H, W) in [-1, 1]; H, W multiples of 2**depth.

    Normalisation is instance norm: what the paper's batch norm at batch size 1 computes, in training and at
    test time alike, and it keeps each image's output independent of the others in a batch.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 64, depth: int = 8,
                 dropout: float = 0.5):
        super().__init__()
        self.depth = depth
        widths = [width * min(2 ** i, 8) for i in range(depth)]
        self.down = nn.ModuleList()
        for i in range(depth):
            cin = in_channels if i == 0 else widths[i - 1]
            innermost, outermost = i == depth - 1, i == 0
            layers: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(cin, widths[i], 4, 2, 1, bias=outermost or innermost))
            if not (outermost or innermost):
                layers.append(nn.InstanceNorm2d(widths[i], affine=True))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for j, i in enumerate(reversed(range(depth))):  # j-th decoder layer undoes the i-th down-sampling
            cin = widths[i] * (1 if i == depth - 1 else 2)
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(cin, widths[i - 1], 4, 2, 1, bias=False),
                      nn.InstanceNorm2d(widths[i - 1], affine=True)]
            if dropout and j < 3:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    @property
    def multiple(self) -> int:
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        for layer in self.up:
            x = layer(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        return x


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
