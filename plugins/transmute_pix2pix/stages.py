"""The translation stage: images -> images through a trained pix2pix generator."""

from __future__ import annotations

from transmute.imaging import TRANSLATION_PARAMS, ImageTranslationStage
from transmute.stages import Param

from transmute_pix2pix import DEFAULT_MODEL

PLUGIN, MODEL, VERSION = "pix2pix", "generator", "1.0"


def load_generator(ref: str, device="cpu"):
    """(U-Net in eval mode, checkpoint); a checkpoint missing a field or tensor is refused in one line."""
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute_pix2pix.networks import UNet

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    net = UNet(3, 3, int(ckpt.need("hparams", "width")), int(ckpt.need("hparams", "depth")), dropout=0.0)
    load_weights(net, ckpt.tensors, ckpt.path, dtype=torch.float32)
    return net.eval().requires_grad_(False).to(device), ckpt


class Translate(ImageTranslationStage):
    """Translate images with a pix2pix generator (A -> B as trained); any size, alpha carried through."""

    name = "pix2pix.translate"
    params = {
        "model": Param(str, DEFAULT_MODEL, "a pix2pix checkpoint (RUN/model.safetensors) or a built-in model name"),
        "direction": Param(str, "AtoB", "pix2pix models translate one way: as trained", choices=("AtoB",)),
        **TRANSLATION_PARAMS,
    }

    def load_network(self, device):
        net, ckpt = load_generator(self.model, device)
        return net, int(ckpt.need("hparams", "crop_size"))
