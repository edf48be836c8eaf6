"""Running an image-to-image network over Images of any size, mode and value range.

A translation stage (pix2pix, CycleGAN, ...) owns a generator that maps
(n, channels, h, w) in [-1, 1] to the same shape in [-1, 1], with h and w
multiples of some number. `apply_image_network` does everything around it,
once for every family:

- channels: grayscale is repeated to three channels for an RGB network (the
  output stays RGB: a colourising model must be able to produce colour);
  RGB is turned into luminance for a one-channel network; alpha is split off,
  the colour composited onto `background` for the network, and the alpha
  put back unchanged;
- value range: the input's range to [-1, 1] and back;
- size: each item at its own valid size (never the batch's padded one, so a
  result does not depend on its batch neighbours), padded to a multiple of
  `multiple` (reflect, replicate where the image is too small to reflect) and
  cropped back; an item larger than `tile` goes through in overlapping tiles
  blended with raised-cosine ramps over the middle of each overlap (a tile's
  own border, where the network saw padding, is left to its neighbour), so
  memory is bounded and no seam shows;
- memory: pieces of every item are batched through the network, at most
  `max_batch` at a time, without autograd.

This module does not import torch at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from transmute.signals import Images, ImageSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Luminance weights of ITU-R BT.601, the ones Pillow's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)


def apply_image_network(
    images: Images,
    net: Callable[["torch.Tensor"], "torch.Tensor"],
    *,
    channels: int = 3,
    multiple: int = 1,
    tile: int = 0,
    overlap: int = 32,
    background: float = 1.0,
    device=None,
    max_batch: int = 16,
) -> Images:
    """Images through `net`, which maps (n, channels, h, w) in [-1, 1] to the same shape in [-1, 1].

    channels: what the network takes and gives, 1 or 3. The result's mode is
    RGB for a 3-channel network (L for a 1-channel one), plus A when the input
    had alpha (kept as it came in, value for value).
    multiple: the network's height and width must be multiples of this.
    tile: items larger than this on either side go through in tile x tile
    pieces that overlap by `overlap` pixels (0: whole items).
    background: what transparent pixels are composited onto before the
    network, on a 0 (black) to 1 (white) scale.
    device: where the network runs (default: where images.data is); the
    result is on images.data's device.
    max_batch: at most this many pieces per call of `net`.

    Returns Images with the same names, sizes and original_sizes, in the
    input's value range. An item's result does not depend on the other items.
    """
    import torch

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if multiple < 1 or max_batch < 1:
        raise ValueError(f"multiple and max_batch must be at least 1, got {multiple} and {max_batch}")
    if tile and not 0 <= overlap < tile:
        raise ValueError(f"overlap must be at least 0 and smaller than tile ({tile}), got {overlap}")
    mode = images.spec.mode or {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(int(images.data.shape[1]))
    if mode not in ImageSpec.CHANNELS or ImageSpec.CHANNELS[mode] != images.data.shape[1]:
        raise ValueError(f"images of mode {images.spec.mode} with {images.data.shape[1]} channels: "
                         "expected L, LA, RGB or RGBA")
    has_alpha = mode.endswith("A")
    out_mode = ("RGB" if channels == 3 else "L") + ("A" if has_alpha else "")
    low, high = images.spec.value_range
    home = images.data.device
    device = torch.device(device) if device is not None else home

    with torch.inference_mode():
        out = torch.zeros((len(images), channels + has_alpha, *images.data.shape[-2:]), device=home)
        inputs, weights, pieces = [], [], []
        for i in range(len(images)):
            h, w = images.sizes[i]
            item = images.data[i, :, :h, :w].float()
            if has_alpha:
                out[i, -1, :h, :w] = item[-1]
            inputs.append(_for_network(item, has_alpha, channels, low, high, background))
            weights.append(item.new_zeros((h, w)))
            pieces += [_Piece(i, rows, cols) for rows in _spans(h, tile, overlap)
                       for cols in _spans(w, tile, overlap)]
        groups: dict[tuple[int, int], list[_Piece]] = {}
        for piece in pieces:  # pieces of one padded shape can share a call; dicts keep the order
            shape = (-piece.rows.size % multiple + piece.rows.size, -piece.cols.size % multiple + piece.cols.size)
            groups.setdefault(shape, []).append(piece)
        for (padded_h, padded_w), group in groups.items():
            for start in range(0, len(group), max_batch):
                chunk = group[start : start + max_batch]
                batch = torch.stack([
                    pad_bottom_right(inputs[p.item][None, :, p.rows.slice, p.cols.slice],
                                     padded_h - p.rows.size, padded_w - p.cols.size)[0]
                    for p in chunk])
                result = net(batch.to(device))
                if tuple(result.shape) != tuple(batch.shape):
                    raise ValueError(f"the network returned shape {tuple(result.shape)} for input "
                                     f"{tuple(batch.shape)}; it must keep the shape")
                result = result.to(home, torch.float32)
                for p, piece_out in zip(chunk, result):
                    window = p.window(home)
                    region = (slice(None), p.rows.slice, p.cols.slice)
                    out[p.item][:channels][region] += piece_out[:, : p.rows.size, : p.cols.size] * window
                    weights[p.item][region[1:]] += window
        for i, weight in enumerate(weights):
            h, w = images.sizes[i]
            colour = out[i, :channels, :h, :w]
            colour /= weight  # the ramps sum to 1 in theory; dividing makes it exact in floats
            colour.add_(1).mul_((high - low) / 2).add_(low)  # [-1, 1] -> the input's range
    return images.replace(data=out, spec=ImageSpec(out_mode, (low, high)))


def _for_network(item, has_alpha: bool, channels: int, low: float, high: float, background: float):
    """One item's (C, h, w) in its value range -> (channels, h, w) in [-1, 1], alpha composited away."""
    import torch

    unit = (item - low) / (high - low)
    if has_alpha:
        colour, alpha = unit[:-1], unit[-1:].clamp(0, 1)
        unit = colour * alpha + background * (1 - alpha)
    if unit.shape[0] == 1 and channels == 3:
        unit = unit.expand(3, -1, -1)
    elif unit.shape[0] == 3 and channels == 1:
        unit = torch.einsum("chw,c->hw", unit, unit.new_tensor(_LUMA)).unsqueeze(0)
    return (unit * 2 - 1).contiguous()


def pad_bottom_right(data, bottom: int, right: int, mode: str = "reflect"):
    """Pad (batch, C, H, W) at the bottom and right: "reflect" (mirror the edge; falls back to "replicate"
    where the image is too small to mirror), "replicate" (repeat the edge pixel) or "constant" (zeros)."""
    import torch.nn.functional as F

    if mode == "constant":
        return F.pad(data, (0, right, 0, bottom)) if bottom or right else data
    for pads, extent in (((0, right, 0, 0), data.shape[-1]), ((0, 0, 0, bottom), data.shape[-2])):
        amount = max(pads)
        if amount:
            data = F.pad(data, pads, mode="reflect" if mode == "reflect" and amount < extent else "replicate")
    return data


@dataclass(frozen=True)
class _Span:
    """One piece's extent along one axis, and how much it shares with its neighbours."""

    start: int
    size: int
    shared_before: int  # pixels shared with the previous piece (0 for the first)
    shared_after: int
    ramp: int  # the blend's length at each shared side

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)

    def weights(self, device):
        """1 inside; where a neighbour takes over, 0 then a raised-cosine ramp then 1 (the neighbour's mirror).

        The blend spans the middle half of the shared pixels: the outer quarter
        on each side is a tile's border, where the network saw padding instead
        of the neighbouring pixels, and is left to the neighbour. The last piece
        is aligned to the edge, so it may share more with the piece before; it
        stays at 0 until that piece's blend, so each blend is one fade-in beside
        one fade-out, which sum to 1.
        """
        import torch

        w = torch.ones(self.size, device=device)
        if self.ramp:
            fade_in = _fade(self.ramp, device)
            if self.shared_before:
                begin = self.shared_before - self.ramp
                w[:begin] = 0
                w[begin : self.shared_before] = fade_in
            if self.shared_after:
                w[self.size - self.ramp :] *= fade_in.flip(0)
        elif self.shared_before:
            w[: self.shared_before] = 0
        return w


def _fade(length: int, device):
    """0 for a quarter, a raised cosine over the middle half, 1 for the last quarter; plus its mirror is 1."""
    import torch

    margin = length // 4
    middle = length - 2 * margin
    k = torch.arange(middle, device=device, dtype=torch.float32)
    fade = torch.ones(length, device=device)
    fade[:margin] = 0
    fade[margin : margin + middle] = 0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / middle)
    return fade


@dataclass(frozen=True)
class _Piece:
    item: int
    rows: _Span
    cols: _Span

    def window(self, device):
        return self.rows.weights(device)[:, None] * self.cols.weights(device)[None, :]


def _spans(length: int, tile: int, overlap: int) -> list[_Span]:
    """The pieces along one axis: the whole length, or tiles of `tile` with stride tile - overlap, the last
    one aligned to the end."""
    if not tile or length <= tile:
        return [_Span(0, length, 0, 0, 0)]
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    spans = []
    for j, start in enumerate(starts):
        before = starts[j - 1] + tile - start if j else 0
        after = start + tile - starts[j + 1] if j + 1 < len(starts) else 0
        spans.append(_Span(start, tile, before, after, overlap))
    return spans


# --------------------------------------------------------------------------- a family's translation stage

from transmute.stages import Param, Stage  # noqa: E402 - the stage base below; light, no torch


class ImageTranslationStage(Stage):
    """Base of a family's Images -> Images translation stage (pix2pix.translate, cyclegan.translate).

    A subclass sets `name`, a docstring, `params` (TRANSLATION_PARAMS plus its
    own, e.g. model and direction) and `load_network(device)`, which returns
    the generator (in eval mode, on the device) and the crop size it was
    trained at. Everything else (spec check, tiling, alpha, value range) is
    apply_image_network's.
    """

    consumes = Images
    produces = Images

    def load_network(self, device) -> tuple[Callable, int]:
        raise NotImplementedError

    def check(self, incoming: ImageSpec) -> ImageSpec:
        self.require("value_range", (-1.0, 1.0), incoming.value_range,
                     "set value_range = [-1, 1] on the images.load stage")
        return ImageSpec("RGBA" if incoming.mode == "RGBA" else "RGB", (-1.0, 1.0))

    def setup(self, device) -> None:
        super().setup(device)
        self.net, self.trained_size = self.load_network(device)

    def process(self, signal: Images) -> Images:
        return apply_image_network(signal, self.net, channels=3, multiple=getattr(self.net, "multiple", 1),
                                   tile=self.tile or 4 * self.trained_size, overlap=self.overlap,
                                   background=self.background, device=self.device)


TRANSLATION_PARAMS = {
    "tile": Param(int, 0, "images larger than this many pixels a side go through in overlapping tiles "
                  "(0: the model's training size x 4)", min=0),
    "overlap": Param(int, 32, "pixels that neighbouring tiles share, blended", min=0),
    "background": Param(float, 1.0, "what transparent pixels are composited onto before translating "
                        "(1: white, 0: black); the alpha itself is kept", min=0.0, max=1.0),
}
