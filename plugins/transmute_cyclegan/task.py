"""Training CycleGAN on two unpaired image domains, in the engine's loop."""

from __future__ import annotations

from pathlib import Path

import torch

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.gan import CycleObjective, HistoryBuffer, PatchDiscriminator, init_weights, linear_decay, patch_layers
from transmute.imagedata import Augment, UnpairedImages, spread
from transmute.signals import ImageSpec
from transmute.training import Context, Task

from transmute_cyclegan.networks import PRESETS, ResnetGenerator, blocks_for, count_parameters

PLUGIN = "cyclegan"
MODEL = "generators"
VERSION = "1.0"
SPEC = ImageSpec("RGB", (-1.0, 1.0))
SAMPLES = 3  # images of each domain in a sample grid


def validate_hparams(h: dict) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise TransmuteError(f"--hparam {message}")

    for key in ("width", "disc_width", "steps", "batch_size", "crop_size"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    need(h["crop_size"] % 4 == 0 and h["crop_size"] >= 16,
         f"crop_size must be a multiple of 4 of at least 16, got {h['crop_size']}")
    need(isinstance(h["blocks"], int) and h["blocks"] >= 0, f"blocks must be 0 (the paper's for the crop size) "
         f"or more, got {h['blocks']!r}")
    need(h["load_size"] == 0 or h["load_size"] >= h["crop_size"],
         f"load_size must be 0 (keep the size) or at least crop_size ({h['crop_size']}), got {h['load_size']}")
    need(0 < h["lr"] < 1, f"lr must be a learning rate between 0 and 1, got {h['lr']!r}")
    need(isinstance(h["pool_size"], int) and h["pool_size"] >= 0, f"pool_size must be 0 or more, got {h['pool_size']}")
    need(h["lambda_cycle"] >= 0 and h["lambda_identity"] >= 0 and h["decay_from"] >= 0,
         "lambda_cycle, lambda_identity and decay_from must be at least 0")


class CycleGANTask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, files: dict[str, list[Path]], preset: str = "small", overrides: dict | None = None,
                 labels: tuple[str, str] = ("A", "B"), roots: dict[str, Path] | None = None):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.preset, self.h = preset, dict(PRESETS[preset], **(overrides or {}))
        validate_hparams(self.h)
        self.files, self.labels, self.roots = files, labels, roots
        self.blocks = self.h["blocks"] or blocks_for(self.h["crop_size"])

    def hparams(self) -> dict:
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, **settings, "labels": list(self.labels)}

    def setup(self, ctx: Context) -> None:
        h, dev = self.h, ctx.device
        self.ctx = ctx
        layers, crop = patch_layers(h["crop_size"]), h["crop_size"]
        self.nets = {
            "g_ab": ResnetGenerator(3, 3, h["width"], self.blocks), "g_ba": ResnetGenerator(3, 3, h["width"], self.blocks),
            "d_a": PatchDiscriminator(3, h["disc_width"], layers), "d_b": PatchDiscriminator(3, h["disc_width"], layers),
        }
        for net in self.nets.values():
            init_weights(net)
        # Past translations shown to the discriminators; buffers, so checkpoints hold them.
        self.pools = {"pool_a": HistoryBuffer(h["pool_size"], (3, crop, crop)),
                      "pool_b": HistoryBuffer(h["pool_size"], (3, crop, crop))}
        for module in (*self.nets.values(), *self.pools.values()):
            module.to(dev)
        self.run = {name: ctx.wrap(net) for name, net in self.nets.items()}
        betas = (0.5, 0.999)
        self.opt = {
            "g": torch.optim.Adam([*self.nets["g_ab"].parameters(), *self.nets["g_ba"].parameters()], h["lr"],
                                  betas=betas),
            "d": torch.optim.Adam([*self.nets["d_a"].parameters(), *self.nets["d_b"].parameters()], h["lr"],
                                  betas=betas),
        }
        decay = linear_decay(h["steps"], h["decay_from"])
        self.sched = {name: torch.optim.lr_scheduler.LambdaLR(opt, decay) for name, opt in self.opt.items()}
        self.objective = CycleObjective(h["lambda_cycle"], h["lambda_identity"] * h["lambda_cycle"], "lsgan")
        centre = Augment(crop, crop, flip=False)
        from transmute.imagedata import read_rgb

        class _Middle:
            def integers(self, high):
                return (high - 1) // 2

        # Samples: the same few images every time, spread over the data set, centre-cropped, unflipped.
        self.sample_images = {key: torch.stack([centre([read_rgb(paths[i])], _Middle())[0]
                                                for i in spread(len(paths), SAMPLES)])
                              for key, paths in self.files.items()}

    def modules(self):
        return {**self.nets, **self.pools}

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> UnpairedImages:
        h = self.h
        return UnpairedImages(self.files, Augment(h["crop_size"], h["load_size"]), self.roots)

    def train_step(self, batch, step: int, ctx: Context) -> dict:
        run = self.run
        a, b = (batch[k].to(ctx.device, non_blocking=True) for k in ("a", "b"))
        self.opt["g"].zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_g, parts, outputs = self.objective.generators(run["g_ab"], run["g_ba"], run["d_a"], run["d_b"], a, b)
        loss_g.float().backward()
        self.opt["g"].step()
        self.opt["d"].zero_grad(set_to_none=True)
        with ctx.autocast():
            loss_d, d_parts = self.objective.discriminators(run["d_a"], run["d_b"], a, b, outputs,
                                                            pool_a=self.pools["pool_a"], pool_b=self.pools["pool_b"])
        loss_d.float().backward()
        self.opt["d"].step()
        return {k: v.detach() for k, v in {**parts, **d_parts}.items()}

    def translate(self, batch: torch.Tensor, net: str) -> torch.Tensor:
        module = self.nets[net]
        module.eval()
        with torch.no_grad():
            out = module(batch.to(self.ctx.device)).float().cpu()
        module.train()
        return out

    def write_samples(self, step: int, folder: Path) -> None:
        from transmute.imagedata import to_uint8
        from transmute.viz import image_grid_png

        rows = []
        for key, there, back in (("a", "g_ab", "g_ba"), ("b", "g_ba", "g_ab")):
            images = self.sample_images[key]
            out = self.translate(images, there)
            rows += [list(r) for r in zip(to_uint8(images), to_uint8(out), to_uint8(self.translate(out, back)))]
        folder.mkdir(parents=True, exist_ok=True)
        image_grid_png(rows, folder / f"step{step:07d}.png", titles=["input", "translated", "and back"])

    def export(self) -> Checkpoint:
        tensors = {}
        for direction, name in (("AtoB", "g_ab"), ("BtoA", "g_ba")):
            for key, value in self.nets[name].state_dict().items():
                tensors[f"{direction}/{key}"] = value.detach().to(torch.float16)  # half the file
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={"width": self.h["width"], "blocks": self.blocks, "crop_size": self.h["crop_size"],
                     "preset": self.preset},
            feature_spec=SPEC, extra={"domains": {"A": self.labels[0], "B": self.labels[1]}},
        )

    def describe_size(self) -> str:
        return (f"generators 2 x {count_parameters(self.nets['g_ab']) / 1e6:.2f}M parameters ({self.blocks} blocks), "
                f"discriminators 2 x {count_parameters(self.nets['d_a']) / 1e6:.2f}M")
