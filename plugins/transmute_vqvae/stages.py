"""VQ-VAE stages: images or log-mels -> codes -> images or log-mels, and code files.

No vector_quantize_pytorch here: the codebook is a tensor of the checkpoint
and the lookup is networks.nearest_codes. Module level imports only
transmute's cheap modules.
"""

from __future__ import annotations

import json
from pathlib import Path

from transmute.errors import CheckpointError, InputError, PipelineError
from transmute.signals import Codes, CodeSpec, File, Images, ImageSpec, Spectrogram
from transmute.stages import Param, Stage

from transmute_vqvae import IMAGE_MODEL, SPEECH_MODEL

PLUGIN, MODEL, VERSION = "vqvae", "vqvae", "1.0"
MODEL_HELP = "a VQ-VAE checkpoint (RUN/model.safetensors) or a built-in model name (transmute models)"


def model_meta(ref: str) -> dict:
    """A VQ-VAE checkpoint's metadata (header only), or a PipelineError naming what is wrong."""
    from transmute.checkpoint import read_metadata, resolve_model
    from transmute.errors import TransmuteError

    try:
        path = resolve_model(ref)
        meta = read_metadata(path)
    except TransmuteError as exc:
        raise PipelineError(f"model: {exc}") from None
    if (meta.get("plugin"), meta.get("model")) != (PLUGIN, MODEL):
        raise PipelineError(f"model '{ref}' is a {meta.get('plugin')}/{meta.get('model')} checkpoint, "
                            f"not a {PLUGIN}/{MODEL}")
    if "codebook_id" not in (meta.get("extra") or {}):
        raise PipelineError(f"model '{ref}': metadata field 'extra.codebook_id' is missing; the checkpoint is damaged")
    return meta


def source_spec(meta: dict):
    from transmute.signals import spec_from_dict

    return spec_from_dict(meta["feature_spec"])


def code_spec(meta: dict) -> CodeSpec:
    return CodeSpec(codebook_size=int(meta["hparams"]["codebook_size"]), codebook_id=meta["extra"]["codebook_id"],
                    source=json.dumps(meta["feature_spec"], sort_keys=True))


def load_model(ref: str, device="cpu"):
    """(network in eval mode, [codebook tensor per level], checkpoint) of a VQ-VAE checkpoint or model name."""
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute_vqvae.networks import VQVAE

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    h = {k: int(ckpt.need("hparams", k)) for k in ("width", "res_blocks", "code_dim", "codebook_size",
                                                      "downsample", "groups", "channels", "levels")}
    kind = ckpt.need("hparams", "kind")
    net = VQVAE(h["channels"], h, 2 if kind == "images" else 1)
    load_weights(net, ckpt.tensors, ckpt.path, prefix="net/", dtype=torch.float32)
    codebooks = []
    for suffix in ("", "_top")[: net.levels]:
        codebook = ckpt.tensors.get(f"codebook{suffix}")
        if codebook is None or tuple(codebook.shape) != (h["codebook_size"], h["code_dim"]):
            raise CheckpointError(f"{ckpt.path}: tensor 'codebook{suffix}' is missing or not {h['codebook_size']} x "
                                  f"{h['code_dim']}; the checkpoint is damaged")
        codebooks.append(codebook.float().to(device))
    return net.eval().requires_grad_(False).to(device), codebooks, ckpt


class _ModelStage(Stage):
    """What the encode and decode stages share: the model's metadata at check time, the network at setup."""

    def meta(self) -> dict:
        return model_meta(self.model)

    def setup(self, device) -> None:
        super().setup(device)
        self.net, self.codebooks, ckpt = load_model(self.model, device)
        self.kind, self.h = ckpt.hparams["kind"], ckpt.hparams
        self.spec, self.codes_spec = ckpt.spec(), code_spec(ckpt.metadata())
        self.mel_shift, self.mel_scale = ckpt.extra.get("mel_shift", 0.0), ckpt.extra.get("mel_scale", 1.0)


class Encode(_ModelStage):
    """Images or log-mel spectrograms -> integer codes of a trained VQ-VAE's codebook."""

    name = "vqvae.encode"
    consumes = (Images, Spectrogram)
    produces = Codes
    params = {"model": Param(str, IMAGE_MODEL, MODEL_HELP)}

    def check(self, incoming):
        meta = self.meta()
        expected = source_spec(meta)
        if type(expected) is not type(incoming):
            what = "images" if isinstance(expected, ImageSpec) else "log-mel spectrograms"
            raise PipelineError(f"the model '{self.model}' encodes {what}, got {type(incoming).__name__}")
        hint = (f"load images with mode = \"{expected.mode}\" and value_range = {list(expected.value_range)}"
                if isinstance(expected, ImageSpec) else
                f"set spec_from = \"{self.model}\" on the audio.logmel stage")
        self.require_spec(expected, incoming, f"the model '{self.model}' was trained on other input; {hint}")
        return code_spec(meta)

    def process(self, signal):
        from transmute_vqvae.networks import encode, pad_to_multiple, silence

        multiple = self.net.multiple
        grids, sizes, sources = [], [], []
        for item in signal.items():  # one at a time: an item's codes never depend on its batch
            if isinstance(signal, Images):
                h, w = item.sizes[0]
                x = pad_to_multiple(item.data.float(), multiple, 2)
                sources.append((h, w))
            else:
                frames = item.lengths[0]
                floor = (silence(self.spec) + self.mel_shift) / self.mel_scale
                x = pad_to_multiple((item.data.float() + self.mel_shift) / self.mel_scale, multiple, 1, value=floor)
                sources.append((frames,))
            codes = encode(self.net, self.codebooks, x)
            grids.append(codes)
            sizes.append(tuple(int(n) for n in codes.shape[-2:]))
        data = grids[0] if len(grids) == 1 else _stack(grids)
        samples = signal.sample_lengths if isinstance(signal, Spectrogram) else None
        return Codes(data, self.codes_spec, list(signal.names), sizes, sources,
                     list(samples) if samples is not None else None)


def _stack(grids):
    from transmute.signals import Codes as _Codes

    return _Codes.collate([_Codes(g) for g in grids]).data


class _Decode(_ModelStage):
    consumes = Codes
    kind_needed = ""

    def check(self, incoming: CodeSpec):
        meta = self.meta()
        if meta["hparams"].get("kind") != self.kind_needed:
            other = "vqvae.decode_images" if meta["hparams"].get("kind") == "images" else "vqvae.decode_spectrogram"
            raise PipelineError(f"the model '{self.model}' decodes {meta['hparams'].get('kind')}; use {other}")
        expected = code_spec(meta)
        self.require("codebook_id", expected.codebook_id, incoming.codebook_id,
                     f"these codes were made with another codebook than the model '{self.model}' has; decode with "
                     "the model that encoded them")
        return source_spec(meta)

    def decoded(self, signal: Codes):
        """[(1, channels, [H,] W) network output, cropped to its source size] per item, in the input's units."""
        from transmute_vqvae.networks import decode

        if signal.spec.codebook_id != self.codes_spec.codebook_id:
            raise InputError(f"codes of codebook '{signal.spec.codebook_id}', but the model '{self.model}' has "
                             f"codebook '{self.codes_spec.codebook_id}'")
        out = []
        for i, item in enumerate(signal.items()):
            x = decode(self.net, self.codebooks, item.data.long())
            source = signal.source_sizes[i] if signal.source_sizes else None  # None: codes made elsewhere, uncropped
            if source:
                x = x[..., : source[-1]] if len(source) == 1 else x[..., : source[0], : source[1]]
            out.append(x)
        return out


class DecodeImages(_Decode):
    """Codes -> images with a trained image VQ-VAE (the model that encoded them)."""

    name = "vqvae.decode_images"
    produces = Images
    params = {"model": Param(str, IMAGE_MODEL, MODEL_HELP)}
    kind_needed = "images"

    def process(self, signal: Codes) -> Images:
        items = [Images(x.clamp(-1, 1), self.spec, [name]) for x, name in zip(self.decoded(signal), signal.names)]
        return Images.collate(items)


class DecodeSpectrogram(_Decode):
    """Codes -> log-mel spectrograms with a trained speech VQ-VAE, each at the length it was encoded from."""

    name = "vqvae.decode_spectrogram"
    produces = Spectrogram
    params = {"model": Param(str, SPEECH_MODEL, MODEL_HELP)}
    kind_needed = "speech"

    def process(self, signal: Codes) -> Spectrogram:
        items = []
        for i, (x, name) in enumerate(zip(self.decoded(signal), signal.names)):
            mel = x * self.mel_scale - self.mel_shift
            samples = [signal.sample_lengths[i]] if signal.sample_lengths else None
            items.append(Spectrogram(mel, self.spec, [name], [int(mel.shape[-1])], samples))
        return Spectrogram.collate(items)


class SaveCodes(Stage):
    """Write each item's codes to a .codes file (safetensors; format 'transmute-codes' v1, see the plugin README)."""

    name = "vqvae.save_codes"
    consumes = Codes
    produces = File
    params = {}

    def suffix(self) -> str:
        return ".codes"

    def save(self, item: Codes, path: Path) -> None:
        from transmute_vqvae.codefile import write_codes

        rows, width = item.sizes[0]
        source = item.source_sizes[0] if item.source_sizes else None
        write_codes(path, item.data[0, :rows, :width], {
            "codebook_id": item.spec.codebook_id, "codebook_size": item.spec.codebook_size,
            "source": json.loads(item.spec.source) if item.spec.source else None,
            "source_size": list(source) if source else None,
            "sample_length": item.sample_lengths[0] if item.sample_lengths else None})


class LoadCodes(Stage):
    """Read .codes files written by vqvae.save_codes; codes of another codebook than the model's are refused."""

    name = "vqvae.load_codes"
    consumes = File
    produces = Codes
    extensions = ("codes",)
    params = {"model": Param(str, IMAGE_MODEL, "the model that will decode the codes (its codebook is checked "
                                               "against each file's): " + MODEL_HELP)}

    def check(self, incoming):
        self.expected = code_spec(model_meta(self.model))
        return self.expected

    def load(self, path: Path) -> Codes:
        from transmute_vqvae.codefile import read_codes

        codes, meta = read_codes(path)
        expected = getattr(self, "expected", None) or self.check(None)
        if meta["codebook_id"] != expected.codebook_id:
            raise InputError(f"codes of codebook '{meta['codebook_id']}', but the model '{self.model}' has codebook "
                             f"'{expected.codebook_id}'; decode with the model that encoded them")
        source = meta.get("source_size")
        sample = meta.get("sample_length")
        return Codes(codes[None], expected, [path.stem], [tuple(codes.shape)],
                     [tuple(int(n) for n in source)] if source else None, [int(sample)] if sample else None)
