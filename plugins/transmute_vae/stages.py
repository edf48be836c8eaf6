"""The VAE's stages: images -> latents -> images, samples from the prior, and outlier scores in a batch."""

from __future__ import annotations

import json

from transmute.errors import CheckpointError, PipelineError
from transmute.files import ScoreTable
from transmute.outliers import PERCENTILES
from transmute.signals import File, Images, ImageSpec, Latents, LatentSpec
from transmute.stages import Param, Stage, item_seed

from transmute_vae import DEFAULT_MODEL

PLUGIN, MODEL, VERSION = "vae", "vae", "1.0"
LATENT_FORMAT, LATENT_FORMAT_VERSION = "transmute-latents", 1


def load_vae(ref: str, device="cpu", background: bool = False):
    """(VAE in eval mode, checkpoint) of a VAE checkpoint or built-in name; one line for a wrong file.
    With background=True: (VAE, background VAE or None, checkpoint)."""
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute_vae.networks import VAE

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    sizes = [int(ckpt.need("hparams", key)) for key in ("channels", "size", "latent_dim", "width")]
    nets = {}
    for name in ("vae", "background") if ckpt.hparams.get("background") else ("vae",):
        nets[name] = VAE(*sizes)
        load_weights(nets[name], ckpt.tensors, ckpt.path, prefix=f"{name}/", dtype=torch.float32)
        nets[name] = nets[name].eval().requires_grad_(False).to(device)
    if background:
        return nets["vae"], nets.get("background"), ckpt
    return nets["vae"], ckpt


def model_id(ref) -> str:
    """Names a latent space: a digest of the model's metadata (which holds the calibration scores, so two
    trainings differ; a copy of the file under another name keeps it), read without loading the weights."""
    import hashlib

    from transmute.checkpoint import read_metadata, resolve_model

    digest = hashlib.sha256(json.dumps(read_metadata(resolve_model(ref)), sort_keys=True).encode()).hexdigest()
    return f"vae-{digest[:16]}"


def model_image_spec(ckpt) -> ImageSpec:
    return ImageSpec("L" if int(ckpt.need("hparams", "channels")) == 1 else "RGB", (-1.0, 1.0))


class _ModelStage(Stage):
    def _metadata(self):
        from transmute.checkpoint import read_metadata, resolve_model

        try:
            meta = read_metadata(resolve_model(self.model))
        except CheckpointError as exc:
            raise PipelineError(str(exc)) from None
        if meta.get("plugin") != PLUGIN:
            raise PipelineError(f"{self.model}: not a VAE (made by plugin '{meta.get('plugin')}', model "
                                f"'{meta.get('model')}')")
        return meta

    def _image_check(self, incoming: ImageSpec) -> ImageSpec:
        meta = self._metadata()
        channels = int(meta["hparams"]["channels"])
        mode = "L" if channels == 1 else "RGB"
        self.require("mode", mode, incoming.mode,
                     f"the VAE '{self.model}' takes {mode} images; set mode = \"{mode}\" on the images.load stage")
        self.require("value_range", (-1.0, 1.0), incoming.value_range,
                     "set value_range = [-1, 1] on the images.load stage")
        return ImageSpec(mode, (-1.0, 1.0))

    def setup(self, device) -> None:
        super().setup(device)
        self.net, self.ckpt = load_vae(self.model, device)
        self.size = int(self.ckpt.need("hparams", "size"))

    def _fit(self, images: Images):
        """The batch at the model's size and channels, on the 256 levels it was trained on, in [-1, 1]."""
        from transmute.imagedata import fit_levels

        return fit_levels(images.data, self.net.channels, self.size).float().div(127.5).sub(1.0).to(self.device)


MODEL_PARAM = Param(str, DEFAULT_MODEL, "a VAE checkpoint (RUN/model.safetensors) or a built-in model name")


class Encode(_ModelStage):
    """Encode images to their latent means (the VAE's mu), one point of its latent space per image."""

    name = "vae.encode"
    consumes = Images
    produces = Latents
    params = {"model": MODEL_PARAM}

    def check(self, incoming: ImageSpec) -> LatentSpec:
        spec = self._image_check(incoming)
        meta = self._metadata()
        self.spec = LatentSpec(int(meta["hparams"]["latent_dim"]), model_id(self.model),
                               json.dumps(spec.to_dict(), sort_keys=True))
        return self.spec

    def process(self, signal: Images) -> Latents:
        mu, _ = self.net.encode(self._fit(signal))
        return Latents(mu.float(), self.spec, list(signal.names))


class Decode(_ModelStage):
    """Decode latents to images (the decoder's mean), at the model's size."""

    name = "vae.decode"
    consumes = Latents
    produces = Images
    params = {"model": MODEL_PARAM}

    def check(self, incoming: LatentSpec) -> ImageSpec:
        meta = self._metadata()
        if incoming.dim:  # 0: read from files, each checked as it comes
            self.require("dim", int(meta["hparams"]["latent_dim"]), incoming.dim,
                         f"the latents come from another model than '{self.model}'")
        return ImageSpec("L" if int(meta["hparams"]["channels"]) == 1 else "RGB", (-1.0, 1.0))

    def setup(self, device) -> None:
        super().setup(device)
        self.own_id = model_id(self.model)

    def process(self, signal: Latents) -> Images:
        from transmute.errors import InputError

        if signal.spec.model_id and signal.spec.model_id != self.own_id:
            raise InputError(f"latents of model '{signal.spec.model_id}' cannot be decoded by '{self.own_id}' "
                             f"({self.model}): each VAE has its own latent space")
        if signal.data.shape[-1] != self.net.latent_dim:
            raise InputError(f"{signal.data.shape[-1]}-dimensional latents cannot be decoded by '{self.model}', "
                             f"whose latent space has {self.net.latent_dim} dimensions")
        return Images(self.net.decode_image(signal.data.to(self.device).float()), model_image_spec(self.ckpt),
                      list(signal.names))


class Sample(_ModelStage):
    """Draw images from the prior: z ~ N(0, I) through the decoder (temperature scales z)."""

    name = "vae.sample"
    consumes = None
    produces = Images
    params = {"model": MODEL_PARAM,
              "temperature": Param(float, 1.0, "the standard deviation of z (below 1: typical, cleaner images)",
                                   min=0.0),
              "seed": Param(int, 0, "sample i of a run is drawn with seed (seed, i): the same at any batch size")}

    def check(self, incoming) -> ImageSpec:
        meta = self._metadata()
        return ImageSpec("L" if int(meta["hparams"]["channels"]) == 1 else "RGB", (-1.0, 1.0))

    def generate(self, count: int, names: list[str]) -> Images:
        import torch

        def draw(name: str):
            generator = torch.Generator().manual_seed(item_seed(self.seed, name))
            return torch.randn(self.net.latent_dim, generator=generator)

        z = torch.stack([draw(name) for name in names]) * self.temperature
        return Images(self.net.decode_image(z.to(self.device)), model_image_spec(self.ckpt), list(names))


class Score(_ModelStage):
    """Score each image as an outlier (bits per sub-pixel); flag those above the training set's percentile,
    and write every score to a CSV in the output folder. Images pass through unchanged."""

    name = "vae.score"
    consumes = Images
    produces = Images
    params = {
        "model": MODEL_PARAM,
        "score": Param(str, "auto", "elbo: negative ELBO; iwae: the importance-weighted bound; "
                       "complexity: iwae minus the input's PNG size (corrects likelihoods' bias to simple inputs); "
                       "ratio: iwae minus the background model's (a likelihood ratio); auto: ratio where the "
                       "model has a background model, else complexity",
                       choices=("auto", "elbo", "iwae", "complexity", "ratio")),
        "percentile": Param(float, 99.0, "flag inputs scoring above this percentile of the training set",
                            choices=PERCENTILES),
        "csv": Param(str, "scores.csv", "file (in the output folder) the scores are written to; '' for none"),
        "seed": Param(int, 0, "random draws of the bounds (scores are reproducible)"),
    }

    def check(self, incoming: ImageSpec) -> ImageSpec:
        self._image_check(incoming)
        return incoming

    def setup(self, device) -> None:
        super().setup(device)
        _, self.background, _ = load_vae(self.model, device, background=True)
        if self.score == "auto":
            self.score = "ratio" if self.background is not None else "complexity"
        if self.score == "ratio" and self.background is None:
            raise PipelineError(f"score 'ratio' needs a background model, and '{self.model}' was trained without "
                                "one (--hparam background=0.2 trains one); choose score = \"complexity\"")
        calibration = self.ckpt.need("extra", "calibration")
        # The thresholds hold for the number of importance samples they were computed with; fewer would
        # loosen the bound, raise every score and flag more inputs.
        self.k = int(calibration["samples"])
        self.threshold = float(calibration["percentiles"][self.score][f"{self.percentile:g}"])
        self.columns = [k for k in ("elbo", "iwae", "complexity", "ratio")
                        if k != "ratio" or self.background is not None]
        self.table = ScoreTable(self.output_dir, self.csv,
                                ["name", *self.columns, f"threshold_{self.score}", "unusual"])

    def process(self, signal: Images) -> Images:
        import zlib

        from transmute_vae.task import outlier_scores

        seeds = [self.seed * 1_000_003 + zlib.crc32(name.encode()) for name in signal.names]
        scores = outlier_scores(self.net, self._fit(signal), self.k, seeds, self.background)
        for i, name in enumerate(signal.names):
            value = float(scores[self.score][i])
            # Keyed by name: an item scored again (the runner retries a failed batch item by item) keeps one row.
            self.table.record(name, [f"{float(scores[k][i]):.4f}" for k in self.columns], value, self.threshold,
                              f"{self.score} score {value:.3f} bits/dim is above {self.threshold:.3f}, the "
                              f"{self.percentile:g}th percentile of the training set of '{self.model}'")
        self.table.write()
        return signal


class SaveLatents(Stage):
    """Save each item's latent vector as a .latent file (safetensors: tensor 'z', and the model id)."""

    name = "vae.save_latents"
    consumes = Latents
    produces = File
    params = {}

    def suffix(self) -> str:
        return ".latent"

    def save(self, item: Latents, path) -> None:
        from safetensors.torch import save_file

        meta = {"format": LATENT_FORMAT, "version": str(LATENT_FORMAT_VERSION),
                "spec": json.dumps(item.spec.to_dict(), sort_keys=True)}
        save_file({"z": item.data[0].detach().float().cpu().contiguous()}, str(path), metadata=meta)


class LoadLatents(Stage):
    """Load .latent files written by vae.save_latents (or by `transmute vae arithmetic`)."""

    name = "vae.load_latents"
    consumes = File
    produces = Latents
    extensions = ("latent",)
    params = {}

    def check(self, incoming) -> LatentSpec:
        return LatentSpec(dim=0)  # known only from the files; vae.decode checks each against its model

    def load(self, path) -> Latents:
        return read_latent(path)


def read_latent(path) -> Latents:
    from safetensors import safe_open

    from transmute.errors import InputError
    from transmute.signals import spec_from_dict

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != LATENT_FORMAT:
                raise InputError(f"{path}: not a transmute latent file (format {meta.get('format')!r})")
            if int(meta.get("version", "0")) > LATENT_FORMAT_VERSION:
                raise InputError(f"{path}: latent file version {meta['version']} is newer than this transmute "
                                 f"reads ({LATENT_FORMAT_VERSION})")
            z = f.get_tensor("z").float()
            spec = spec_from_dict(json.loads(meta["spec"]))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise InputError(f"{path}: not a readable latent file ({' '.join(str(exc).split())})") from None
    if z.dim() != 1 or not isinstance(spec, LatentSpec) or spec.dim != z.numel():
        raise InputError(f"{path}: latent file holds a tensor of shape {list(z.shape)} for a "
                         f"{getattr(spec, 'dim', '?')}-dimensional space")
    from pathlib import Path

    return Latents(z[None], spec, [Path(path).stem])
