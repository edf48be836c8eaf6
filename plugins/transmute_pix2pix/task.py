"""Training pix2pix on paired images, in the engine's loop."""

from __future__ import annotations

from pathlib import Path

import torch

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.gan import PatchDiscriminator, adversarial_loss, discriminator_loss, init_weights, linear_decay, \
    patch_layers
from transmute.imagedata import Augment, Pair, PairedImages, spread
from transmute.signals import ImageSpec
from transmute.training import Context, Task

from transmute_pix2pix.networks import PRESETS, UNet, count_parameters, depth_for

PLUGIN = "pix2pix"
MODEL = "generator"
VERSION = "1.0"
SPEC = ImageSpec("RGB", (-1.0, 1.0))
SAMPLES = 4  # pairs shown in each sample grid


def validate_hparams(h: dict) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise TransmuteError(f"--hparam {message}")

    for key in ("width", "disc_width", "steps", "batch_size", "crop_size"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    need(h["crop_size"] >= 8 and h["crop_size"] & (h["crop_size"] - 1) == 0,
         f"crop_size must be a power of two of at least 8 (the U-Net halves it down to 1x1), got {h['crop_size']}")
    need(h["load_size"] == 0 or h["load_size"] >= h["crop_size"],
         f"load_size must be 0 (keep the size) or at least crop_size ({h['crop_size']}), got {h['load_size']}")
    need(0 < h["lr"] < 1, f"lr must be a learning rate between 0 and 1, got {h['lr']!r}")
    need(h["gan_loss"] in ("vanilla", "lsgan"), f"gan_loss must be 'vanilla' or 'lsgan', got {h['gan_loss']!r}")
    need(0 <= h["dropout"] < 1, f"dropout must be at least 0 and below 1, got {h['dropout']!r}")
    need(h["lambda_l1"] >= 0 and h["decay_from"] >= 0, "lambda_l1 and decay_from must be at least 0")


class Pix2PixTask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, pairs: list[Pair], preset: str = "small", overrides: dict | None = None,
                 direction: str = "AtoB", labels: tuple[str, str] = ("A", "B")):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.preset, self.h = preset, dict(PRESETS[preset], **(overrides or {}))
        validate_hparams(self.h)
        self.pairs, self.direction, self.labels = pairs, direction, labels
        self.depth = depth_for(self.h["crop_size"])

    def hparams(self) -> dict:
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, **settings, "direction": self.direction}

    def setup(self, ctx: Context) -> None:
        h, dev = self.h, ctx.device
        self.ctx = ctx
        self.nets = {"g": UNet(3, 3, h["width"], self.depth, h["dropout"]),
                     "d": PatchDiscriminator(6, h["disc_width"], patch_layers(h["crop_size"]), norm="instance")}
        for net in self.nets.values():
            init_weights(net)
            net.to(dev)
        self.run = {name: ctx.wrap(net) for name, net in self.nets.items()}
        self.opt = {name: torch.optim.Adam(net.parameters(), lr=h["lr"], betas=(0.5, 0.999))
                    for name, net in self.nets.items()}
        decay = linear_decay(h["steps"], h["decay_from"])
        self.sched = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.opt.items()}
        # Samples: the same few pairs every time, spread over the data set, centre-cropped, unflipped.
        data = self.data()
        augment = Augment(h["crop_size"], h["crop_size"], flip=False)
        self.sample_pairs = []
        for i in spread(len(self.pairs), SAMPLES):
            a, b = augment(list(data.read(i)), _Centre())
            self.sample_pairs.append((a, b))

    def modules(self):
        return self.nets

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> PairedImages:
        h = self.h
        return PairedImages(self.pairs, Augment(h["crop_size"], h["load_size"]), self.direction)

    def train_step(self, batch, step: int, ctx: Context) -> dict:
        run, kind = self.run, self.h["gan_loss"]
        a, b = (batch[k].to(ctx.device, non_blocking=True) for k in ("a", "b"))
        with ctx.autocast():
            fake = run["g"](a)
        # Discriminator: (input, target) is real, (input, output) is fake; it sees the input too (conditional GAN).
        self.opt["d"].zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_d = discriminator_loss(run["d"], torch.cat([a, b], 1), torch.cat([a, fake], 1).detach(), kind)
        loss_d.float().backward()
        self.opt["d"].step()
        # Generator: fool the discriminator, and stay near the target in L1 (weight 100).
        self.opt["g"].zero_grad(set_to_none=True)
        with ctx.autocast():
            adv = adversarial_loss(run["d"](torch.cat([a, fake], 1)), True, kind)
            l1 = (fake - b).abs().mean()
            loss_g = adv + self.h["lambda_l1"] * l1
        loss_g.float().backward()
        self.opt["g"].step()
        return {"g_adv": adv.detach(), "l1": l1.detach(), "d": loss_d.detach()}

    def translate(self, batch: torch.Tensor) -> torch.Tensor:
        net = self.nets["g"]
        net.eval()
        with torch.no_grad():
            out = net(batch.to(self.ctx.device)).float().cpu()
        net.train()
        return out

    def write_samples(self, step: int, folder: Path) -> None:
        from transmute.imagedata import to_uint8
        from transmute.viz import image_grid_png

        if not self.sample_pairs:
            return
        a = torch.stack([p[0] for p in self.sample_pairs])
        b = torch.stack([p[1] for p in self.sample_pairs])
        rows = zip(to_uint8(a), to_uint8(self.translate(a)), to_uint8(b))
        folder.mkdir(parents=True, exist_ok=True)
        image_grid_png([list(r) for r in rows], folder / f"step{step:07d}.png", titles=["input", "output", "target"])

    def export(self) -> Checkpoint:
        net = self.nets["g"]
        tensors = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}  # half the file
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={"width": self.h["width"], "depth": self.depth, "crop_size": self.h["crop_size"],
                     "preset": self.preset, "dropout": self.h["dropout"]},
            feature_spec=SPEC,
            extra={"direction": self.direction, "domains": {"input": self.labels[0], "output": self.labels[1]}},
        )

    def describe_size(self) -> str:
        return (f"generator {count_parameters(self.nets['g']) / 1e6:.2f}M parameters (depth {self.depth}), "
                f"discriminator {count_parameters(self.nets['d']) / 1e6:.2f}M")


class _Centre:
    """A stand-in generator for Augment that always picks the middle: sample grids show the same crop."""

    def integers(self, high):
        return (high - 1) // 2 if high > 1 else 0
