"""Training a Gated PixelCNN over 8-bit images or over a VQ-VAE's code maps, in the engine's loop; the data
sets, the export (with the training set's score percentiles) and loading a trained model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.imagedata import shift_edge
from transmute.outliers import percentiles
from transmute.signals import ImageSpec
from transmute.training import Context, Task, TrainingData, require_hparam

from transmute_pixelcnn.networks import PRESETS, PixelCNN, bits, count_parameters, cross_entropy, generate

PLUGIN, MODEL, VERSION = "pixelcnn", "pixelcnn", "1.0"
CALIBRATION_ITEMS = 1000
SAMPLE_GRID = 8  # samples per row of the training sample grids


def validate_hparams(h: dict) -> None:
    need = require_hparam
    for key in ("width", "layers", "head", "embed", "segment", "steps", "batch_size"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    for key in ("first_kernel", "kernel"):
        need(isinstance(h[key], int) and h[key] >= 3 and h[key] % 2 == 1,
             f"{key} must be an odd whole number of at least 3, got {h[key]!r}")
    need(0 < h["lr"] < 1, f"lr must be a learning rate between 0 and 1, got {h['lr']!r}")
    need(0 <= h["dropout"] < 1, f"dropout must be from 0 to below 1, got {h['dropout']!r}")
    need(h["width"] >= 3 and h["head"] >= 3, "width and head must be at least 3: colour models split them into a "
                                             "group per channel")
    need(isinstance(h["shift"], int) and h["shift"] >= 0,
         f"shift must be a whole number of pixels, at least 0, got {h['shift']!r}")


def unit(kind: str) -> str:
    return "bits/dim" if kind == "pixels" else "nats/code"


def score_of(kind: str, nats: torch.Tensor) -> torch.Tensor:
    """The reported unit of a model's per-item NLL: bits per sub-pixel for images, nats per code for codes."""
    return bits(nats) if kind == "pixels" else nats


# --------------------------------------------------------------------------- data


def folder_labels(names: list[str], folders: int = 1) -> tuple[list[int], list[str]]:
    """Each item's class and the sorted class names. With one --data folder, the class is the sub-folder an
    item lies in (DATA/3/x.png is '3'); with several, each folder is a class (--data kal --data slt), as the
    items are then named FOLDER/... ."""
    tops = [name.split("/", 1)[0] if "/" in name else "" for name in names]
    if "" in tops:
        raise TransmuteError("--conditional takes each image's class from its folder (DATA/CLASS/image.png, or "
                             "one --data folder per class), but some images lie directly in the data folder")
    classes = sorted(set(tops), key=lambda c: (len(c), c))
    if len(classes) < 2:
        where = "--data folders" if folders > 1 else "class folders under --data"
        raise TransmuteError(f"--conditional needs at least two classes, found one ('{classes[0]}'): give two or "
                             f"more {where}, or leave --conditional out")
    index = {c: i for i, c in enumerate(classes)}
    return [index[t] for t in tops], classes


def recording_labels(names: list[str], folders: int) -> tuple[list[int], list[str]]:
    """folder_labels of recordings, which are named FOLDER/relative path: with one --data folder, the class
    is the sub-folder below it."""
    return folder_labels([n.split("/", 1)[1] for n in names] if folders == 1 else names, folders)


class Maps(TrainingData):
    """Integer maps held in memory: uint8 image levels (n, C, H, W), or code maps (n, variants, H, W) of which
    `load` picks one variant at random (the codes of the image moved by a few pixels); with class labels."""

    def __init__(self, names: list[str], maps: np.ndarray, labels: list[int] | None, kind: str, shift: int = 0):
        self.names, self.maps, self.labels, self.kind, self.shift = list(names), maps, labels, kind, shift
        self.map_size = tuple(int(n) for n in maps.shape[-2:])

    def whole(self, indices) -> list[torch.Tensor]:
        """The items as the model scores them (unshifted), in batches: here one batch of all."""
        chosen = self.maps[indices] if self.kind == "pixels" else self.maps[indices][:, 0]
        return [torch.from_numpy(chosen.astype(np.int64))]

    def items(self):
        return self.names

    def load(self, index, rng):
        item = self.maps[index]
        if self.kind == "codes":
            item = item[int(rng.integers(item.shape[0]))]
        elif self.shift:
            item = shift_edge(item, *rng.integers(-self.shift, self.shift + 1, size=2))
        x = torch.from_numpy(np.ascontiguousarray(item).astype(np.int64))
        label = self.labels[index] if self.labels is not None else -1
        return x, torch.tensor(label)


class CodeSegments(TrainingData):
    """Speech as time-major code maps (frames / downsample, groups), each item a random run of `rows` of them."""

    def __init__(self, names: list[str], maps: list[np.ndarray], labels: list[int] | None, rows: int):
        self.names, self.maps, self.labels = list(names), maps, labels
        self.map_size = (rows, int(maps[0].shape[1]))

    def items(self):
        return self.names

    def load(self, index, rng):
        item, rows = self.maps[index], self.map_size[0]
        start = int(rng.integers(item.shape[0] - rows + 1))
        x = torch.from_numpy(np.ascontiguousarray(item[start : start + rows]).astype(np.int64))
        return x, torch.tensor(self.labels[index] if self.labels is not None else -1)

    def whole(self, indices) -> list[torch.Tensor]:
        """Each recording's whole code map, one per batch (their lengths differ)."""
        return [torch.from_numpy(self.maps[i].astype(np.int64))[None] for i in indices]


def encode_images(codec, pixels: np.ndarray, shift: int = 0) -> np.ndarray:
    """uint8 (n, C, S, S) images -> int16 (n, variants, h, w) codes of the VQ-VAE, one variant per shift
    (dy, dx) in [-shift, shift]^2 (the unshifted first)."""
    offsets = [(0, 0)] + [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)
                          if (dy, dx) != (0, 0)]
    variants = [codec.encode_images(shift_edge(pixels, dy, dx)).to(torch.int16).numpy() for dy, dx in offsets]
    return np.stack(variants, axis=1)


def encode_speech(codec, folders: list[Path]) -> tuple[dict, list[str]]:
    """Speech -> ({name: int16 (positions, groups) time-major code map}, lines of files left out): each
    recording's codes as the vqvae-encode-speech pipeline makes them."""
    from transmute.audio import read_audio_folders

    audio, skipped = read_audio_folders(list(folders), codec.sample_rate)
    maps = {}
    for name, samples in audio.items():
        if len(samples) < codec.hop_length * codec.frames_per_row:
            skipped.append(f"{name}: shorter than one code position")
            continue
        maps[name] = codec.encode_audio(samples).T.to(torch.int16).numpy()
    return maps, skipped


def item_nll(net: PixelCNN, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item negative log-likelihood in nats per dimension. A conditional model without labels gives the
    marginal likelihood under equally likely classes, -log (1/K sum_k p(x | k)): the score of an input of
    unknown class, comparable with an unconditional model's."""
    if not net.classes or labels is not None:
        return net.nll(x, labels)
    dims = x[0].numel()
    per_class = torch.stack([net.nll(x, torch.full((len(x),), k, device=x.device)) * dims
                             for k in range(net.classes)])
    return (math.log(net.classes) - torch.logsumexp(-per_class.double(), 0)).float() / dims


@torch.no_grad()
def nll_batches(net: PixelCNN, maps: torch.Tensor, labels: torch.Tensor | None, device, batch: int = 128):
    """item_nll in the model's unit (bits/dim for pixels, nats/code for codes), a batch at a time."""
    out = []
    for i in range(0, len(maps), batch):
        y = labels[i : i + batch].to(device) if labels is not None else None
        out.append(score_of(net.kind, item_nll(net, maps[i : i + batch].to(device), y)).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- task


class PixelCNNTask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, kind: str, data: Maps, preset: str, h: dict, channels: int = 1, codebook_size: int = 256,
                 classes: list[str] | None = None, corpus: str = "", code_spec: dict | None = None,
                 source_size: tuple[int, int] | None = None, speech: dict | None = None):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.kind, self.maps, self.preset, self.h = kind, data, preset, dict(h)
        validate_hparams(self.h)
        self.channels, self.codebook_size = channels, codebook_size
        self.classes = classes or []
        self.corpus, self.code_spec, self.source_size = corpus, code_spec, source_size
        self.map_size = data.map_size
        self.layout = "time" if isinstance(data, CodeSegments) else "image"
        # Speech: frames_per_row, hop_length, sample_rate (how code rows become audio).
        self.speech = speech
        self.steps_done = 0
        self.codec = None  # the VQ-VAE (codec.Codec) that shows code samples, set by the command

    def hparams(self) -> dict:
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, "kind": self.kind, "channels": self.channels,
                "codebook_size": self.codebook_size, "classes": len(self.classes), **settings}

    def build(self) -> PixelCNN:
        return PixelCNN(self.kind, self.h, self.channels, self.codebook_size, len(self.classes))

    def setup(self, ctx: Context) -> None:
        self.ctx = ctx
        self.net = self.build().to(ctx.device)
        self.run = ctx.wrap(self.net)
        self.opt = {"pixelcnn": torch.optim.Adam(self.net.parameters(), lr=self.h["lr"])}
        steps = self.h["steps"]
        # Cosine decay to 5% of the rate over the run.
        self.sched = {"pixelcnn": torch.optim.lr_scheduler.LambdaLR(
            self.opt["pixelcnn"], lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.95 + 0.05)}

    def modules(self):
        return {"pixelcnn": self.net}

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> Maps:
        return self.maps

    def train_step(self, batch, step: int, ctx: Context) -> dict:
        self.steps_done = step + 1
        x, labels = (t.to(ctx.device, non_blocking=True) for t in batch)
        with ctx.autocast():
            logits = self.run(x, labels if self.classes else None)
        nll = cross_entropy(logits, x).mean()
        self.opt["pixelcnn"].zero_grad(set_to_none=True)
        nll.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.opt["pixelcnn"].step()
        key = "bits_per_dim" if self.kind == "pixels" else "nats_per_code"
        return {key: score_of(self.kind, nll.detach())}

    def sample_labels(self, rows: int) -> torch.Tensor | None:
        if not self.classes:
            return None
        return torch.arange(rows * SAMPLE_GRID) // SAMPLE_GRID % len(self.classes)

    def write_samples(self, step: int, folder: Path) -> None:
        from transmute.viz import sheet_png

        if self.layout == "time":
            return self.write_speech_samples(step, folder)
        rows = min(len(self.classes), 10) if self.classes else 4
        labels = self.sample_labels(rows)
        net = self.net.eval()
        try:
            maps = generate(net, self.map_size, list(range(rows * SAMPLE_GRID)),
                            labels.to(self.ctx.device) if labels is not None else None, device=self.ctx.device)
        finally:
            net.train()
        if self.kind == "pixels":
            images = as_images(maps)
        elif self.codec is not None:
            images = self.codec.decode_images(maps)
        else:
            return
        folder.mkdir(parents=True, exist_ok=True)
        titles = [self.classes[int(labels[r * SAMPLE_GRID])] for r in range(rows)] if self.classes else None
        sheet_png([list(images[r * SAMPLE_GRID : (r + 1) * SAMPLE_GRID].cpu()) for r in range(rows)],
                  folder / f"step{step:07d}.png", row_titles=titles)

    def write_speech_samples(self, step: int, folder: Path) -> None:
        """Two samples (one per class for a speaker-conditioned model) twice the training length, as log-mels."""
        from transmute.viz import spectrogram_png

        if self.codec is None:
            return
        count = max(2, min(len(self.classes), 4))
        labels = torch.arange(count) % len(self.classes) if self.classes else None
        net = self.net.eval()
        try:
            maps = generate(net, (2 * self.map_size[0], self.map_size[1]), list(range(count)),
                            labels.to(self.ctx.device) if labels is not None else None, device=self.ctx.device)
        finally:
            net.train()
        mels = self.codec.decode_mels(maps.transpose(1, 2).cpu())
        folder.mkdir(parents=True, exist_ok=True)
        titles = [f"sample {i}" + (f", {self.classes[int(labels[i])]}" if labels is not None else "")
                  for i in range(count)]
        spectrogram_png(mels, folder / f"step{step:07d}.png", titles=titles)

    def calibration(self) -> dict:
        """Percentiles of the NLL over (up to 1000 of) the training items: the outlier thresholds. For a
        conditional model, of the likelihood under any class (what pixelcnn.score computes by default) and,
        per class, of its items' likelihood given their class (what it computes with class_name)."""
        final = self.steps_done >= self.h["steps"]
        # An intermediate checkpoint gets thresholds from 50 items (a conditional model's marginal costs a
        # pass per class), enough to use it; the final model gets the full set.
        count = min(CALIBRATION_ITEMS if final else CALIBRATION_ITEMS // 20, len(self.maps.names))
        pick = torch.linspace(0, len(self.maps.names) - 1, count).round().long().numpy()
        batches = self.maps.whole(pick)
        self.net.eval()
        try:
            scores = torch.cat([nll_batches(self.net, batch, None, self.ctx.device) for batch in batches])
            out = {"items": count, "unit": unit(self.kind), "percentiles": percentiles(scores),
                   "mean": round(float(scores.mean()), 5)}
            if self.classes:
                labels = torch.tensor([self.maps.labels[i] for i in pick])
                given, start = [], 0
                for batch in batches:
                    given.append(nll_batches(self.net, batch, labels[start : start + len(batch)], self.ctx.device))
                    start += len(batch)
                given = torch.cat(given)
                out["per_class"] = {name: percentiles(given[labels == k]) for k, name in enumerate(self.classes)
                                    if int((labels == k).sum()) >= 2}
        finally:
            self.net.train()
        return out

    def export(self) -> Checkpoint:
        tensors = {f"net/{k}": v.detach().float().cpu() for k, v in self.net.state_dict().items()}
        h = self.h
        spec = (ImageSpec("L" if self.channels == 1 else "RGB", (-1.0, 1.0)) if self.kind == "pixels" else None)
        extra = {"calibration": self.calibration(), "classes": self.classes, "corpus": self.corpus,
                 "map_size": list(self.map_size), "layout": self.layout}
        if self.kind == "codes":
            extra["code_spec"] = self.code_spec
        if self.layout == "image" and self.kind == "codes":
            extra["source_size"] = list(self.source_size)
        if self.layout == "time":
            extra["speech"] = self.speech
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={**{k: h[k] for k in ("width", "layers", "first_kernel", "kernel", "head", "embed")},
                     "kind": self.kind, "channels": self.channels, "codebook_size": self.codebook_size,
                     "classes": len(self.classes), "preset": self.preset},
            feature_spec=spec, extra=extra)

    def describe_size(self) -> str:
        what = (f"{self.channels} channel(s) of 256 levels" if self.kind == "pixels"
                else f"codes of {self.codebook_size}")
        cond = f", conditioned on {len(self.classes)} classes" if self.classes else ""
        return (f"{count_parameters(self.net) / 1e6:.2f}M parameters, {self.h['layers']} gated layers, "
                f"{self.map_size[0]}x{self.map_size[1]} maps of {what}{cond}")


def as_images(levels: torch.Tensor) -> torch.Tensor:
    """uint8-valued levels (n, C, H, W) -> float images in [-1, 1]."""
    return levels.float() / 127.5 - 1.0


# --------------------------------------------------------------------------- a trained model


def load_pixelcnn(ref: str, device="cpu"):
    """(network in eval mode, checkpoint) of a PixelCNN checkpoint or built-in model name."""
    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    h = {k: int(ckpt.need("hparams", k)) for k in ("width", "layers", "first_kernel", "kernel", "head", "embed")}
    net = PixelCNN(ckpt.need("hparams", "kind"), h, int(ckpt.need("hparams", "channels")),
                   int(ckpt.need("hparams", "codebook_size")), int(ckpt.need("hparams", "classes")))
    load_weights(net, ckpt.tensors, ckpt.path, prefix="net/", dtype=torch.float32)
    return net.eval().requires_grad_(False).to(device), ckpt
