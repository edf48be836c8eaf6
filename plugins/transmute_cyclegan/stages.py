"""The translation stage: images -> images through one direction of a trained CycleGAN."""

from __future__ import annotations

from transmute.imaging import TRANSLATION_PARAMS, ImageTranslationStage
from transmute.stages import Param

from transmute_cyclegan import DEFAULT_MODEL

PLUGIN, MODEL, VERSION = "cyclegan", "generators", "1.0"


def load_generator(ref: str, direction: str, device="cpu"):
    """(ResNet generator of one direction in eval mode, checkpoint); a bad checkpoint is refused in one line."""
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute_cyclegan.networks import ResnetGenerator

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    net = ResnetGenerator(3, 3, int(ckpt.need("hparams", "width")), int(ckpt.need("hparams", "blocks")))
    load_weights(net, ckpt.tensors, ckpt.path, prefix=f"{direction}/", dtype=torch.float32)
    return net.eval().requires_grad_(False).to(device), ckpt


class Translate(ImageTranslationStage):
    """Translate images with a CycleGAN, A -> B or B -> A (both are in one model); any size, alpha carried."""

    name = "cyclegan.translate"
    params = {
        "model": Param(str, DEFAULT_MODEL, "a CycleGAN checkpoint (RUN/model.safetensors) or a built-in model name"),
        "direction": Param(str, "AtoB", "AtoB: domain A -> B as trained (--data DIR/trainA -> trainB); BtoA: back",
                           choices=("AtoB", "BtoA")),
        **TRANSLATION_PARAMS,
    }

    def load_network(self, device):
        net, ckpt = load_generator(self.model, self.direction, device)
        return net, int(ckpt.need("hparams", "crop_size"))
