"""The VQ-VAE a code prior learns, reached as a third-party plugin would reach it: through its stages by name
(vqvae.encode, vqvae.decode_images, vqvae.decode_spectrogram, and audio.logmel for speech), built with the
engine's pipeline builder and run in memory. The codes a prior trains on are then exactly the codes the
vqvae pipelines make, and this plugin imports nothing of another plugin."""

from __future__ import annotations

import math
from pathlib import Path

from transmute.errors import PipelineError, TransmuteError


def vqvae_metadata(ref: str) -> dict:
    """A VQ-VAE checkpoint's metadata, or a TransmuteError naming what is wrong with the reference."""
    from transmute.checkpoint import read_metadata, resolve_model

    meta = read_metadata(resolve_model(ref))
    if meta.get("plugin") != "vqvae":
        raise TransmuteError(f"{ref}: not a VQ-VAE (made by plugin '{meta.get('plugin')}'); --codes-from takes a "
                             "model of `transmute train vqvae`")
    if int(meta["hparams"].get("levels", 1)) != 1:
        raise TransmuteError(f"{ref}: a two-level VQ-VAE; a prior learns the codes of a one-level model")
    return meta


def stable_ref(ref: str) -> str:
    """What a prior stores to find its VQ-VAE again: a built-in name as it is, a file as an absolute path."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.suffix == ".safetensors" or path.exists() else ref


def _chain(stages: list[dict]):
    from transmute.pipeline import build_from_dict

    return build_from_dict({"pipeline": {"description": "in-memory VQ-VAE chain"}, "stage": stages},
                           source="pixelcnn's VQ-VAE chain")


class Codec:
    """A VQ-VAE's encoder and decoder as stages: images or waveforms -> code maps -> images or log-mels."""

    def __init__(self, ref: str, device="cpu"):
        self.ref, self.device = ref, device
        self.meta = vqvae_metadata(ref)
        h = self.meta["hparams"]
        self.kind = h["kind"]
        if self.kind == "images":
            self.channels, self.size = int(h["channels"]), int(h["size"])
            mode = "L" if self.channels == 1 else "RGB"
            encode = _chain([{"use": "images.load", "mode": mode, "value_range": [-1, 1]},
                             {"use": "vqvae.encode", "model": ref}, {"use": "vqvae.save_codes"}])
            self.image_spec = encode.specs[0]
            self.features = None
        else:
            spec = self.meta["feature_spec"]
            encode = _chain([{"use": "audio.load", "sample_rate": int(spec["sample_rate"])},
                             {"use": "audio.logmel", "spec_from": ref}, {"use": "vqvae.encode", "model": ref},
                             {"use": "vqvae.save_codes"}])
            self.sample_rate, self.hop_length = int(spec["sample_rate"]), int(spec["hop_length"])
            self.frames_per_row = int(h["downsample"])
            self.features = encode.stages[1]
            self.waveform_spec = encode.specs[0]
        self.encoder = encode.stages[-2]
        self.code_spec = encode.specs[-2]
        decoder = "vqvae.decode_images" if self.kind == "images" else "vqvae.decode_spectrogram"
        saver = [{"use": "images.save"}] if self.kind == "images" else [
            {"use": "audio.mel_to_linear"}, {"use": "audio.griffinlim"}, {"use": "audio.save"}]
        decode = _chain([{"use": "vqvae.load_codes", "model": ref}, {"use": decoder, "model": ref}, *saver])
        self.decoder = decode.stages[1]
        for stage in (self.features, self.encoder, self.decoder):
            if stage is not None:
                stage.setup(device)

    def check(self, codebook_id: str) -> None:
        """Refuse a VQ-VAE whose codebook is not the one a prior learnt (retrained since, or another model)."""
        if self.code_spec.codebook_id != codebook_id:
            raise PipelineError(f"the VQ-VAE '{self.ref}' has codebook '{self.code_spec.codebook_id}', but the prior "
                                f"learnt the codes of codebook '{codebook_id}' (the VQ-VAE was retrained, or it is "
                                "another model)")

    # ------------------------------------------------------------------ images

    def encode_images(self, pixels, batch: int = 256):
        """uint8 (n, C, S, S) -> int64 (n, h, w) code maps."""
        import numpy as np
        import torch

        from transmute.signals import Images

        out = []
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch])).float().div(127.5).sub(1.0)
                names = [str(k) for k in range(len(x))]
                out.append(self.encoder.process(Images(x.to(self.device), self.image_spec, names)).data.cpu())
        return torch.cat(out).long()

    def decode_images(self, codes):
        """(n, h, w) code maps -> (n, C, S, S) images in [-1, 1]."""
        import torch

        from transmute.signals import Codes

        names = [str(k) for k in range(len(codes))]
        source = [(self.size, self.size)] * len(codes)
        with torch.inference_mode():
            signal = Codes(codes.long().to(self.device), self.code_spec, names, [tuple(codes.shape[-2:])] * len(codes),
                           source)
            return self.decoder.process(signal).data.float().cpu()

    # ------------------------------------------------------------------ speech

    def encode_audio(self, samples):
        """Mono float32 samples at the VQ-VAE's rate -> int64 (groups, positions) codes, as vqvae.encode makes
        them from audio.logmel's features."""
        import torch

        from transmute.signals import Waveform

        wave = Waveform(torch.from_numpy(samples)[None, None].to(self.device), self.waveform_spec, ["item"],
                        [len(samples)])
        with torch.inference_mode():
            return self.encoder.process(self.features.process(wave)).data[0].cpu().long()

    def decode_mels(self, codes):
        """(n, groups, positions) code maps -> [(n_mels, frames) log-mels]."""
        import torch

        from transmute.signals import Codes

        n, positions = len(codes), int(codes.shape[-1])
        frames = positions * self.frames_per_row
        with torch.inference_mode():
            signal = Codes(codes.long().to(self.device), self.code_spec, [str(k) for k in range(n)],
                           [tuple(codes.shape[-2:])] * n, [(frames,)] * n, [frames * self.hop_length] * n)
            mels = self.decoder.process(signal)
        return [mels.data[i, :, : mels.lengths[i]].float().cpu() for i in range(n)]

    def rows_for(self, seconds: float) -> int:
        """Code positions of `seconds` of speech."""
        return max(1, math.ceil(seconds * self.sample_rate / self.hop_length / self.frames_per_row))
