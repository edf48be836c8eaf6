"""The PixelCNN's stages: samples (images, or code maps for a VQ-VAE decoder) and likelihood outlier scores.

Module level imports only transmute's cheap modules.
"""

from __future__ import annotations

import json
import math

from transmute.errors import CheckpointError, InputError, PipelineError
from transmute.files import ScoreTable
from transmute.outliers import PERCENTILES
from transmute.signals import Codes, CodeSpec, Images, ImageSpec
from transmute.stages import Param, Stage, item_seed

from transmute_pixelcnn import DEFAULT_MODEL, PIXELS_MODEL

PLUGIN = "pixelcnn"
MODEL_PARAM = Param(str, DEFAULT_MODEL, "a PixelCNN checkpoint (RUN/model.safetensors) or a built-in model name "
                                       "(transmute models)")


def model_meta(ref: str) -> dict:
    """A PixelCNN checkpoint's metadata (header only), or a PipelineError naming what is wrong."""
    from transmute.checkpoint import read_metadata, resolve_model

    try:
        meta = read_metadata(resolve_model(ref))
    except CheckpointError as exc:
        raise PipelineError(f"model: {exc}") from None
    if meta.get("plugin") != PLUGIN:
        raise PipelineError(f"{ref}: not a PixelCNN (made by plugin '{meta.get('plugin')}', model "
                            f"'{meta.get('model')}')")
    return meta


def need_kind(meta: dict, ref: str, kind: str, pixels_stage: str, codes_stage: str) -> None:
    have = meta["hparams"].get("kind")
    if have != kind:
        raise PipelineError(f"the model '{ref}' is a PixelCNN over {have}; use "
                            f"{pixels_stage if have == 'pixels' else codes_stage}")


def output_spec(meta: dict):
    """What a model's samples are: ImageSpec for a pixel model, the VQ-VAE's CodeSpec for a code model."""
    h = meta["hparams"]
    if h["kind"] == "pixels":
        return ImageSpec("L" if int(h["channels"]) == 1 else "RGB", (-1.0, 1.0))
    code = (meta.get("extra") or {}).get("code_spec")
    if not code:
        raise PipelineError("metadata field 'extra.code_spec' is missing; the checkpoint is damaged")
    return CodeSpec(codebook_size=int(code["codebook_size"]), codebook_id=code["codebook_id"], source=code["source"])


class Sampler:
    """A trained PixelCNN, ready to draw maps; for a code model also the VQ-VAE that decodes them."""

    def __init__(self, ref: str, device="cpu", decoder: bool = True):
        from transmute_pixelcnn.task import load_pixelcnn

        self.net, self.ckpt = load_pixelcnn(ref, device)
        self.device, self.ref = device, ref
        self.classes = list(self.ckpt.extra.get("classes") or [])
        self.size = tuple(int(n) for n in self.ckpt.need("extra", "map_size"))
        self.layout = self.ckpt.extra.get("layout", "image")
        self.codec = None
        if decoder and self.layout == "time":
            raise PipelineError(f"'{ref}' is a prior over speech codes: sample it with `transmute run "
                                "sample-codes-speech`")
        if decoder and self.net.kind == "codes":
            from transmute_pixelcnn.codec import Codec

            code = self.ckpt.need("extra", "code_spec")
            self.codec = Codec(code["vqvae"], device)
            self.codec.check(code["codebook_id"])

    def label_tensor(self, labels):
        import torch

        return None if labels is None or not self.classes else torch.as_tensor(labels).to(self.device)

    def label_index(self, label: str) -> int:
        if label not in self.classes:
            raise PipelineError(f"class_name '{label}': the model '{self.ref}' knows "
                                f"{', '.join(self.classes) if self.classes else 'no classes (it is unconditional)'}")
        return self.classes.index(label)

    def maps(self, seeds, labels=None, temperature=1.0, top_k=0, top_p=1.0, cached=True, size=None):
        from transmute_pixelcnn.networks import generate

        return generate(self.net, size or self.size, list(seeds), self.label_tensor(labels), temperature, top_k, top_p,
                        cached, self.device)

    def images(self, seeds, labels=None, temperature=1.0, top_k=0, top_p=1.0):
        """(n, C, H, W) images in [-1, 1]: pixel samples, or code samples through the VQ-VAE's decoder."""
        from transmute_pixelcnn.task import as_images

        maps = self.maps(seeds, labels, temperature, top_k, top_p)
        return as_images(maps).cpu() if self.net.kind == "pixels" else self.codec.decode_images(maps)


class _Sample(Stage):
    consumes = None
    kind_needed = ""
    params = {
        "model": MODEL_PARAM,
        "temperature": Param(float, 1.0, "divides the logits: below 1 more typical samples, 0 the most likely "
                                         "value every time", min=0.0),
        "top_k": Param(int, 0, "draw from the k most likely values only (0: all)", min=0),
        "top_p": Param(float, 1.0, "draw from the fewest most likely values whose probability adds up to p "
                                   "(nucleus sampling; 1: all)", min=0.0, max=1.0),
        "class_name": Param(str, "", "a conditional model's class for every sample (e.g. \"3\"); '' cycles through "
                                "the classes, sample i getting class i mod their number"),
        "seed": Param(int, 0, "sample i of a run is drawn with seed (seed, i): the same at any batch size"),
        "cached": Param(bool, True, "the fast sampler (Ramachandran et al., 2017); false: the whole network "
                                    "over the whole map for every position (the same samples, far slower)"),
        "seconds": Param(float, 3.0, "a speech prior's samples last this long (an image code prior's maps "
                                     "have the size it learnt)", min=0.05),
    }

    def check(self, incoming):
        meta = model_meta(self.model)
        need_kind(meta, self.model, self.kind_needed, "pixelcnn.sample", "pixelcnn.sample_codes")
        if self.top_p <= 0:
            raise PipelineError("top_p must be above 0")
        classes = (meta.get("extra") or {}).get("classes") or []
        if self.class_name and self.class_name not in classes:
            raise PipelineError(f"class_name '{self.class_name}': the model '{self.model}' knows "
                                f"{', '.join(classes) if classes else 'no classes (it is unconditional)'}")
        return output_spec(meta)

    def setup(self, device) -> None:
        super().setup(device)
        self.sampler = Sampler(self.model, device, decoder=False)
        self.spec = output_spec(self.sampler.ckpt.metadata())

    def generate(self, count: int, names: list[str]):
        import torch

        s = self.sampler
        labels = None
        if s.classes:
            fixed = s.label_index(self.class_name) if self.class_name else None
            labels = [fixed if fixed is not None else item_seed(0, name) % len(s.classes) for name in names]
        seeds = [item_seed(self.seed, name) for name in names]
        if s.net.kind == "pixels":
            from transmute_pixelcnn.task import as_images

            maps = s.maps(seeds, labels, self.temperature, self.top_k, self.top_p, self.cached)
            return Images(as_images(maps), self.spec, list(names))
        if s.layout == "time":  # speech: rows are code positions in time; a Codes map has them across
            speech = s.ckpt.need("extra", "speech")
            frames_per_row, hop = int(speech["frames_per_row"]), int(speech["hop_length"])
            rows = max(1, math.ceil(self.seconds * int(speech["sample_rate"]) / hop / frames_per_row))
            maps = s.maps(seeds, labels, self.temperature, self.top_k, self.top_p, self.cached,
                          size=(rows, s.size[1])).transpose(1, 2)
            n = len(names)
            return Codes(maps.to(torch.long).contiguous(), self.spec, list(names), [tuple(maps.shape[-2:])] * n,
                         [(rows * frames_per_row,)] * n, [rows * frames_per_row * hop] * n)
        maps = s.maps(seeds, labels, self.temperature, self.top_k, self.top_p, self.cached)
        source = tuple(int(n) for n in s.ckpt.need("extra", "source_size"))
        return Codes(maps.to(torch.long), self.spec, list(names), [s.size] * len(names), [source] * len(names))


class Sample(_Sample):
    """Draw new images from a PixelCNN over pixels (one sub-pixel at a time, R, G, B)."""

    name = "pixelcnn.sample"
    produces = Images
    params = dict({k: v for k, v in _Sample.params.items() if k != "seconds"},
                  model=Param(str, PIXELS_MODEL, MODEL_PARAM.help))
    kind_needed = "pixels"


class SampleCodes(_Sample):
    """Draw new VQ-VAE code maps from a PixelCNN over codes (then vqvae.decode_images or decode_spectrogram)."""

    name = "pixelcnn.sample_codes"
    produces = Codes
    kind_needed = "codes"


class _Score(Stage):
    kind_needed = ""
    params = {
        "model": MODEL_PARAM,
        "percentile": Param(float, 99.0, "flag inputs scoring above this percentile of the training set",
                            choices=PERCENTILES),
        "class_name": Param(str, "", "a conditional model scores every input as this class; '' by its likelihood "
                                "under any class (the mean of p(x | class) over the classes)"),
        "csv": Param(str, "scores.csv", "file (in the output folder) the scores are written to; '' for none"),
    }

    def check(self, incoming):
        meta = model_meta(self.model)
        need_kind(meta, self.model, self.kind_needed, "pixelcnn.score", "pixelcnn.score_codes")
        want = output_spec(meta)
        classes = (meta.get("extra") or {}).get("classes") or []
        if self.class_name and self.class_name not in classes:
            raise PipelineError(f"class_name '{self.class_name}': the model '{self.model}' knows "
                                f"{', '.join(classes) if classes else 'no classes (it is unconditional)'}")
        if isinstance(want, ImageSpec):
            if not isinstance(incoming, ImageSpec):
                raise PipelineError(f"the model '{self.model}' scores images, got {type(incoming).__name__}")
            # The model learnt opaque images: an alpha channel would be scored as another colour channel.
            self.require("mode", want.mode, incoming.mode,
                         f"the model '{self.model}' scores {want.mode} images; set mode = \"{want.mode}\" on the "
                         "images.load stage")
            self.require("value_range", (-1.0, 1.0), incoming.value_range,
                         "set value_range = [-1, 1] on the images.load stage")
        else:
            if not isinstance(incoming, CodeSpec):
                raise PipelineError(f"the model '{self.model}' scores VQ-VAE codes; encode the images first "
                                    f"(vqvae.encode with model = \"{json.dumps(meta['extra']['code_spec']['vqvae'])[1:-1]}\")")
            self.require("codebook_id", want.codebook_id, incoming.codebook_id,
                         "these codes come from another codebook than the one the prior learnt")
        return incoming

    def setup(self, device) -> None:
        super().setup(device)
        self.sampler = Sampler(self.model, device, decoder=False)
        calibration = self.sampler.ckpt.need("extra", "calibration")
        self.unit = calibration["unit"]
        self.threshold = float(calibration["percentiles"][f"{self.percentile:g}"])
        if self.class_name:  # scored given the class: compared with that class's items given their class
            self.sampler.label_index(self.class_name)
            per_class = calibration.get("per_class", {}).get(self.class_name)
            if per_class is None:
                raise PipelineError(f"the model '{self.model}' has no thresholds for class '{self.class_name}' "
                                    "(too few of its items, or an older model); leave class_name out")
            self.threshold = float(per_class[f"{self.percentile:g}"])
        column = "bits_per_dim" if self.unit == "bits/dim" else "nats_per_code"
        self.table = ScoreTable(self.output_dir, self.csv, ["name", column, "threshold", "unusual"])

    def scores(self, signal):
        """Each item's NLL in the model's unit."""
        import torch

        from transmute_pixelcnn.task import item_nll, score_of

        s, net = self.sampler, self.sampler.net
        if net.kind == "pixels":
            from transmute.imagedata import fit_levels

            size = s.size[0]
            x = fit_levels(signal.data, net.channels, size).long().to(self.device)
        elif s.layout == "time":  # any length, each item alone; the prior's rows are the map's columns
            maps = [signal.data[i, : h, : w].long().T[None].to(self.device) for i, (h, w) in enumerate(signal.sizes)]
            with torch.inference_mode():
                return torch.cat([score_of(net.kind, item_nll(net, m, self._labels(1))).cpu() for m in maps])
        else:
            x = signal.data.long().to(self.device)
            rows, cols = s.size
            if any(tuple(size) != (rows, cols) for size in signal.sizes):
                raise InputError(f"code maps of {signal.sizes[0][0]}x{signal.sizes[0][1]}, but the prior learnt "
                                 f"{rows}x{cols} maps")
        with torch.inference_mode():
            return score_of(net.kind, item_nll(net, x, self._labels(len(x)))).cpu()

    def _labels(self, count: int):
        import torch

        if not self.class_name:
            return None
        return torch.full((count,), self.sampler.label_index(self.class_name), device=self.device)

    def process(self, signal):
        scores = self.scores(signal)
        for name, value in zip(signal.names, scores.tolist()):
            self.table.record(name, [f"{value:.4f}"], value, self.threshold,
                              f"{value:.3f} {self.unit} is above {self.threshold:.3f}, the {self.percentile:g}th "
                              f"percentile of the training set of '{self.model}'")
        self.table.write()
        return signal


class Score(_Score):
    """Score images by a pixel PixelCNN's negative log-likelihood (bits per sub-pixel); flag those above the
    training set's percentile and write every score to a CSV in the output folder. Images pass through."""

    name = "pixelcnn.score"
    consumes = Images
    produces = Images
    params = dict(_Score.params, model=Param(str, PIXELS_MODEL, MODEL_PARAM.help))
    kind_needed = "pixels"


class ScoreCodes(_Score):
    """Score VQ-VAE code maps by a code PixelCNN's negative log-likelihood (nats per code); flag those above
    the training set's percentile and write every score to a CSV in the output folder. Codes pass through."""

    name = "pixelcnn.score_codes"
    consumes = Codes
    produces = Codes
    kind_needed = "codes"
