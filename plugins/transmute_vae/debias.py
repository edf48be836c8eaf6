"""Debiasing weights from a latent density (the DB-VAE of Amini et al., 2019)."""

from __future__ import annotations

import torch


def debiasing_weights(mu: torch.Tensor, bins: int = 10, alpha: float = 0.01) -> torch.Tensor:
    """Per-item sampling weights, mean 1, from (n, latent_dim) latent means.

    Each latent's means are histogrammed (`bins` equal bins over their range)
    into a density that sums to 1; an item's weight is the product over
    latents of 1 / (density of its bin + alpha), computed in logs. Items where
    the data are dense get small weights, rare ones large: drawn with these
    weights, a data set's over-represented kinds are drawn less often. alpha
    bounds the ratio of the largest weight to the smallest.
    """
    n, d = mu.shape
    log_w = torch.zeros(n, dtype=torch.float64)
    for j in range(d):
        values = mu[:, j].double()
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-12:
            continue  # a latent with one value everywhere says nothing about rarity
        index = ((values - low) / (high - low) * bins).long().clamp(0, bins - 1)
        density = torch.bincount(index, minlength=bins).double() / n
        log_w -= torch.log(density[index] + alpha)
    log_w -= log_w.max()
    weights = log_w.exp()
    return (weights / weights.mean()).float()
