"""The VAE's networks and its likelihood: a convolutional encoder to (mu, log-variance), a decoder to the
parameters of a discretised logistic per 8-bit sub-pixel, and the bounds (ELBO, importance-weighted)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN2 = math.log(2.0)

PRESETS = {
    # Two CPU cores, about 10 minutes for 28 px digits.
    "small": {"latent_dim": 16, "width": 32, "beta": 1.0, "steps": 3000, "batch_size": 128, "lr": 1e-3,
              "warmup": 500, "shift": 2, "background": 0.2, "checkpoint_every": 500, "sample_every": 1000, "iw_samples": 64},
    # A GPU: wider, longer.
    "default": {"latent_dim": 32, "width": 64, "beta": 1.0, "steps": 30000, "batch_size": 128, "lr": 1e-3,
                "warmup": 1000, "shift": 2, "background": 0.2, "checkpoint_every": 2000, "sample_every": 2000, "iw_samples": 128},
    # Tests.
    "tiny": {"latent_dim": 4, "width": 4, "beta": 1.0, "steps": 4, "batch_size": 4, "lr": 1e-3,
             "warmup": 0, "shift": 1, "background": 0.2, "checkpoint_every": 2, "sample_every": 0, "iw_samples": 4},
}


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4 if stride == 2 else 3, stride, 1), nn.GroupNorm(min(8, cout), cout),
                         nn.SiLU())


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.GroupNorm(min(8, cout), cout), nn.SiLU())


class VAE(nn.Module):
    """x (n, C, S, S) in [-1, 1] -> q(z|x) = N(mu, diag(exp(logvar))); z -> p(x|z), a discretised logistic
    per sub-pixel (its mean and log-scale). S is a multiple of 4 (28 for MNIST, 32 for emoji)."""

    def __init__(self, channels: int, size: int, latent_dim: int, width: int):
        super().__init__()
        if size % 4:
            raise ValueError(f"the image size must be a multiple of 4, got {size}")
        self.channels, self.size, self.latent_dim = channels, size, latent_dim
        w, cell = width, size // 4
        self.cell = cell
        self.encoder = nn.Sequential(_block(channels, w, 1), _block(w, w, 2), _block(w, 2 * w, 1),
                                     _block(2 * w, 2 * w, 2), nn.Flatten(), nn.Linear(2 * w * cell * cell, 8 * w),
                                     nn.SiLU(), nn.Linear(8 * w, 2 * latent_dim))
        self.project = nn.Sequential(nn.Linear(latent_dim, 8 * w), nn.SiLU(), nn.Linear(8 * w, 2 * w * cell * cell),
                                     nn.SiLU())
        self.decoder = nn.Sequential(_block(2 * w, 2 * w, 1), _up(2 * w, w), _block(w, w, 1), _up(w, w),
                                     nn.Conv2d(w, 2 * channels, 3, 1, 1))
        self.width = w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction -log p(x|z), KL) per item, in nats, with one z ~ q(z|x): what training
        differentiates (through forward, so DistributedDataParallel sees the call and syncs gradients)."""
        rec, kl, _ = elbo_terms(self, x)
        return rec, kl

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean in [-1, 1], log-scale) of p(x|z), each (n, C, S, S)."""
        h = self.project(z).view(-1, 2 * self.width, self.cell, self.cell)
        mean, log_scale = self.decoder(h).chunk(2, dim=1)
        return torch.tanh(mean), log_scale.clamp(min=-7.0)

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image, in [-1, 1]."""
        return self.decode(z)[0]


def discretised_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel, x on the 256 levels of [-1, 1] (k / 127.5 - 1), for a logistic discretised to
    those levels, with the edge bins taking the tails (as PixelCNN++ does, one component)."""
    centred = x - mean
    inv_scale = torch.exp(-log_scale)
    half_bin = 1.0 / 255.0
    plus = inv_scale * (centred + half_bin)
    minus = inv_scale * (centred - half_bin)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the bottom bin
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the top bin
    mid = minus + half_bin * inv_scale  # the density at the bin's centre, for bins too narrow to difference
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, inner))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per item, in nats (closed form)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def dims(x: torch.Tensor) -> int:
    return int(x[0].numel())


def elbo_terms(net: VAE, x: torch.Tensor, eps: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction -log p(x|z), KL, mu) per item, in nats, with one sample z = mu + sigma * eps
    (eps: (n, latent_dim), standard normal; drawn here when not given)."""
    mu, logvar = net.encode(x)
    if eps is None:
        eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps.to(mu)
    mean, log_scale = net.decode(z)
    # The likelihood in float32 whatever the autocast: bf16 rounds the mean near +-1 by about the bin's width.
    rec = -discretised_logistic_log_prob(x.float(), mean.float(), log_scale.float()).flatten(1).sum(1)
    return rec, gaussian_kl(mu.float(), logvar.float()), mu


def iwae_nll(net: VAE, x: torch.Tensor, eps: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """-log p(x) per item, in nats, bounded from above with K importance samples (Burda et al., 2016),
    z = mu + sigma * eps for eps (K, n, latent_dim) standard normal; K = 1 is a single-sample negative
    ELBO. The caller draws eps, so an item's draws need not depend on its batch."""
    mu, logvar = net.encode(x)
    std = torch.exp(0.5 * logvar)
    samples, n, d = eps.shape
    eps = eps.to(mu)
    per_pass = max(1, chunk // max(n, 1))
    weights = []
    for start in range(0, samples, per_pass):
        e = eps[start : start + per_pass]
        k = e.shape[0]
        z = mu + std * e  # (k, n, d)
        mean, log_scale = net.decode(z.reshape(k * n, d))
        log_px = discretised_logistic_log_prob(x.float().repeat(k, 1, 1, 1), mean.float(), log_scale.float()) \
            .flatten(1).sum(1).view(k, n)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * (e.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
        weights.append(log_px + log_pz - log_qz)
    log_w = torch.cat(weights, 0)
    return -(torch.logsumexp(log_w, 0) - math.log(samples))


def bits_per_dim(nats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return nats / (dims(x) * LN2)
