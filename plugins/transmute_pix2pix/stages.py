"""The translation stage: images -> images through a trained pix2pix generator."""

from __future__ import annotations

from transmute.signals import Images, ImageSpec
from transmute.stages import Param, Stage

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
    return net.eval().to(device), ckpt


class Translate(Stage):
    """Translate images with a pix2pix generator (A -> B as trained); any size, alpha carried through."""

    name = "pix2pix.translate"
    consumes = Images
    produces = Images
    params = {
        "model": Param(str, DEFAULT_MODEL, "a pix2pix checkpoint (RUN/model.safetensors) or a built-in model name"),
        "direction": Param(str, "AtoB", "pix2pix models translate one way: as trained", choices=("AtoB",)),
        "tile": Param(int, 0, "images larger than this many pixels a side go through in overlapping tiles "
                      "(0: the model's training size x 4)", min=0),
        "overlap": Param(int, 32, "pixels that neighbouring tiles share, blended", min=0),
        "background": Param(float, 1.0, "what transparent pixels are composited onto before translating "
                            "(1: white, 0: black in [0, 1]); the alpha itself is kept", min=0.0, max=1.0),
    }

    def check(self, incoming: ImageSpec) -> ImageSpec:
        self.require("value_range", (-1.0, 1.0), incoming.value_range,
                     "set value_range = [-1, 1] on the images.load stage")
        return ImageSpec("RGBA" if incoming.mode == "RGBA" else "RGB", (-1.0, 1.0))

    def setup(self, device) -> None:
        super().setup(device)
        self.net, ckpt = load_generator(self.model, device)
        self.crop = int(ckpt.need("hparams", "crop_size"))

    def process(self, signal: Images) -> Images:
        from transmute.imaging import apply_image_network

        return apply_image_network(signal, self.net, channels=3, multiple=self.net.multiple,
                                   tile=self.tile or 4 * self.crop, overlap=self.overlap,
                                   background=self.background, device=self.device)
