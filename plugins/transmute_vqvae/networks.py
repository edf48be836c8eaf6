"""The VQ-VAE's networks: a convolutional encoder to a grid of vectors, a decoder back, and the codebook lookup.

Images: 2-D convolutions, each stride-2 step halves height and width.
Speech: 1-D convolutions over time with the mel bands as channels; each
step halves the frames. The encoder's output at each grid position is
`groups` vectors of `code_dim`, each quantised to the level's one codebook,
so a speech frame can carry several codes (product quantisation: rows of the
code grid) while an image position carries one.

Inference never imports vector_quantize_pytorch (about 1.3-1.5 s of import): the
codebook is a plain tensor in the checkpoint and `nearest_codes` is the
lookup the library does (argmin of squared Euclidean distance).
"""

from __future__ import annotations

import torch
from torch import nn

# Log-mels (natural log, floor 1e-5: -11.5 .. about 2) to roughly unit scale inside the speech networks.
MEL_SHIFT, MEL_SCALE = 5.0, 3.0

PRESETS = {
    # GPU: wider, more steps.
    "default": {"width": 128, "res_blocks": 2, "code_dim": 64, "codebook_size": 512, "downsample": 4,
                "groups": 4, "segment_frames": 64, "lr": 3e-4, "ema_decay": 0.99, "commitment": 0.25,
                "dead_code_threshold": 1.0, "kmeans_iters": 10, "usage_window": 20, "levels": 1,
                "steps": 100000, "batch_size": 64, "checkpoint_every": 2000, "sample_every": 5000},
    # 2 CPU cores: digits in about 10 minutes, speech in about 20.
    "small": {"width": 48, "res_blocks": 1, "code_dim": 32, "codebook_size": 512, "downsample": 4,
              "groups": 4, "segment_frames": 32, "lr": 1e-3, "ema_decay": 0.95, "commitment": 0.25,
              "dead_code_threshold": 1.0, "kmeans_iters": 10, "usage_window": 10, "levels": 1,
              "steps": 3000, "batch_size": 32, "checkpoint_every": 500, "sample_every": 500},
    # Tests: seconds.
    "tiny": {"width": 8, "res_blocks": 1, "code_dim": 4, "codebook_size": 16, "downsample": 2,
             "groups": 1, "segment_frames": 16, "lr": 1e-3, "ema_decay": 0.9, "commitment": 0.25,
             "dead_code_threshold": 0.0, "kmeans_iters": 2, "usage_window": 5, "levels": 1,
             "steps": 20, "batch_size": 4, "checkpoint_every": 10, "sample_every": 0},
}
# What differs by kind in the default and small presets. Images: one code per position (a 28x28 digit is
# 7x7 codes). Speech: a code per two frames, four of them (groups) per position: one 512-entry code for
# four 80-band frames loses the voice.
# Speech steps are cheap beside images' (a 32-frame segment is a short 1-D signal), so the small speech
# preset is wider and longer within its CPU budget.
KIND_CHANGES = {
    "default": {"images": {"groups": 1}, "speech": {"downsample": 2}},
    "small": {"images": {"groups": 1},
              "speech": {"downsample": 2, "width": 128, "res_blocks": 2, "segment_frames": 64, "steps": 12000,
                         "checkpoint_every": 1000, "sample_every": 2000}},
    "tiny": {"images": {}, "speech": {}},
}


def preset_for(preset: str, kind: str) -> dict:
    return dict(PRESETS[preset], **KIND_CHANGES[preset][kind])


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _layers(dims: int):
    return (nn.Conv2d, nn.ConvTranspose2d) if dims == 2 else (nn.Conv1d, nn.ConvTranspose1d)


class ResBlock(nn.Module):
    def __init__(self, width: int, dims: int):
        super().__init__()
        conv = _layers(dims)[0]
        self.body = nn.Sequential(nn.ReLU(), conv(width, width, 3, padding=1), nn.ReLU(), conv(width, width, 1))

    def forward(self, x):
        return x + self.body(x)


def steps_for(downsample: int) -> int:
    steps = downsample.bit_length() - 1
    if downsample < 1 or 1 << steps != downsample:
        raise ValueError(f"downsample must be a power of two, got {downsample}")
    return steps


class Encoder(nn.Module):
    """(batch, channels, [H,] W) -> (batch, groups * code_dim, [H / d,] W / d)."""

    def __init__(self, channels: int, width: int, res_blocks: int, out_dim: int, downsample: int, dims: int):
        super().__init__()
        conv = _layers(dims)[0]
        layers = [conv(channels, width, 3, padding=1)]
        for _ in range(steps_for(downsample)):
            layers += [nn.ReLU(), conv(width, width, 4, stride=2, padding=1)]
        layers += [ResBlock(width, dims) for _ in range(res_blocks)]
        layers += [nn.ReLU(), conv(width, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """(batch, groups * code_dim, [h,] w) -> (batch, channels, [h * d,] w * d)."""

    def __init__(self, channels: int, width: int, res_blocks: int, in_dim: int, downsample: int, dims: int):
        super().__init__()
        conv, up = _layers(dims)
        layers = [conv(in_dim, width, 3, padding=1)]
        layers += [ResBlock(width, dims) for _ in range(res_blocks)]
        for _ in range(steps_for(downsample)):
            layers += [nn.ReLU(), up(width, width, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), conv(width, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class VQVAE(nn.Module):
    """Encoder(s) and decoder around one codebook per level; the quantiser is passed in (library or hand lookup).

    levels 1: x -> encoder -> quantise -> decoder.
    levels 2 (VQ-VAE-2, Razavi et al., 2019): the bottom encoder's features go
    down twice more to a top grid, quantised first; the top codes, decoded
    back to the bottom grid, condition the bottom quantisation; the decoder
    takes the bottom codes and the upsampled top codes.
    """

    def __init__(self, channels: int, h: dict, dims: int):
        super().__init__()
        self.dims, self.groups, self.code_dim = dims, h["groups"], h["code_dim"]
        self.levels, self.downsample = int(h.get("levels", 1)), h["downsample"]
        out, width, res = self.groups * self.code_dim, h["width"], h["res_blocks"]
        if self.levels == 1:
            self.encoder = Encoder(channels, width, res, out, self.downsample, dims)
            self.decoder = Decoder(channels, width, res, out, self.downsample, dims)
            return
        conv, up = _layers(dims)
        self.encoder = Encoder(channels, width, res, width, self.downsample, dims)
        self.encoder_top = Encoder(width, width, res, out, 2, dims)
        self.decoder_top = Decoder(width, width, res, out, 2, dims)
        self.pre_bottom = conv(2 * width, out, 1)
        self.upsample_top = up(out, out, 4, stride=2, padding=1)
        self.decoder = Decoder(channels, width, res, 2 * out, self.downsample, dims)

    @property
    def multiple(self) -> int:
        """What the input's sides must be a multiple of."""
        return self.downsample * 2 ** (self.levels - 1)

    def forward_levels(self, x: torch.Tensor, quantize, reconstruct: bool = True):
        """x -> (reconstruction or None, [(indices, grid)] bottom first, summed quantiser loss).

        quantize(vectors, level) -> (quantised vectors, indices, loss).
        """
        if self.levels == 1:
            z = self.encoder(x)
            grid = tuple(z.shape[2:])
            q, indices, loss = quantize(self.to_vectors(z), 0)
            levels = [(indices, grid)]
            quantized = [self.from_vectors(q, grid)]
        else:
            features = self.encoder(x)
            z_top = self.encoder_top(features)
            grid_top = tuple(z_top.shape[2:])
            q_top, i_top, loss_top = quantize(self.to_vectors(z_top), 1)
            q_top = self.from_vectors(q_top, grid_top)
            z = self.pre_bottom(torch.cat([features, self.decoder_top(q_top)], 1))
            grid = tuple(z.shape[2:])
            q, indices, loss = quantize(self.to_vectors(z), 0)
            levels, loss = [(indices, grid), (i_top, grid_top)], loss + loss_top
            quantized = [self.from_vectors(q, grid), q_top]
        return (self.decode_quantized(quantized) if reconstruct else None), levels, loss

    def decode_quantized(self, quantized: list) -> torch.Tensor:
        if self.levels == 1:
            return self.decoder(quantized[0])
        return self.decoder(torch.cat([quantized[0], self.upsample_top(quantized[1])], 1))

    def to_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output -> (batch, positions, code_dim), positions ordered as the code grid (group, [h,] w)."""
        b = z.shape[0]
        z = z.reshape(b, self.groups, self.code_dim, *z.shape[2:])  # (b, g, d, [h,] w)
        z = z.movedim(2, -1)  # (b, g, [h,] w, d)
        return z.reshape(b, -1, self.code_dim)

    def from_vectors(self, vectors: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """The inverse of to_vectors: (batch, positions, code_dim) -> decoder input; grid is ([h,] w)."""
        b = vectors.shape[0]
        z = vectors.reshape(b, self.groups, *grid, self.code_dim).movedim(-1, 2)
        return z.reshape(b, self.groups * self.code_dim, *grid)

    def code_grid(self, levels: list) -> torch.Tensor:
        """[(indices, grid)] -> (batch, rows, w) codes.

        Each level's groups are stacked as rows (groups [x h] rows); the top
        level's rows follow the bottom's, zero-padded on the right to the
        bottom's width.
        """
        width = levels[0][1][-1]
        rows = []
        for indices, grid in levels:
            block = indices.reshape(indices.shape[0], -1, grid[-1])
            rows.append(torch.nn.functional.pad(block, (0, width - grid[-1])))
        return torch.cat(rows, dim=1)

    def split_levels(self, codes: torch.Tensor) -> list:
        """(batch, rows, w) codes -> [((batch, positions) indices, grid)], bottom first: code_grid's inverse."""
        b, rows, width = codes.shape
        g = self.groups
        if self.dims == 1:
            grids = [(width,), (width // 2,)][: self.levels]
        elif self.levels == 1:
            grids = [(rows // g, width)]
        else:  # rows = g * h + g * h / 2
            h = 2 * rows // (3 * g)
            grids = [(h, width), (h // 2, width // 2)]
        out, row = [], 0
        for grid in grids:
            height = g * (grid[0] if self.dims == 2 else 1)
            out.append((codes[:, row : row + height, : grid[-1]].reshape(b, -1), grid))
            row += height
        return out


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean distance) for each vector: (..., d) -> (...)."""
    flat = vectors.reshape(-1, vectors.shape[-1]).float()
    book = codebook.float()
    distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1).unsqueeze(0)
    return distance.argmin(dim=1).reshape(vectors.shape[:-1])


def codebook_id(label: str, codebook: torch.Tensor) -> str:
    """A stable name of a codebook: label + the first 12 hex digits of the SHA-256 of its float32 values."""
    import hashlib

    digest = hashlib.sha256(codebook.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return f"{label}-{digest[:12]}"


def perplexity_and_usage(indices: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(entropy) of the code histogram, and the histogram itself (float, length size)."""
    counts = torch.bincount(indices.reshape(-1), minlength=size).float()
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()), counts


class UsageWindow(nn.Module):
    """Code counts of the last `window` steps, in a ring; a module so its state is saved and resumed exactly."""

    def __init__(self, window: int, size: int):
        super().__init__()
        self.register_buffer("counts", torch.zeros(window, size))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    def add(self, counts: torch.Tensor) -> torch.Tensor:
        """Record one step's histogram; return the share of codes used at least once in the window."""
        slot = int(self.position) % self.counts.shape[0]
        self.counts[slot] = counts.to(self.counts)
        self.position += 1
        return (self.counts.sum(0) > 0).float().mean()


def silence(spec) -> float:
    """The feature value of silence in a FeatureSpec's features (the log of its floor): what frames are padded with."""
    import math

    return math.log(spec.log_floor) if spec.log else 0.0


def pad_to_multiple(x: torch.Tensor, multiple: int, dims: int, value: float | None = None) -> torch.Tensor:
    """Pad the last `dims` axes at their end to a multiple: with `value`, or by repeating the edge."""
    from torch.nn import functional as F

    pads = []
    for size in reversed(x.shape[-dims:]):
        pads += [0, -size % multiple]
    if not any(pads):
        return x
    if value is None:
        return F.pad(x, pads, mode="replicate")
    return F.pad(x, pads, value=value)


def encode(net: VQVAE, codebooks: list, x: torch.Tensor) -> torch.Tensor:
    """Network input (sides a multiple of net.multiple) -> (batch, rows, w) int64 codes; one codebook per level."""
    def lookup(vectors, level):
        indices = nearest_codes(vectors, codebooks[level])
        return codebooks[level][indices], indices, 0.0

    return net.code_grid(net.forward_levels(x, lookup, reconstruct=False)[1])


def decode(net: VQVAE, codebooks: list, codes: torch.Tensor) -> torch.Tensor:
    """(batch, rows, w) codes -> network output (sides the code grid's times the downsample)."""
    quantized = [net.from_vectors(codebooks[level][positions], grid)
                 for level, (positions, grid) in enumerate(net.split_levels(codes))]
    return net.decode_quantized(quantized)
