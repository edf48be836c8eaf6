"""Debiasing weights from a latent density: items where a data set is dense are drawn less often.

Two densities of the encoder's means:
- "kde" (the default): a Gaussian kernel density in the joint latent space, leave-one-out, bandwidth in
  units of the prior's standard deviation. Measured on the MNIST digits with the 1s made ten times as
  common as each other digit (53% of the set), it brings every digit to 6-13% of the draws.
- "histogram": the DB-VAE of Amini et al. (2019), a histogram per latent and the product over latents.
  The product of 16 per-latent factors is extreme: on the same set it keeps an effective sample size of
  13 of 855 items, and still leaves some digits under-drawn.
"""

from __future__ import annotations

import math

import torch

DENSITIES = ("kde", "histogram")


def debiasing_weights(mu: torch.Tensor, density: str = "kde", bandwidth: float = 1.0, alpha: float = 0.1,
                      bins: int = 10) -> torch.Tensor:
    """Per-item sampling weights, mean 1, from (n, latent_dim) latent means.

    kde: weight = 1 / (density + alpha x the mean density); alpha bounds how
    much a lone item can be favoured. histogram: weight = product over latents
    of 1 / (its bin's share + alpha), with `bins` equal bins per latent.
    """
    if mu.shape[0] < 2:
        raise ValueError(f"debiasing weights need at least 2 items, got {mu.shape[0]}")
    if density == "kde":
        log_density = _log_kde(mu.double(), bandwidth)
        floor = math.log(alpha) + torch.logsumexp(log_density, 0) - math.log(len(log_density))
        log_w = -torch.logaddexp(log_density, torch.full_like(log_density, floor))
    elif density == "histogram":
        log_w = _histogram_log_weights(mu.double(), bins, alpha)
    else:
        raise ValueError(f"density must be one of {', '.join(DENSITIES)}, got {density!r}")
    weights = (log_w - log_w.max()).exp()
    return (weights / weights.mean()).float()


def _log_kde(mu: torch.Tensor, bandwidth: float, chunk: int = 2048) -> torch.Tensor:
    """Log of each item's leave-one-out Gaussian kernel density among the others (unnormalised), in logs
    (a narrow kernel in 16 dimensions underflows in plain numbers) and in chunks (bounded memory)."""
    n = mu.shape[0]
    out = torch.empty(n, dtype=mu.dtype)
    for start in range(0, n, chunk):
        log_k = torch.cdist(mu[start : start + chunk], mu).pow(2).div(-2 * bandwidth ** 2)
        rows = torch.arange(log_k.shape[0])
        log_k[rows, rows + start] = float("-inf")  # not the item itself
        out[start : start + chunk] = torch.logsumexp(log_k, 1) - math.log(n - 1)
    return out


def _histogram_log_weights(mu: torch.Tensor, bins: int, alpha: float) -> torch.Tensor:
    n, d = mu.shape
    log_w = torch.zeros(n, dtype=torch.float64)
    for j in range(d):
        values = mu[:, j]
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-12:
            continue  # a latent with one value everywhere says nothing about rarity
        index = ((values - low) / (high - low) * bins).long().clamp(0, bins - 1)
        share = torch.bincount(index, minlength=bins).double() / n
        log_w -= torch.log(share[index] + alpha)
    return log_w
