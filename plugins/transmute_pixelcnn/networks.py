"""Gated PixelCNN (van den Oord et al., 2016) over 8-bit images or VQ-VAE code maps, and its two samplers.

The network: a vertical stack (what lies above the current row) and a
horizontal stack (what lies left of the current position in its row), so the
receptive field has no blind spot; gated tanh x sigmoid units; the vertical
stack feeds the horizontal one through a 1x1 convolution of its output one
row down; residual connections in the horizontal stack and a skip connection
from every layer to a 1x1 head; optional class conditioning as a learnt bias
per layer. The first layer's horizontal convolution has mask A (the current
position is not seen), the rest mask B.

Colour images are modelled one sub-pixel at a time in R, G, B order: every
feature map of the horizontal stack is split into as many groups as there
are channels, and at the current position group g may only see input
channels before g (mask A) or groups up to g (mask B), so the logits of G
depend on R of the same pixel and those of B on R and G.

Both samplers draw from the same logits with the same uniform numbers:
- naive_sample runs the whole network over the whole map for every
  sub-pixel (the textbook way, cost ~ (H W)^2);
- cached_sample (Ramachandran et al., 2017) computes each layer only at the
  new position, from activations kept in per-layer buffers: the horizontal
  stack's inputs of the current row, and the vertical stack's inputs of the
  rows above, which are updated once a row is finished.
The convolutions are the same modules with the same weights, applied to a
window of a buffer instead of a padded map; tests check that the samples are
identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PRESETS = {
    # GPU: the paper's size on small images.
    "default": {"width": 128, "layers": 12, "first_kernel": 7, "kernel": 3, "head": 256, "embed": 64,
                "dropout": 0.0, "lr": 3e-4, "shift": 1, "segment": 64, "steps": 40000, "batch_size": 64,
                "checkpoint_every": 2000, "sample_every": 5000},
    # 2 CPU cores: the digits' 7x7 codes in about 10 minutes, their pixels in about 45 (KIND_CHANGES).
    "small": {"width": 48, "layers": 8, "first_kernel": 7, "kernel": 3, "head": 128, "embed": 32,
              "dropout": 0.0, "lr": 1e-3, "shift": 1, "segment": 64, "steps": 4000, "batch_size": 32,
              "checkpoint_every": 250, "sample_every": 1000},
    # Tests: seconds.
    "tiny": {"width": 8, "layers": 2, "first_kernel": 3, "kernel": 3, "head": 8, "embed": 4,
             "dropout": 0.0, "lr": 1e-3, "shift": 0, "segment": 8, "steps": 20, "batch_size": 4,
             "checkpoint_every": 10, "sample_every": 0},
}


# What differs by kind: a pixel model's 256-way head over 784 positions costs several times a code model's
# step over 49, so its small preset takes smaller batches and fewer steps within its CPU budget. Its later
# layers have kernel 5: with 3, 8 layers see 10 rows up and the samples were strokes without a digit's shape
# (a 28 px digit spans 20 rows); with 5 they see 17. Speech: 6,000 steps learnt the 600 training sentences
# (2.30 nats/code on them, 4.12 on held-out ones); 2,000 with dropout 0.2 before the head: 3.23 and 3.69.
KIND_CHANGES = {
    "default": {"pixels": {}, "codes": {}, "speech": {}},
    "small": {"pixels": {"kernel": 5, "batch_size": 16, "steps": 3000, "checkpoint_every": 100, "sample_every": 500},
              "codes": {}, "speech": {"steps": 2000, "dropout": 0.2, "checkpoint_every": 500}},
    "tiny": {"pixels": {}, "codes": {}, "speech": {}},
}


def preset_for(preset: str, kind: str) -> dict:
    return dict(PRESETS[preset], **KIND_CHANGES[preset][kind])


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _groups_of(channels: int, groups: int) -> torch.Tensor:
    """The group (0..groups-1) of each of `channels` feature maps: contiguous blocks."""
    return torch.arange(channels) * groups // channels


def _gated_groups(width: int, groups: int) -> torch.Tensor:
    """Groups of a gate's 2 x width pre-activations: the tanh half and the sigmoid half alike."""
    half = _groups_of(width, groups)
    return torch.cat([half, half])


def _pair_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, strict: bool) -> torch.Tensor:
    """(out, in) 0/1: may output map o see input map i at the current position (strict: groups before only)."""
    return (out_groups[:, None] > in_groups[None, :]) if strict else (out_groups[:, None] >= in_groups[None, :])


class Conv(nn.Conv2d):
    """A convolution without padding (callers pad or hand it a window of a buffer), optionally masked."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], mask: torch.Tensor | None = None):
        super().__init__(cin, cout, kernel)
        # The mask is rebuilt from the hyperparameters, never saved with the weights.
        self.register_buffer("mask", mask.to(self.weight.dtype) if mask is not None else None, persistent=False)

    def effective(self) -> torch.Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, self.effective() if weight is None else weight, self.bias)


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks. p: the half-width of its kernel (vertical (p+1) x (2p+1), horizontal 1 x (p+1))."""

    def __init__(self, cin: int, width: int, p: int, groups: int, in_groups: torch.Tensor, first: bool,
                 classes: int):
        super().__init__()
        self.p, self.first = p, first
        gg, hg = _gated_groups(width, groups), _groups_of(width, groups)
        self.v_conv = Conv(cin, 2 * width, (p + 1, 2 * p + 1))
        h_mask = torch.ones(2 * width, cin, 1, p + 1)
        h_mask[:, :, 0, p] = _pair_mask(gg, in_groups, strict=first)  # the current position: mask A or B
        self.h_conv = Conv(cin, 2 * width, (1, p + 1), h_mask)
        # The vertical stack only holds rows above (it is shifted one row down first): no mask.
        self.link = Conv(2 * width, 2 * width, (1, 1))
        self.res = Conv(width, width, (1, 1), _pair_mask(hg, hg, False)[:, :, None, None])
        self.skip = Conv(width, width, (1, 1), _pair_mask(hg, hg, False)[:, :, None, None])
        self.cond_v = nn.Embedding(classes, 2 * width) if classes else None
        self.cond_h = nn.Embedding(classes, 2 * width) if classes else None

    def biases(self, labels):
        """The class-conditional biases (batch, 2 width, 1, 1) of both stacks, or (0, 0) without classes."""
        if self.cond_v is None or labels is None:
            return 0.0, 0.0
        return self.cond_v(labels)[:, :, None, None], self.cond_h(labels)[:, :, None, None]

    def forward(self, v, h, labels=None):
        p = self.p
        bv, bh = self.biases(labels)
        vp = self.v_conv(F.pad(v, (p, p, p, 0))) + bv  # row i from rows i-p..i
        above = F.pad(vp, (0, 0, 1, 0))[:, :, :-1]  # row i gets row i-1: rows above only
        g = gate(self.h_conv(F.pad(h, (p, 0, 0, 0))) + self.link(above) + bh)
        h_out = self.res(g) + (0.0 if self.first else h)
        return gate(vp), h_out, self.skip(g)


class PixelCNN(nn.Module):
    """Gated PixelCNN. kind 'pixels': x is (B, C, H, W) levels 0..255, logits (B, C, 256, H, W);
    kind 'codes': x is (B, H, W) codes 0..K-1, logits (B, 1, K, H, W)."""

    def __init__(self, kind: str, h: dict, channels: int = 1, codebook_size: int = 256, classes: int = 0):
        super().__init__()
        if kind not in ("pixels", "codes"):
            raise ValueError(f"kind must be pixels or codes, got {kind!r}")
        self.kind, self.classes = kind, classes
        self.channels = channels if kind == "pixels" else 1
        self.values = 256 if kind == "pixels" else codebook_size
        width, groups = h["width"], self.channels
        if width < groups or h["head"] < groups:
            raise ValueError(f"width and head must be at least the channels ({groups}): a group of feature maps "
                             "per channel")
        if kind == "pixels":
            self.embedding, cin, in_groups = None, channels, torch.arange(channels)
        else:
            self.embedding = nn.Embedding(codebook_size, h["embed"])
            cin, in_groups = h["embed"], torch.zeros(h["embed"], dtype=torch.long)
        layers = []
        for i in range(h["layers"]):
            p = (h["first_kernel"] if i == 0 else h["kernel"]) // 2
            layers.append(GatedLayer(cin, width, p, groups, in_groups, i == 0, classes))
            cin, in_groups = width, _groups_of(width, groups)
        self.layers = nn.ModuleList(layers)
        hg, head_g = _groups_of(width, groups), _groups_of(h["head"], groups)
        out_g = torch.arange(groups * self.values) // self.values
        self.head1 = Conv(width, h["head"], (1, 1), _pair_mask(head_g, hg, False)[:, :, None, None])
        self.head2 = Conv(h["head"], groups * self.values, (1, 1), _pair_mask(out_g, head_g, False)[:, :, None, None])
        self.dropout = nn.Dropout(h.get("dropout", 0.0))

    # ------------------------------------------------------------------ teacher forcing

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Levels or codes -> the first layer's input maps (B, cin, H, W) (or (B, cin) for (B, C) / (B,) input)."""
        if self.embedding is None:
            return x.to(self.head1.weight.dtype) / 127.5 - 1.0
        e = self.embedding(x)
        return e.movedim(-1, 1) if e.dim() == 4 else e

    def head(self, skip: torch.Tensor) -> torch.Tensor:
        out = self.head2(F.relu(self.head1(self.dropout(F.relu(skip)))))
        b, _, hh, ww = out.shape
        return out.view(b, self.channels, self.values, hh, ww)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        v = h = self.embed(x)
        skip = 0.0
        for layer in self.layers:
            v, h, s = layer(v, h, labels)
            skip = skip + s
        return self.head(skip)

    def nll(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood per item, in nats per dimension (sub-pixel or code): (B,)."""
        return cross_entropy(self.forward(x, labels), x).flatten(1).mean(1)


def cross_entropy(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Nats of each sub-pixel or code of x (B, [C,] H, W) under logits (B, C, V, H, W): (B, C, H, W)."""
    target = x if x.dim() == 4 else x[:, None]
    return F.cross_entropy(logits.float().transpose(1, 2), target.long(), reduction="none")


def bits(nats: torch.Tensor) -> torch.Tensor:
    return nats / math.log(2)


# --------------------------------------------------------------------------- drawing one value


def draw(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
         top_p: float = 1.0) -> torch.Tensor:
    """One value per row of logits (B, V) by inverting the CDF at u (B,) in [0, 1): the same u and logits
    give the same value. temperature 0 takes the most likely value; top_k keeps the k most likely values,
    top_p the fewest whose probability adds up to at least p (Holtzman et al., 2020)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if 0 < top_k < probs.shape[-1]:
        kth = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p < 1.0:
        ordered, index = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the more likely values
        keep = before < top_p * ordered.sum(-1, keepdim=True)
        probs = torch.zeros_like(probs).scatter(-1, index, torch.where(keep, ordered, torch.zeros_like(ordered)))
    cdf = probs.cumsum(-1)
    target = (u.double() * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)


def uniforms(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(seeds), *shape) uniform numbers, each item's from its own generator: a sample depends on its
    seed alone, not on its batch."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(int(s) % 2**63), dtype=torch.float64)
                        for s in seeds])


def _blank(net: PixelCNN, batch: int, size: tuple[int, int], device) -> torch.Tensor:
    shape = (batch, net.channels, *size) if net.kind == "pixels" else (batch, *size)
    return torch.zeros(shape, dtype=torch.long, device=device)


# --------------------------------------------------------------------------- the two samplers


@torch.inference_mode()
def naive_sample(net: PixelCNN, size: tuple[int, int], u: torch.Tensor, labels=None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The whole network over the whole map for every sub-pixel. u: (B, C, H, W) uniform numbers."""
    rows, cols = size
    x = _blank(net, u.shape[0], size, u.device)
    for i in range(rows):
        for j in range(cols):
            for c in range(net.channels):
                logits = net(x, labels)[:, c, :, i, j]
                value = draw(logits, u[:, c, i, j], temperature, top_k, top_p)
                if net.kind == "pixels":
                    x[:, c, i, j] = value
                else:
                    x[:, i, j] = value
    return x


class _Layer:
    """A layer's masked weights, fetched once, and its class biases for this batch."""

    def __init__(self, layer: GatedLayer, labels):
        self.p, self.first = layer.p, layer.first
        self.v = (layer.v_conv.effective(), layer.v_conv.bias)
        self.h = (layer.h_conv.effective(), layer.h_conv.bias)
        flat = lambda conv: (conv.effective()[:, :, 0, 0], conv.bias)  # noqa: E731  1x1: a matrix
        self.link, self.res, self.skip = flat(layer.link), flat(layer.res), flat(layer.skip)
        bv, bh = layer.biases(labels)
        self.bv = bv if isinstance(bv, float) else bv[:, :, 0, 0]
        self.bh = bh if isinstance(bh, float) else bh[:, :, 0, 0]


@torch.inference_mode()
def cached_sample(net: PixelCNN, size: tuple[int, int], u: torch.Tensor, labels=None, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The same samples as naive_sample, each layer computed only at the new position.

    Buffers per layer l (zero where the padding is): hin[l] (B, cin, 1, p + W), the horizontal stack's
    inputs in the current row; vin[l] (B, cin, p + H, 2p + W), the vertical stack's inputs of the finished
    rows; linked[l] (B, W, 2 width), `link` of the vertical pre-activations of the row above, once per row.
    """
    rows, cols = size
    batch, device = u.shape[0], u.device
    layers = [_Layer(layer, labels) for layer in net.layers]
    dtype = net.head1.weight.dtype
    head1 = (net.head1.effective()[:, :, 0, 0], net.head1.bias)
    head2 = (net.head2.effective()[:, :, 0, 0], net.head2.bias)
    widths = [layer.v_conv.in_channels for layer in net.layers]
    hin = [torch.zeros(batch, c, 1, L.p + cols, dtype=dtype, device=device) for c, L in zip(widths, layers)]
    vin = [torch.zeros(batch, c, L.p + rows, 2 * L.p + cols, dtype=dtype, device=device)
           for c, L in zip(widths, layers)]
    # What each layer's horizontal stack reads of the row above: link(vertical pre-activations), (B, W, 2 width);
    # zero above the first row, as the shifted, zero-padded map has it.
    linked = [F.linear(torch.zeros(batch, cols, layer.link.in_channels, dtype=dtype, device=device), *L.link)
              for layer, L in zip(net.layers, layers)]
    x = _blank(net, batch, size, device)
    pixel = net.kind == "pixels"

    def position(i: int, j: int, logits: bool):
        """Every layer at (i, j) from the buffers (writing each layer's input there); the head's logits."""
        h = net.embed(x[:, :, i, j] if pixel else x[:, i, j])  # (B, cin)
        skip = 0.0
        for k, L in enumerate(layers):
            hin[k][:, :, 0, L.p + j] = h
            pre = F.conv2d(hin[k][:, :, :, j : j + L.p + 1], *L.h)[:, :, 0, 0]
            g = gate(pre + linked[k][:, j] + L.bh)
            h = F.linear(g, *L.res) + (0.0 if L.first else h)
            skip = skip + F.linear(g, *L.skip)
        if not logits:
            return None
        out = F.linear(F.relu(F.linear(F.relu(skip), *head1)), *head2)
        return out.view(batch, net.channels, net.values)

    for i in range(rows):
        for j in range(cols):
            for c in range(net.channels):
                value = draw(position(i, j, True)[:, c], u[:, c, i, j], temperature, top_k, top_p)
                if pixel:
                    x[:, c, i, j] = value
                else:
                    x[:, i, j] = value
            # The layers' inputs at (i, j) must hold the finished position: the first layer's is the value
            # just drawn. (With one channel, mask A keeps every later layer blind to it.)
            hin[0][:, :, 0, layers[0].p + j] = net.embed(x[:, :, i, j] if pixel else x[:, i, j])
        # Row i is finished: run the vertical stack over it, for the rows below.
        v = net.embed(x[:, :, i]) if pixel else net.embedding(x[:, i]).movedim(-1, 1)  # (B, cin, W)
        for k, L in enumerate(layers):
            vin[k][:, :, L.p + i, L.p : L.p + cols] = v
            vp = F.conv2d(vin[k][:, :, i : i + L.p + 1], *L.v)[:, :, 0] + (
                L.bv if isinstance(L.bv, float) else L.bv[:, :, None])
            linked[k] = F.linear(vp.transpose(1, 2), *L.link)
            v = gate(vp)
    return x


def generate(net: PixelCNN, size: tuple[int, int], seeds: list[int], labels=None, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, cached: bool = True, device="cpu") -> torch.Tensor:
    """A batch of samples, sample i drawn with the uniform numbers of seeds[i]."""
    u = uniforms(seeds, (net.channels, *size)).to(device)
    sampler = cached_sample if cached else naive_sample
    return sampler(net, size, u, labels, temperature, top_k, top_p)
