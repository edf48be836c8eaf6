"""Training MaskCycleGAN-VC on two folders of unpaired recordings, in the engine's loop."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.gan import CycleObjective, linear_decay
from transmute.signals import FeatureSpec, Normalization
from transmute.training import Context, Task, TrainingData, require_hparam

from transmute_cyclegan_vc.networks import PRESETS, Discriminator, Generator

PLUGIN = "cyclegan_vc"
MODEL = "converter"
VERSION = "1.0"

# HiFi-GAN/MelGAN's mel settings, which MaskCycleGAN-VC also uses.
FEATURES = FeatureSpec(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=80, fmin=0, fmax=8000)
LAMBDA_CYCLE = 10.0
LAMBDA_IDENTITY = 5.0
TRIM_TOP_DB = 40.0
MIN_FRAMES = 256  # a speaker needs a few seconds of speech for its statistics to mean anything


def validate_hparams(h: dict) -> None:
    """One-line errors for settings the networks or the sampler cannot work with."""
    need = require_hparam
    for key in ("gen_channels", "res_channels", "res_blocks", "disc_channels", "steps", "batch_size"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    need(h["gen_channels"] % 2 == 0, f"gen_channels must be even (the last block halves it), got {h['gen_channels']}")
    need(h["segment_frames"] >= 8 and h["segment_frames"] % 4 == 0,
         f"segment_frames must be a multiple of 4, at least 8, got {h['segment_frames']}")
    need(0 <= h["max_mask_frames"] < h["segment_frames"],
         f"max_mask_frames must be at least 0 and below segment_frames ({h['segment_frames']}), "
         f"got {h['max_mask_frames']}")
    for key in ("lr_g", "lr_d"):
        need(0 < h[key] < 1, f"{key} must be a learning rate between 0 and 1, got {h[key]!r}")
    need(h["decay_from"] >= 0 and h["identity_until"] >= 0, "decay_from and identity_until must be at least 0")


def speaker_features(folder: Path, spec: FeatureSpec, label: str
                     ) -> tuple[dict[str, torch.Tensor], Normalization, list[str]]:
    """{relative path: log-mel} of every readable file in a folder (silence trimmed), their per-bin
    mean/std, and the files skipped."""
    from transmute import dsp
    from transmute.audio import is_audio_file, read_audio, trim_silence
    from transmute.files import discover

    files, _, problems = discover([str(folder)], is_audio_file)
    if not files:
        why = f" ({problems[0][0]}: {problems[0][1]})" if problems else ""
        raise TransmuteError(f"{folder}: no audio files found{why}")
    feats, skipped = {}, [f"{path}: {reason}" for path, reason in problems]  # an unreadable sub-folder, a broken link
    for f in files:
        try:
            audio, _ = read_audio(f.path, spec.sample_rate)
        except TransmuteError as exc:
            skipped.append(f"{f.path}: {exc}")
            continue
        audio = trim_silence(audio, TRIM_TOP_DB)
        mel, _ = dsp.features(torch.from_numpy(audio[:, 0]).unsqueeze(0), spec)
        feats[f.relative.as_posix()] = mel[0]
    if not feats:
        raise TransmuteError(f"{folder}: none of {len(files)} files could be read ({skipped[0]})")
    frames = torch.cat(list(feats.values()), dim=1)
    if frames.shape[1] < MIN_FRAMES:
        raise TransmuteError(f"{folder}: too little audio to learn a voice from ({frames.shape[1]} frames after "
                             f"trimming silence; at least {MIN_FRAMES}, about {MIN_FRAMES * 256 / 22050:.0f} s)")
    norm = Normalization(mean=frames.mean(dim=1).tolist(), std=frames.std(dim=1).clamp_min(1e-3).tolist(), label=label)
    return feats, norm, skipped


def _norm_tensors(norm: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(norm.mean).view(-1, 1), torch.tensor(norm.std).view(-1, 1)


class SpeakerSegments(TrainingData):
    """Unpaired speech of two speakers; an item is a random segment of one utterance of each, with masks.

    Items are named 'a/PATH' and 'b/PATH' (PATH relative to the speaker's
    folder), which is what a --sample-weights CSV lists.
    """

    def __init__(self, data: dict[str, dict[str, torch.Tensor]], segment_frames: int, max_mask_frames: int):
        self.names = {key: [f"{key}/{name}" for name in utterances] for key, utterances in data.items()}
        self.utterances = {key: list(utterances.values()) for key, utterances in data.items()}
        self.frames, self.most_masked = segment_frames, max_mask_frames

    def items(self):
        return self.names

    def _segment(self, mel: torch.Tensor, rng) -> torch.Tensor:
        n = self.frames
        if mel.shape[1] < n:
            mel = F.pad(mel.unsqueeze(0), (0, n - mel.shape[1]), mode="replicate")[0]
        start = int(rng.integers(mel.shape[1] - n + 1))
        return mel[:, start : start + n].clone()

    def _mask(self, n_mels: int, rng) -> torch.Tensor:
        """Filling in frames: a random run of up to max_mask_frames frames is zeroed."""
        mask = torch.ones(n_mels, self.frames)
        length = int(rng.integers(self.most_masked + 1))
        start = int(rng.integers(self.frames - length + 1))
        mask[:, start : start + length] = 0
        return mask

    def load(self, index, rng):
        a, b = self.utterances["a"][index["a"]], self.utterances["b"][index["b"]]
        return {"a": self._segment(a, rng), "b": self._segment(b, rng),
                "mask_a": self._mask(a.shape[0], rng), "mask_b": self._mask(b.shape[0], rng)}


class CycleGANVCTask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, features: dict[str, dict[str, torch.Tensor] | list[torch.Tensor]],
                 norms: dict[str, Normalization], preset: str = "small", overrides: dict | None = None,
                 labels: tuple[str, str] = ("a", "b")):
        """features: {'a': {name: (n_mels, frames) log-mel}, 'b': {...}} (or lists), not yet normalised."""
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.preset = preset
        self.h = dict(PRESETS[preset], **(overrides or {}))
        validate_hparams(self.h)
        self.spec = FEATURES
        self.labels = labels
        self.norms = norms
        self.features = {}
        for key, feats in features.items():
            mean, std = _norm_tensors(norms[key])
            named = feats if isinstance(feats, dict) else {f"{i:05d}": f for i, f in enumerate(feats)}
            self.features[key] = {name: (f - mean) / std for name, f in named.items()}
        # Samples show the longest utterance of each speaker (a one-frame file shows nothing).
        self.sample_sources = {k: max(v.values(), key=lambda f: f.shape[1]) for k, v in self.features.items()}
        self.skipped: list[str] = []

    @classmethod
    def from_folders(cls, a_dir: Path, b_dir: Path, preset: str = "small", overrides: dict | None = None,
                     labels: tuple[str, str] | None = None) -> "CycleGANVCTask":
        if preset in PRESETS:  # settings first: reading the folders takes a while
            validate_hparams(dict(PRESETS[preset], **(overrides or {})))
        labels = labels or (Path(a_dir).name, Path(b_dir).name)
        features, norms, skipped = {}, {}, []
        for key, folder, label in (("a", a_dir, labels[0]), ("b", b_dir, labels[1])):
            features[key], norms[key], unread = speaker_features(Path(folder), FEATURES, label)
            skipped += unread
        task = cls(features, norms, preset, overrides, labels)
        task.skipped = skipped
        return task

    def hparams(self) -> dict:
        """What a resumed run must share with the original (the length and cadence of a run may change)."""
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, **settings, "n_mels": self.spec.n_mels, "labels": list(self.labels)}

    # ---------------------------------------------------------------- building
    def _generator(self):
        h = self.h
        return Generator(self.spec.n_mels, h["gen_channels"], h["res_channels"], h["res_blocks"])

    def setup(self, ctx: Context) -> None:
        h, dev = self.h, ctx.device
        self.ctx = ctx
        self.nets = {
            "g_ab": self._generator().to(dev), "g_ba": self._generator().to(dev),
            "d_a": Discriminator(h["disc_channels"]).to(dev), "d_b": Discriminator(h["disc_channels"]).to(dev),
            # The second pair judges cycle-reconstructed features (two-step adversarial loss).
            "d_a2": Discriminator(h["disc_channels"]).to(dev), "d_b2": Discriminator(h["disc_channels"]).to(dev),
        }
        self.run = {name: ctx.wrap(net) for name, net in self.nets.items()}
        betas = (0.5, 0.999)
        gen_params = list(self.nets["g_ab"].parameters()) + list(self.nets["g_ba"].parameters())
        disc_params = [p for n in ("d_a", "d_b", "d_a2", "d_b2") for p in self.nets[n].parameters()]
        self.opt = {"g": torch.optim.Adam(gen_params, lr=h["lr_g"], betas=betas),
                    "d": torch.optim.Adam(disc_params, lr=h["lr_d"], betas=betas)}
        decay = linear_decay(h["steps"], h["decay_from"])
        self.sched = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.opt.items()}

    def modules(self):
        return self.nets

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> SpeakerSegments:
        return SpeakerSegments(self.features, self.h["segment_frames"], self.h["max_mask_frames"])

    # ---------------------------------------------------------------- step
    def train_step(self, batch, step: int, ctx: Context) -> dict[str, torch.Tensor]:
        run = self.run
        # The loop pins batches in memory on a GPU: the copies overlap with compute.
        a, b, ma, mb = (batch[k].to(ctx.device, non_blocking=True) for k in ("a", "b", "mask_a", "mask_b"))
        objective = CycleObjective(LAMBDA_CYCLE, LAMBDA_IDENTITY, "lsgan")
        second = {"d_a2": run["d_a2"], "d_b2": run["d_b2"]}  # judge cycle-reconstructed features (two-step loss)

        # Generators: adversarial (one- and two-step), cycle-consistency, identity.
        self.opt["g"].zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_g, parts, outputs = objective.generators(
                run["g_ab"], run["g_ba"], run["d_a"], run["d_b"], a, b, identity=step < self.h["identity_until"],
                first_ab=lambda x: run["g_ab"](x, ma), first_ba=lambda x: run["g_ba"](x, mb), **second)
        loss_g.float().backward()
        self.opt["g"].step()

        # Discriminators: real vs converted, and real vs cycle-reconstructed.
        self.opt["d"].zero_grad(set_to_none=True)
        outputs = {k: v.detach() for k, v in outputs.items()}
        with ctx.autocast():
            loss_d, d_parts = objective.discriminators(run["d_a"], run["d_b"], a, b, outputs, **second)
        loss_d.float().backward()
        self.opt["d"].step()
        values = {**parts, **d_parts}
        return {k: v.detach() for k, v in values.items()}

    # ---------------------------------------------------------------- outputs
    def convert(self, features: torch.Tensor, direction: str) -> torch.Tensor:
        """Normalised (n_mels, frames) of one speaker -> normalised features of the other."""
        net = self.nets["g_ab" if direction == "a2b" else "g_ba"]
        net.eval()
        with torch.no_grad():
            out = net(features.unsqueeze(0).to(self.ctx.device))[0].float().cpu()
        net.train()
        return out

    def write_samples(self, step: int, folder: Path) -> None:
        import soundfile

        from transmute import dsp
        from transmute.files import atomic_path
        from transmute.viz import spectrogram_png

        folder.mkdir(parents=True, exist_ok=True)
        for direction, source, target in (("a2b", "a", "b"), ("b2a", "b", "a")):
            src = self.sample_sources[source][:, :512]
            out = self.convert(src, direction)
            src_mean, src_std = _norm_tensors(self.norms[source])
            tgt_mean, tgt_std = _norm_tensors(self.norms[target])
            src_log, out_log = src * src_std + src_mean, out * tgt_std + tgt_mean
            name = f"step{step:07d}-{direction}"
            spectrogram_png([src_log, out_log], folder / f"{name}.png",
                            titles=[f"{self.labels[0 if source == 'a' else 1]} (source)", "converted"])
            audio = dsp.mel_to_audio(out_log.unsqueeze(0), self.spec, n_iter=32, names=[name])[0].numpy()
            audio = audio / max(1.0, float(abs(audio).max()) / 0.95)
            with atomic_path(folder / f"{name}.wav") as tmp:
                soundfile.write(str(tmp), audio, self.spec.sample_rate, format="WAV", subtype="PCM_16")

    def export(self) -> Checkpoint:
        tensors = {}
        for direction, name in (("a2b", "g_ab"), ("b2a", "g_ba")):
            for key, value in self.nets[name].state_dict().items():
                # float16 halves the file; conversion runs in float32 after loading.
                tensors[f"{direction}/{key}"] = value.detach().to(torch.float16)
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={k: self.h[k] for k in ("gen_channels", "res_channels", "res_blocks")} | {"preset": self.preset},
            feature_spec=self.spec,
            extra={"speakers": {"a": self.labels[0], "b": self.labels[1]},
                   "stats": {k: {"mean": list(n.mean), "std": list(n.std)} for k, n in self.norms.items()}},
        )


def describe_size(task: CycleGANVCTask) -> str:
    from transmute_cyclegan_vc.networks import count_parameters

    g = count_parameters(task.nets["g_ab"])
    d = count_parameters(task.nets["d_a"])
    return f"generators 2 x {g / 1e6:.2f}M parameters, discriminators 4 x {d / 1e6:.2f}M"

