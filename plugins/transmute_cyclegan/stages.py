"""The translation stage: images -> images through one direction of a trained CycleGAN."""

from __future__ import annotations

from transmute.signals import Images, ImageSpec
from transmute.stages import Param, Stage

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
    return net.eval().to(device), ckpt


class Translate(Stage):
    """Translate images with a CycleGAN, A -> B or B -> A (both are in one model); any size, alpha carried."""

    name = "cyclegan.translate"
    consumes = Images
    produces = Images
    params = {
        "model": Param(str, DEFAULT_MODEL, "a CycleGAN checkpoint (RUN/model.safetensors) or a built-in model name"),
        "direction": Param(str, "AtoB", "AtoB: domain A -> B as trained (--data DIR/trainA -> trainB); BtoA: back",
                           choices=("AtoB", "BtoA")),
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
        self.net, ckpt = load_generator(self.model, self.direction, device)
        self.crop = int(ckpt.need("hparams", "crop_size"))

    def process(self, signal: Images) -> Images:
        from transmute.imaging import apply_image_network

        return apply_image_network(signal, self.net, channels=3, multiple=self.net.multiple,
                                   tile=self.tile or 4 * self.crop, overlap=self.overlap,
                                   background=self.background, device=self.device)
