"""Typed signals that travel between stages, and the specs that travel with them.

A *spec* is the static description of a signal: what a stage needs to know about
its input before any compute (sample rate, mel settings, image mode, codebook).
Pipelines are checked by passing specs from stage to stage. A *signal* is a
batch of data plus its spec and per-item metadata (lengths, sizes, names).

This module does not import torch at import time so that the CLI can describe
plugins and pipelines without paying for it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch


def spec_differences(expected, got) -> list[tuple[str, Any, Any]]:
    """Fields where two specs of the same type differ, as (field, expected, got)."""
    out = []
    for f in fields(expected):
        a, b = getattr(expected, f.name), getattr(got, f.name)
        if a != b:
            out.append((f.name, a, b))
    return out


class TaggedSpec:
    """A spec that travels as JSON tagged with its kind, e.g. {"kind": "images", "mode": "RGB", ...}.

    Checkpoints store the spec a model was trained on this way, whatever the
    signal. A dict without "kind" was written before specs were tagged: it is a
    spectrogram's (FeatureSpec), the only kind stored then.
    """

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, **json.loads(json.dumps(dataclasses.asdict(self)))}

    @classmethod
    def from_dict(cls, data: dict):
        data = dict(data)
        kind = data.pop("kind", FeatureSpec.kind)
        if kind != cls.kind:
            raise ValueError(f"a '{kind}' spec, not a '{cls.kind}' spec")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.kind}-spec fields: {', '.join(sorted(unknown))}")
        return cls(**data)


def spec_from_dict(data: dict) -> "TaggedSpec":
    """The spec a tagged dict describes (an untagged one is an older checkpoint's FeatureSpec)."""
    kinds = {c.kind: c for c in (WaveformSpec, FeatureSpec, ImageSpec, CodeSpec, LatentSpec)}
    kind = data.get("kind", FeatureSpec.kind)
    if kind not in kinds:
        raise ValueError(f"unknown spec kind {kind!r}; this transmute knows {', '.join(kinds)}")
    return kinds[kind].from_dict(data)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class WaveformSpec(TaggedSpec):
    """sample_rate None means 'the native rate of each file' (not known statically)."""

    kind: ClassVar[str] = "waveform"

    sample_rate: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class Normalization:
    """Mean/std applied to features: (x - mean) / std, per bin or one value for all."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    label: str = ""

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass(frozen=True)
class FeatureSpec(TaggedSpec):
    """Everything needed to compute, interpret or invert a spectrogram.

    The defaults take HiFi-GAN's mel settings (its meldataset.py), which most
    neural vocoders share: 22.05 kHz, n_fft = window = 1024 (Hann), hop 256, 80
    Slaney-normalised mel bands from librosa's filter bank, magnitude (power 1),
    natural log of max(x, 1e-5).

    What they do not match, so these features are not HiFi-GAN's frame for frame:
    - Framing. HiFi-GAN reflect-pads (n_fft - hop) / 2 = 384 samples on each side
      and frames with center=False: its frame t is centred on sample
      t * hop + hop / 2, and N samples give N // hop frames. Here center=True
      pads n_fft / 2: frame t is centred on sample t * hop, and N samples give
      1 + N // hop frames. Centred framing cannot express HiFi-GAN's half-hop
      offset.
    - fmax. 0 (the default) means sample_rate / 2; HiFi-GAN's published configs
      use 8000 Hz (set fmax = 8000).
    - HiFi-GAN adds 1e-9 under the square root of the magnitude; negligible
      above the 1e-5 floor.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 0  # 0 means n_fft
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"  # or "constant" (librosa's default since 0.10)
    n_mels: int = 80  # 0 means a linear-frequency spectrogram
    fmin: float = 0.0
    fmax: float = 0.0  # 0 means sample_rate / 2
    power: float = 1.0  # 1: magnitude, 2: power
    mel_norm: str = "slaney"  # or "none"
    htk: bool = False
    log: bool = True  # natural log of max(x, log_floor)
    log_floor: float = 1e-5
    normalization: Normalization | None = None

    kind: ClassVar[str] = "spectrogram"

    def __post_init__(self):
        if not self.win_length:
            object.__setattr__(self, "win_length", self.n_fft)
        if not self.fmax:
            object.__setattr__(self, "fmax", self.sample_rate / 2)
        if isinstance(self.normalization, dict):
            object.__setattr__(self, "normalization", Normalization(**self.normalization))
        object.__setattr__(self, "fmin", float(self.fmin))
        object.__setattr__(self, "fmax", float(self.fmax))
        object.__setattr__(self, "power", float(self.power))

    @property
    def is_mel(self) -> bool:
        return self.n_mels > 0

    @property
    def n_bins(self) -> int:
        return self.n_mels if self.is_mel else self.n_fft // 2 + 1

    def n_frames(self, n_samples: int) -> int:
        if self.center:
            return 1 + n_samples // self.hop_length
        return max(0, 1 + (n_samples - self.n_fft) // self.hop_length)

    def replace(self, **changes) -> "FeatureSpec":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ImageSpec(TaggedSpec):
    """mode None means 'whatever each file is' (not known statically)."""

    mode: str | None = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)

    kind: ClassVar[str] = "images"
    CHANNELS: ClassVar[dict[str, int]] = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}

    def __post_init__(self):  # JSON gives a list; a spec compares equal however it was made
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))

    @property
    def channels(self) -> int | None:
        return self.CHANNELS.get(self.mode) if self.mode else None


@dataclass(frozen=True)
class CodeSpec(TaggedSpec):
    codebook_size: int
    codebook_id: str = ""
    source: str = ""  # JSON of the spec of what was encoded

    kind: ClassVar[str] = "codes"


@dataclass(frozen=True)
class LatentSpec(TaggedSpec):
    """Points in one model's continuous latent space (a VAE's z)."""

    dim: int
    model_id: str = ""  # names the latent space (a model), so latents of one are not decoded by another
    source: str = ""  # JSON of the spec of what was encoded, to decode back to it

    kind: ClassVar[str] = "latents"


# --------------------------------------------------------------------------- signals


class File:
    """Marker type: a stage that consumes File loads from disk; one that produces File saves."""


@dataclass
class Signal:
    """Base class: a batch of items with a spec.

    A subclass says which trailing dimensions vary per item (`ragged`), which
    list fields hold one entry per item (`per_item`), and where each item's
    valid region ends (`extent`); splitting and batching are done here, once.
    """

    data: "torch.Tensor"
    spec: Any
    names: list[str] = field(default_factory=list)

    kind: ClassVar[str] = "signal"
    spec_type: ClassVar[type] = object  # the class of `spec`; what a stage's check() must return
    ragged: ClassVar[int] = 1
    per_item: ClassVar[tuple[str, ...]] = ()
    same_size_batches: ClassVar[bool] = False

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to(self, device) -> "Signal":
        return self.replace(data=self.data.to(device))

    def extent(self, i: int) -> tuple[int, ...]:
        """The valid size of item i along the ragged dimensions."""
        raise NotImplementedError

    def valid_mask(self) -> "torch.Tensor":
        """A bool tensor, True where data holds an item's own values, False on the padding.

        Its shape broadcasts against `data`: (batch, 1, length) for Waveform and
        Spectrogram, (batch, 1, H, W) for Images, (batch, H, W) for Codes. Use it
        for any reduction over the ragged dimensions (max, mean, std), so that
        an item gives the same result alone or in a batch.
        """
        masks = [length_mask([self.extent(i)[d] for i in range(len(self))], self.data.shape[-self.ragged + d],
                             self.data.device) for d in range(self.ragged)]
        mask = masks[0]
        for d, other in enumerate(masks[1:], 1):  # images and codes: valid rows and valid columns
            mask = mask.view(*mask.shape, 1) & other.view(other.shape[0], *([1] * d), other.shape[1])
        leading = self.data.dim() - 1 - self.ragged
        return mask.view(mask.shape[0], *([1] * leading), *mask.shape[1:])

    def layout_key(self):
        """Items with equal layout keys can be collated (padded along their ragged dims)."""
        return (type(self), self.spec, tuple(self.data.shape[1 : -self.ragged]))

    def collate_key(self):
        """Items with equal keys are put in one batch by the runner."""
        if self.same_size_batches:
            return (type(self), self.spec, tuple(self.data.shape[1:]))
        return self.layout_key()

    def items(self) -> list["Signal"]:
        """One single-item signal per item, trimmed to its own extent."""
        out = []
        for i in range(len(self)):
            index = (slice(i, i + 1), Ellipsis) + tuple(slice(0, n) for n in self.extent(i))
            fields = {f: getattr(self, f)[i : i + 1] for f in self.per_item if getattr(self, f) is not None}
            out.append(self.replace(data=self.data[index], names=self.names[i : i + 1], **fields))
        return out

    @classmethod
    def collate(cls, items: list["Signal"]) -> "Signal":
        """One batch from items of one layout, zero-padded along the ragged dims."""
        first = items[0]
        for other in items[1:]:
            if other.layout_key() != first.layout_key():
                raise ValueError(f"cannot batch {first.names} with {other.names}: specs differ")
        fields = {}
        for f in cls.per_item:
            values = [getattr(x, f) for x in items]
            fields[f] = None if any(v is None for v in values) else [v for vs in values for v in vs]
        data = _pad_stack([x.data for x in items], cls.ragged)
        return cls(data=data, spec=first.spec, names=[n for x in items for n in x.names], **fields)


def batch_mismatch(before: Signal, after) -> str | None:
    """Why what a transform returned is not the batch it was given, in one line; None when it is.

    The same items in the same order (count and names), each with per-item
    sizes (lengths, sizes) that fit inside the returned data. Sizes may change:
    a stage that changes lengths returns the new ones. For the runner, which
    names the stage.
    """
    if not isinstance(after, Signal):
        return f"process() returned {type(after).__name__}, not a signal"
    if len(after) != len(before):
        return f"process() was given {len(before)} item{'s' * (len(before) != 1)} and returned {len(after)}"
    if list(after.names) != list(before.names):
        return f"process() returned items {list(after.names)} for {list(before.names)} (same names, same order)"
    for f in after.per_item:
        values = getattr(after, f)
        if values is not None and len(values) != len(after):
            return f"process() returned {len(values)} {f} for {len(after)} items"
    for i in range(len(after)):
        extent = tuple(after.extent(i))
        room = tuple(after.data.shape[-after.ragged:])
        if any(n > m or n < 0 for n, m in zip(extent, room)):
            return (f"process() says item '{after.names[i] if i < len(after.names) else i}' spans {extent}, "
                    f"but the returned data holds {room}")
    return None


def generated_mismatch(names: list[str], batch) -> str | None:
    """Why what generate(count, names) returned is not those items, in one line; None when it is."""
    if not isinstance(batch, Signal):
        return f"generate() returned {type(batch).__name__}, not a signal"
    if len(batch) != len(names):
        return f"generate() was asked for {len(names)} item{'s' * (len(names) != 1)} and returned {len(batch)}"
    if list(batch.names) != list(names):
        return f"generate() returned items {list(batch.names)} for {list(names)} (the names it was given, in order)"
    return batch_mismatch(batch, batch)  # per-item sizes that fit the data


def length_mask(lengths, size: int, device=None) -> "torch.Tensor":
    """(len(lengths), size) bool: row i is True on its first lengths[i] positions, False on the padding."""
    import torch

    lengths = torch.as_tensor(lengths if isinstance(lengths, torch.Tensor) else list(lengths), device=device)
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _pad_stack(tensors, ragged: int, value: float = 0.0):
    """Stack tensors whose last `ragged` dims differ, zero-padding at the end."""
    if len(tensors) == 1:
        return tensors[0]  # a batch of one is its item: a copy would double a large image's memory
    sizes = [t.shape[-ragged:] for t in tensors]
    target = [max(s[i] for s in sizes) for i in range(ragged)]
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[1:-ragged], *target), value)
    for i, t in enumerate(tensors):
        index = (i, ...) + tuple(slice(0, n) for n in t.shape[-ragged:])
        out[index] = t[0]
    return out


def _batch(data) -> int:
    return int(data.shape[0])


@dataclass
class Waveform(Signal):
    """(batch, channels, samples) float audio; lengths in samples."""

    spec: WaveformSpec = field(default_factory=WaveformSpec)
    lengths: list[int] = field(default_factory=list)
    kind: ClassVar[str] = "Waveform"
    spec_type: ClassVar[type] = WaveformSpec
    per_item: ClassVar[tuple[str, ...]] = ("lengths",)

    def __post_init__(self):
        self.lengths = self.lengths or [int(self.data.shape[-1])] * _batch(self.data)

    @property
    def sample_rate(self) -> int:
        return int(self.spec.sample_rate)

    def extent(self, i):
        return (self.lengths[i],)


@dataclass
class Spectrogram(Signal):
    """(batch, bins, frames); lengths in frames, sample_lengths of the audio it came from."""

    spec: FeatureSpec = field(default_factory=FeatureSpec)
    lengths: list[int] = field(default_factory=list)
    sample_lengths: list[int] | None = None
    kind: ClassVar[str] = "Spectrogram"
    spec_type: ClassVar[type] = FeatureSpec
    per_item: ClassVar[tuple[str, ...]] = ("lengths", "sample_lengths")

    def __post_init__(self):
        self.lengths = self.lengths or [int(self.data.shape[-1])] * _batch(self.data)

    def extent(self, i):
        return (self.lengths[i],)


@dataclass
class Images(Signal):
    """(batch, channels, H, W) float in spec.value_range.

    sizes: the valid (h, w) of each item inside the padded batch;
    original_sizes: each item's (h, w) when loaded, to restore on save.
    The runner batches only same-size images: a convolution's borders would
    otherwise depend on which larger images an item was batched with.
    """

    spec: ImageSpec = field(default_factory=ImageSpec)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    kind: ClassVar[str] = "Images"
    spec_type: ClassVar[type] = ImageSpec
    ragged: ClassVar[int] = 2
    per_item: ClassVar[tuple[str, ...]] = ("sizes", "original_sizes")
    same_size_batches: ClassVar[bool] = True

    def __post_init__(self):
        self.sizes = self.sizes or [tuple(int(n) for n in self.data.shape[-2:])] * _batch(self.data)
        self.original_sizes = self.original_sizes or list(self.sizes)

    def extent(self, i):
        return tuple(self.sizes[i])


@dataclass
class Codes(Signal):
    """(batch, h, w) integer codes into a codebook; sizes: valid (h, w) per item.

    A code grid is coarser than what was encoded (a code per 4x4 pixels, per 2
    frames), so the encoded item's own size travels too, for a decoder to
    give back exactly that size: source_sizes, per item, (frames,) of a
    spectrogram or (h, w) of an image; sample_lengths, the samples of the
    audio a spectrogram came from (so a WAV comes back at its length).
    """

    spec: CodeSpec = field(default_factory=lambda: CodeSpec(codebook_size=0))
    sizes: list[tuple[int, int]] = field(default_factory=list)
    source_sizes: list[tuple[int, ...]] | None = None
    sample_lengths: list[int] | None = None
    kind: ClassVar[str] = "Codes"
    spec_type: ClassVar[type] = CodeSpec
    ragged: ClassVar[int] = 2
    per_item: ClassVar[tuple[str, ...]] = ("sizes", "source_sizes", "sample_lengths")
    same_size_batches: ClassVar[bool] = True

    def __post_init__(self):
        self.sizes = self.sizes or [tuple(int(n) for n in self.data.shape[-2:])] * _batch(self.data)

    def extent(self, i):
        return tuple(self.sizes[i])


@dataclass
class Latents(Signal):
    """(batch, dim) float: one point of a latent space per item (every item has all dims)."""

    spec: LatentSpec = field(default_factory=lambda: LatentSpec(dim=0))
    kind: ClassVar[str] = "Latents"
    spec_type: ClassVar[type] = LatentSpec

    def extent(self, i):
        return (int(self.data.shape[-1]),)


def type_name(t) -> str:
    if t is None:
        return "nothing"
    if t is File:
        return "file"
    return getattr(t, "kind", getattr(t, "__name__", str(t)))
