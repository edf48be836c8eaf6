"""What every adversarially trained family shares: losses, the CycleGAN objective, a history buffer,
a PatchGAN discriminator and the hold-then-decay learning-rate schedule.

One implementation, used by the voice converter (cyclegan_vc), the paired image
translator (pix2pix) and the unpaired one (cyclegan):

- `adversarial_loss`: least squares (Mao et al., 2017) or the original
  cross-entropy ("vanilla", on logits);
- `CycleObjective`: Zhu et al.'s (2017) unpaired objective: adversarial +
  lambda_cycle x cycle consistency (L1) + lambda_identity x identity (L1), for
  both directions at once, optionally with a second pair of discriminators on
  the cycle-reconstructed inputs (the two-step adversarial loss of
  CycleGAN-VC2);
- `HistoryBuffer`: Shrivastava et al.'s (2017) pool of past generator outputs
  that a discriminator is shown instead of only the latest (CycleGAN keeps
  50). It is an nn.Module whose contents are buffers, so a training checkpoint
  holds them and a resumed run continues exactly; its random choices come from
  torch's global generator, whose state the checkpoint also holds;
- `PatchDiscriminator`: the PatchGAN of pix2pix/CycleGAN (Isola et al., 2017):
  4x4 convolutions, one real/fake score per overlapping patch; 3 layers give
  the 70x70 receptive field, fewer suit smaller images;
- `linear_decay`: the learning rate held, then decayed linearly to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("lsgan", "vanilla")


def adversarial_loss(scores: torch.Tensor, real: bool, kind: str = "lsgan") -> torch.Tensor:
    """How far a discriminator's scores are from saying 'real' (real=True) or 'fake'."""
    if kind == "lsgan":
        return ((scores - 1) ** 2).mean() if real else (scores ** 2).mean()
    if kind == "vanilla":
        target = torch.ones_like(scores) if real else torch.zeros_like(scores)
        return F.binary_cross_entropy_with_logits(scores.float(), target.float())
    raise ValueError(f"unknown adversarial loss {kind!r}; choose one of {', '.join(KINDS)}")


def discriminator_loss(disc: Callable, real: torch.Tensor, fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """Half the sum of the real and fake terms (the halving slows D relative to G, as in the papers)."""
    return 0.5 * (adversarial_loss(disc(real), True, kind) + adversarial_loss(disc(fake.detach()), False, kind))


@dataclass
class CycleObjective:
    """Both directions of an unpaired translator trained at once.

    Generators are called as g(x); the first pass of each direction may be
    another callable (the voice converter passes its mask there).
    """

    lambda_cycle: float = 10.0
    lambda_identity: float = 5.0  # 0.5 x lambda_cycle, as the CycleGAN paper
    kind: str = "lsgan"

    def generators(self, g_ab, g_ba, d_a, d_b, a, b, *, identity: bool = True,
                   first_ab: Callable | None = None, first_ba: Callable | None = None,
                   d_a2=None, d_b2=None) -> tuple[torch.Tensor, dict, dict]:
        """(total generator loss, its parts, the translated and reconstructed batches)."""
        fake_b, fake_a = (first_ab or g_ab)(a), (first_ba or g_ba)(b)
        cycle_a, cycle_b = g_ba(fake_b), g_ab(fake_a)
        adv = adversarial_loss(d_b(fake_b), True, self.kind) + adversarial_loss(d_a(fake_a), True, self.kind)
        cycle = (cycle_a - a).abs().mean() + (cycle_b - b).abs().mean()
        total = adv + self.lambda_cycle * cycle
        parts = {"g_adv": adv}
        if d_a2 is not None:
            adv2 = adversarial_loss(d_a2(cycle_a), True, self.kind) + adversarial_loss(d_b2(cycle_b), True, self.kind)
            total = total + adv2
            parts["g_adv2"] = adv2
        parts["cycle"] = cycle
        same = torch.zeros((), device=a.device)
        if identity and self.lambda_identity:
            same = (g_ab(b) - b).abs().mean() + (g_ba(a) - a).abs().mean()
            total = total + self.lambda_identity * same
        parts["identity"] = same
        outputs = {"fake_a": fake_a, "fake_b": fake_b, "cycle_a": cycle_a, "cycle_b": cycle_b}
        return total, parts, outputs

    def discriminators(self, d_a, d_b, a, b, outputs: dict, *, pool_a: "HistoryBuffer | None" = None,
                       pool_b: "HistoryBuffer | None" = None, d_a2=None, d_b2=None) -> tuple[torch.Tensor, dict]:
        """(total discriminator loss, its parts): real vs translated (from the pools when given),
        and with d_a2/d_b2 real vs cycle-reconstructed."""
        fake_a, fake_b = outputs["fake_a"].detach(), outputs["fake_b"].detach()
        if pool_a is not None:
            fake_a = pool_a(fake_a)
        if pool_b is not None:
            fake_b = pool_b(fake_b)
        loss = discriminator_loss(d_a, a, fake_a, self.kind) + discriminator_loss(d_b, b, fake_b, self.kind)
        parts = {"d": loss}
        if d_a2 is not None:
            loss2 = (discriminator_loss(d_a2, a, outputs["cycle_a"], self.kind)
                     + discriminator_loss(d_b2, b, outputs["cycle_b"], self.kind))
            parts["d2"] = loss2
            loss = loss + loss2
        return loss, parts


class HistoryBuffer(nn.Module):
    """A pool of up to `size` past outputs of one shape (channels, height, width).

    For each incoming item: while the pool is filling, it is stored and shown;
    then with probability 1/2 a random stored item is shown and the new one
    takes its place, else the new one is shown. size 0 shows the new items.
    """

    def __init__(self, size: int, shape: tuple[int, ...]):
        super().__init__()
        self.size = size
        self.register_buffer("items", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return batch
        shown = []
        for item in batch.detach():
            n = int(self.count)
            if n < self.size:
                self.items[n] = item.to(self.items.dtype)
                self.count += 1
                shown.append(item)
            elif float(torch.rand(())) < 0.5:
                index = int(torch.randint(self.size, ()))
                shown.append(self.items[index].clone().to(item.dtype))
                self.items[index] = item.to(self.items.dtype)
            else:
                shown.append(item)
        return torch.stack(shown)


def patch_layers(size: int) -> int:
    """Strided layers of the PatchGAN for square crops of `size`: 3 (70x70 patches) from 128 px up, 2 (34x34)
    at 64, 1 (16x16) below."""
    return 3 if size >= 128 else 2 if size >= 64 else 1


def receptive_field(layers: int) -> int:
    """Patch size in pixels of a PatchDiscriminator with `layers` strided layers (70 for 3)."""
    field = 1
    for stride in [1, 1] + [2] * layers:  # from the output back: two stride-1 4x4 convs, then the strided ones
        field = (field - 1) * stride + 4
    return field


class PatchDiscriminator(nn.Module):
    """C64-C128-C256-C512 (for layers=3) with 4x4 convolutions: one score per overlapping patch.

    The first layer has no normalisation; `norm` is "instance" (CycleGAN) or
    "batch" (pix2pix). in_channels is 6 for a conditional (pix2pix: input and
    output stacked) discriminator, 3 for an unconditional one.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3, norm: str = "instance"):
        super().__init__()
        make_norm = {"instance": lambda c: nn.InstanceNorm2d(c, affine=False),
                     "batch": nn.BatchNorm2d}[norm]
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(channels, out, 4, stride, 1, bias=False), make_norm(out), nn.LeakyReLU(0.2, True)]
            channels = out
        mods.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def linear_decay(steps: int, decay_from: int) -> Callable[[int], float]:
    """The papers' schedule as a LambdaLR factor: constant, then linear to zero at `steps`.

    It is defined against the run's total steps, so resuming with a larger
    --steps stretches it: from the resumed step on the rate follows the longer
    line (it rises if the decay had begun, from zero if the old run had ended).
    """
    def factor(step: int) -> float:
        if step < decay_from or steps <= decay_from:
            return 1.0
        return max(0.0, 1 - (step - decay_from) / (steps - decay_from))

    return factor


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The papers' initialisation: convolutions from N(0, 0.02), norm scales from N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
