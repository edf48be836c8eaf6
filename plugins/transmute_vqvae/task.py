"""Training the VQ-VAE on images or on log-mel spectrograms of speech, in the engine's loop.

The quantiser while training is vector_quantize_pytorch's VectorQuantize: EMA
codebook updates, k-means initialisation from the first batch, codes unused
for a while restarted from encoder outputs, the commitment loss, and the
straight-through gradient (rotation trick off). The exported model holds the
codebook as a plain tensor; inference looks codes up without the library.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.signals import FeatureSpec, ImageSpec
from transmute.training import Context, Task, TrainingData, require_hparam

from transmute_vqvae.networks import MEL_SCALE, MEL_SHIFT, PRESETS, VQVAE, UsageWindow, codebook_id, \
    count_parameters, decode, encode, pad_to_multiple, perplexity_and_usage, preset_for, steps_for

PLUGIN, MODEL, VERSION = "vqvae", "vqvae", "1.0"
SAMPLES = 8  # images in each sample grid
LEVEL_SUFFIXES = ("", "_top")  # of the bottom and the top level's names: tensors, modules, telemetry
SAMPLE_FRAMES = 256  # frames of each speech sample
# The built-in vocoder's features (festival-vocos): what the default speech model encodes.
FEATURES = FeatureSpec(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=80, fmin=0, fmax=8000)


def validate_hparams(h: dict) -> None:
    need = require_hparam
    for key in ("width", "res_blocks", "code_dim", "codebook_size", "downsample", "groups", "segment_frames",
                "kmeans_iters", "usage_window", "steps", "batch_size"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    try:
        steps_for(h["downsample"])
    except ValueError as exc:
        need(False, str(exc))
    need(h["levels"] in (1, 2), f"levels must be 1 or 2, got {h['levels']!r}")
    multiple = h["downsample"] * 2 ** (h["levels"] - 1)
    need(h["segment_frames"] % multiple == 0,
         f"segment_frames ({h['segment_frames']}) must be a multiple of {multiple} (downsample x 2 per extra level)")
    need(0 < h["lr"] < 1, f"lr must be a learning rate between 0 and 1, got {h['lr']!r}")
    need(0 < h["ema_decay"] < 1, f"ema_decay must be between 0 and 1, got {h['ema_decay']!r}")
    need(h["commitment"] >= 0 and h["dead_code_threshold"] >= 0, "commitment and dead_code_threshold must be >= 0")


# --------------------------------------------------------------------------- data


def read_mels(folders: list[Path], spec: FeatureSpec) -> tuple[dict, list[str]]:
    """{'FOLDER/relative path': (n_mels, frames) float32 log-mels} of every readable audio file, and what was skipped."""
    from transmute import dsp
    from transmute.audio import read_audio_folders

    audio, skipped = read_audio_folders(folders, spec.sample_rate)
    mels = {}
    for name, samples in audio.items():
        if samples.shape[0] < spec.hop_length:
            continue
        with torch.no_grad():
            feats, _ = dsp.features(torch.from_numpy(samples)[None], spec)
        mels[name] = feats[0].numpy()
    if not mels:
        raise TransmuteError(f"{', '.join(map(str, folders))}: no readable speech")
    return mels, skipped


class MelSegments(TrainingData):
    """An item is a random segment of one recording's log-mels, padded with silence when shorter."""

    def __init__(self, mels: dict, frames: int, floor: float):
        self.names, self.mels = list(mels), list(mels.values())
        self.frames, self.floor = frames, floor

    def items(self):
        return self.names

    def load(self, index, rng):
        import numpy as np

        mel, n = self.mels[index], self.frames
        if mel.shape[1] < n:
            mel = np.pad(mel, ((0, 0), (0, n - mel.shape[1])), constant_values=self.floor)
        start = int(rng.integers(mel.shape[1] - n + 1))
        return torch.from_numpy(np.ascontiguousarray(mel[:, start : start + n]))


# --------------------------------------------------------------------------- task


def make_quantizer(h: dict):
    from vector_quantize_pytorch import VectorQuantize

    return VectorQuantize(dim=h["code_dim"], codebook_size=h["codebook_size"], decay=h["ema_decay"],
                          commitment_weight=h["commitment"], kmeans_init=True, kmeans_iters=h["kmeans_iters"],
                          threshold_ema_dead_code=h["dead_code_threshold"], rotation_trick=False)


def library_codebook(quantizer) -> torch.Tensor:
    """(codebook_size, code_dim): the library's codebook (one head), as the checkpoint stores it."""
    return quantizer._codebook.embed[0]


class Trainable(torch.nn.Module):
    """The network and the library's quantisers (one per level): one forward, so DistributedDataParallel can wrap it."""

    def __init__(self, net: VQVAE, quantizers: list):
        super().__init__()
        self.net, self.quantizers = net, torch.nn.ModuleList(quantizers)

    def forward(self, x):
        """x -> (reconstruction, [(indices, grid)] bottom first, quantiser loss)."""
        return self.net.forward_levels(x, lambda vectors, level: self.quantizers[level](vectors.float()))


class VQVAETask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, kind: str, data: TrainingData, preset: str = "small", overrides: dict | None = None,
                 channels: int = 1, size: int = 28, spec: FeatureSpec = FEATURES, corpus: str = "",
                 samples: list | None = None):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        if kind not in ("images", "speech"):
            raise TransmuteError(f"unknown kind '{kind}'; choose images or speech")
        self.kind, self.preset, self.training_data = kind, preset, data
        self.h = dict(preset_for(preset, kind), **(overrides or {}))
        validate_hparams(self.h)
        self.channels, self.size = (channels, size) if kind == "images" else (spec.n_mels, 0)
        self.spec = spec.replace(normalization=None) if kind == "speech" else ImageSpec(
            "L" if channels == 1 else "RGB", (-1.0, 1.0))
        self.corpus = corpus
        self.samples = samples or []  # tensors shown in the sample PNGs

    @property
    def dims(self) -> int:
        return 2 if self.kind == "images" else 1

    def hparams(self) -> dict:
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, "kind": self.kind, "channels": self.channels, "size": self.size,
                **settings, "feature_spec": self.spec.to_dict()}

    def setup(self, ctx: Context) -> None:
        h, dev = self.h, ctx.device
        self.ctx = ctx
        self.net = VQVAE(self.channels, h, self.dims).to(dev)
        self.quantizers = [make_quantizer(h).to(dev) for _ in range(h["levels"])]
        self.usage = [UsageWindow(h["usage_window"], h["codebook_size"]).to(dev) for _ in range(h["levels"])]
        self.run = ctx.wrap(Trainable(self.net, self.quantizers))
        self.opt = {"vqvae": torch.optim.Adam(self.net.parameters(), lr=h["lr"])}

    def modules(self):
        modules = {"vqvae": self.net}
        for level, suffix in enumerate(LEVEL_SUFFIXES[: self.h["levels"]]):
            modules.update({f"quantizer{suffix}": self.quantizers[level], f"usage{suffix}": self.usage[level]})
        return modules

    def optimizers(self):
        return self.opt

    def data(self) -> TrainingData:
        return self.training_data

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch as the network takes it: images as they are, log-mels scaled to about unit range."""
        return batch if self.kind == "images" else (batch - (-MEL_SHIFT)) / MEL_SCALE

    def train_step(self, batch, step: int, ctx: Context) -> dict:
        x = self.to_input(batch.to(ctx.device, non_blocking=True))
        with ctx.autocast():
            recon, levels, commit = self.run(x)
            loss_recon = F.mse_loss(recon.float(), x)
            loss = loss_recon + commit.sum()
        self.opt["vqvae"].zero_grad(set_to_none=True)
        loss.backward()
        self.opt["vqvae"].step()
        out = {"recon": loss_recon.detach(), "commit": commit.detach().sum()}
        with torch.no_grad():
            for (indices, _), usage, suffix in zip(levels, self.usage, LEVEL_SUFFIXES):
                perplexity, counts = perplexity_and_usage(indices, self.h["codebook_size"])
                out.update({f"perplexity{suffix}": perplexity, f"codes_in_use{suffix}": usage.add(counts)})
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Through the exported path (hand lookup), as the stages will run it."""
        self.net.eval()
        try:
            with torch.no_grad():
                codebooks = [library_codebook(q).float() for q in self.quantizers]
                inputs = self.to_input(x.to(self.ctx.device))
                padded = pad_to_multiple(inputs, self.net.multiple, self.dims)
                out = decode(self.net, codebooks, encode(self.net, codebooks, padded))
                out = out[..., : inputs.shape[-2], : inputs.shape[-1]] if self.dims == 2 else out[..., : inputs.shape[-1]]
        finally:
            self.net.train()
        out = out.float().cpu()
        return out if self.kind == "images" else out * MEL_SCALE - MEL_SHIFT

    def write_samples(self, step: int, folder: Path) -> None:
        if not self.samples:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "images":
            from transmute.imagedata import to_uint8
            from transmute.viz import image_grid_png

            x = torch.stack(self.samples)
            recon = self.reconstruct(x).clamp(-1, 1)
            if x.shape[1] == 1:
                x, recon = x.repeat(1, 3, 1, 1), recon.repeat(1, 3, 1, 1)
            rows = [list(r) for r in zip(to_uint8(x), to_uint8(recon))]
            image_grid_png(rows, folder / f"step{step:07d}.png", titles=["input", "reconstruction"])
            return
        from transmute.viz import spectrogram_png

        for i, mel in enumerate(self.samples):
            recon = self.reconstruct(mel[None])[0]
            spectrogram_png([mel, recon], folder / f"step{step:07d}-{i}.png",
                            titles=["input", f"reconstruction, step {step}"])

    def export(self) -> Checkpoint:
        codebooks = [library_codebook(q).detach().float().cpu().clone() for q in self.quantizers]
        tensors = {f"net/{k}": v.detach() for k, v in self.net.state_dict().items()}
        tensors.update({f"codebook{suffix}": c for c, suffix in zip(codebooks, LEVEL_SUFFIXES)})
        h = self.h
        label = f"vqvae-{self.kind}"
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={**{k: h[k] for k in ("width", "res_blocks", "code_dim", "codebook_size", "downsample",
                                          "groups", "levels")},
                     "kind": self.kind, "channels": self.channels, "size": self.size, "preset": self.preset},
            feature_spec=self.spec,
            extra={"codebook_id": codebook_id(label, torch.cat(codebooks)), "corpus": self.corpus,
                   "mel_shift": MEL_SHIFT, "mel_scale": MEL_SCALE},
        )

    def describe_size(self) -> str:
        return (f"{count_parameters(self.net) / 1e6:.2f}M parameters, {self.h['levels']} level(s), codebook "
                f"{self.h['codebook_size']} x {self.h['code_dim']} per level, downsample {self.h['downsample']}, "
                f"{self.h['groups']} code(s) per position")
