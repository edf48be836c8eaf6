"""Training a VAE on small images, in the engine's loop; scoring inputs; the export with its calibration."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from transmute.checkpoint import Checkpoint
from transmute.errors import TransmuteError
from transmute.imagedata import ImageSet
from transmute.outliers import compressed_bits_per_dim, percentiles
from transmute.signals import ImageSpec
from transmute.training import Context, Task, require_hparam

from transmute_vae.networks import PRESETS, VAE, bits_per_dim, count_parameters, dims, elbo_terms, iwae_nll

PLUGIN, MODEL, VERSION = "vae", "vae", "1.0"
SCORES = ("elbo", "iwae", "complexity", "ratio")  # ratio: models with a background model
CALIBRATION_ITEMS = 1000
SAMPLES = 8  # images in each sample grid


def validate_hparams(h: dict) -> None:
    need = require_hparam
    for key in ("latent_dim", "width", "steps", "batch_size", "iw_samples"):
        need(isinstance(h[key], int) and h[key] >= 1, f"{key} must be a whole number of at least 1, got {h[key]!r}")
    need(h["beta"] >= 0, f"beta must be at least 0 (1: the plain VAE, above 1: beta-VAE), got {h['beta']!r}")
    need(0 < h["lr"] < 1, f"lr must be a learning rate between 0 and 1, got {h['lr']!r}")
    need(h["warmup"] >= 0, f"warmup must be at least 0 steps, got {h['warmup']!r}")
    need(0 <= h["background"] < 1, f"background must be a share of pixels from 0 (no background model) to below 1, "
                                   f"got {h['background']!r}")
    need(isinstance(h["shift"], int) and h["shift"] >= 0,
         f"shift must be a whole number of pixels, at least 0, got {h['shift']!r}")


def item_noise(seeds: list[int], samples: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal draws for scoring, from one generator per item: (4, n, dim) for the ELBO's
    reconstruction term and (samples, n, dim) for the importance-weighted bound. An item's scores then
    depend on its seed alone, not on its batch or its place in it."""
    rec, iw = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        rec.append(torch.randn(4, dim, generator=generator))
        iw.append(torch.randn(samples, dim, generator=generator))
    return torch.stack(rec, 1), torch.stack(iw, 1)


@torch.no_grad()
def outlier_scores(net: VAE, x: torch.Tensor, samples: int, seeds: list[int], background: VAE | None = None
                   ) -> dict[str, torch.Tensor]:
    """Per item, in bits per sub-pixel (higher: more unusual), item i's draws seeded with seeds[i]:
    - elbo: the negative ELBO (KL in closed form, reconstruction over 4 draws);
    - iwae: the importance-weighted bound with `samples` draws;
    - complexity: iwae minus the input's PNG size (Serra et al., 2020: likelihoods favour simple inputs;
      subtracting how simple they are corrects it);
    - ratio (with a background model): iwae minus the background model's iwae, with the same draws, a
      likelihood ratio (Ren et al., 2019): what the background model also explains (ink, smoothness)
      cancels, and what is left is how well the input fits what the data set means."""
    from transmute_vae.networks import gaussian_kl

    rec_eps, iw_eps = item_noise(seeds, samples, net.latent_dim)
    rec = torch.stack([elbo_terms(net, x, e)[0] for e in rec_eps]).mean(0)
    mu, logvar = net.encode(x)
    elbo = bits_per_dim(rec + gaussian_kl(mu, logvar), x).cpu()
    iwae = bits_per_dim(iwae_nll(net, x, iw_eps), x).cpu()
    scores = {"elbo": elbo, "iwae": iwae, "complexity": iwae - compressed_bits_per_dim(x)}
    if background is not None:
        scores["ratio"] = iwae - bits_per_dim(iwae_nll(background, x, iw_eps), x).cpu()
    return scores


def score_batches(net: VAE, images: torch.Tensor, samples: int, device, batch: int = 64, seed: int = 0,
                  background: VAE | None = None):
    """outlier_scores over many images, a batch at a time; image i's draws are seeded with seed + i."""
    parts = [outlier_scores(net, images[i : i + batch].to(device), samples,
                            [seed + j for j in range(i, min(i + batch, len(images)))], background)
             for i in range(0, len(images), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def mutate(x: torch.Tensor, share: float) -> torch.Tensor:
    """x with about `share` of its pixels (all channels of each) replaced by random 8-bit levels: what the
    background model learns from (Ren et al., 2019). The low-level statistics stay, the meaning goes."""
    hit = torch.rand((x.shape[0], 1, *x.shape[2:]), device=x.device) < share
    noise = torch.randint(0, 256, x.shape, device=x.device).float() / 127.5 - 1.0
    return torch.where(hit, noise, x)


class VAETask(Task):
    plugin = PLUGIN
    model = MODEL
    version = VERSION

    def __init__(self, data: ImageSet, preset: str = "small", overrides: dict | None = None, name: str = ""):
        if preset not in PRESETS:
            raise TransmuteError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        self.preset, self.h = preset, dict(PRESETS[preset], **(overrides or {}))
        validate_hparams(self.h)
        self.images, self.name = data, name
        _, self.channels, self.size, _ = data.pixels.shape
        if self.size % 4:
            raise TransmuteError(f"the images are {self.size} px; the VAE needs a multiple of 4 (give --size)")

    def hparams(self) -> dict:
        settings = {k: v for k, v in self.h.items() if k not in ("steps", "checkpoint_every", "sample_every")}
        return {"preset": self.preset, **settings, "channels": self.channels, "size": self.size}

    def setup(self, ctx: Context) -> None:
        h = self.h
        self.ctx = ctx
        self.nets = {"vae": VAE(self.channels, self.size, h["latent_dim"], h["width"]).to(ctx.device)}
        if h["background"]:
            self.nets["background"] = VAE(self.channels, self.size, h["latent_dim"], h["width"]).to(ctx.device)
        self.net = self.nets["vae"]
        self.run = {name: ctx.wrap(net) for name, net in self.nets.items()}
        self.opt = {name: torch.optim.Adam(net.parameters(), lr=h["lr"]) for name, net in self.nets.items()}
        steps = h["steps"]
        self.sched = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.95 + 0.05)
            for name, opt in self.opt.items()}
        self.sample_x = self.images.tensor(range(0, len(self.images), max(1, len(self.images) // SAMPLES))[:SAMPLES])
        self.steps_done = 0
        self.sample_z = torch.randn(SAMPLES, h["latent_dim"], generator=torch.Generator().manual_seed(1))

    def modules(self):
        return self.nets

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self) -> ImageSet:
        return ImageSet(self.images.names, self.images.pixels, shift=self.h["shift"])

    def train_step(self, batch, step: int, ctx: Context) -> dict:
        self.steps_done = step + 1
        x = batch.to(ctx.device, non_blocking=True)
        # The KL's weight rises from 0 to beta over the warm-up (Bowman et al., 2016), so the decoder learns
        # to use z before the prior pulls q(z|x) onto it; the logged ELBO always counts the whole KL.
        warm = min(1.0, (step + 1) / self.h["warmup"]) if self.h["warmup"] else 1.0
        scale = 1.0 / (dims(x) * math.log(2))
        out = {}
        for name, inputs, beta in (("vae", x, self.h["beta"]), ("background", None, 1.0)):
            if name not in self.nets:
                continue
            if inputs is None:
                inputs = mutate(x, self.h["background"])
            with ctx.autocast():
                rec, kl = self.run[name](inputs)
            rec, kl = rec.float(), kl.float()
            loss = (rec + beta * warm * kl).mean() / dims(x)
            self.opt[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.nets[name].parameters(), 100.0)
            self.opt[name].step()
            rec_bpd, kl_bpd = rec.detach().mean() * scale, kl.detach().mean() * scale
            if name == "vae":
                out.update(rec_bpd=rec_bpd, kl_bpd=kl_bpd, elbo_bpd=rec_bpd + kl_bpd)
            else:
                out["background_elbo_bpd"] = rec_bpd + kl_bpd
        return out

    def write_samples(self, step: int, folder: Path) -> None:
        from transmute.viz import sheet_png as grid

        net = self.net.eval()
        with torch.no_grad():
            x = self.sample_x.to(self.ctx.device)
            mu, _ = net.encode(x)
            rows = [list(x.cpu()), list(net.decode_image(mu).cpu()),
                    list(net.decode_image(self.sample_z.to(self.ctx.device)).cpu())]
        net.train()
        folder.mkdir(parents=True, exist_ok=True)
        grid(rows, folder / f"step{step:07d}.png", row_titles=["input", "reconstruction", "prior sample"])

    def calibration(self) -> dict:
        """Percentiles of each outlier score over (up to 1000 of) the training images: the thresholds."""
        net, background = self.net.eval(), self.nets.get("background")
        if background is not None:
            background.eval()
        # Scoring 1000 images with 64 importance samples takes about 2 minutes on a CPU core: the final model
        # gets that; an intermediate checkpoint's thresholds come from 100 images, which is enough to use it.
        final = self.steps_done >= self.h["steps"]
        items = min(CALIBRATION_ITEMS if final else CALIBRATION_ITEMS // 10, len(self.images))
        pick = torch.linspace(0, len(self.images) - 1, items).round().long()
        x = self.images.tensor(pick.tolist())
        scores = score_batches(net, x, self.h["iw_samples"], self.ctx.device, background=background)
        with torch.no_grad():
            mu = torch.cat([net.encode(x[i : i + 256].to(self.ctx.device))[0].cpu() for i in range(0, len(x), 256)])
        for module in self.nets.values():
            module.train()
        # How much each latent's mean varies over the data: ~0 for a latent the encoder does not use.
        return {"samples": self.h["iw_samples"], "items": len(pick),
                "percentiles": {k: percentiles(v) for k, v in scores.items()},
                "latent_std": [round(float(v), 4) for v in mu.std(0)]}

    def export(self) -> Checkpoint:
        tensors = {f"{name}/{k}": v.detach().float().cpu() for name, net in self.nets.items()
                   for k, v in net.state_dict().items()}
        return Checkpoint(
            tensors=tensors, plugin=PLUGIN, model=MODEL, version=VERSION,
            hparams={"channels": self.channels, "size": self.size, "latent_dim": self.h["latent_dim"],
                     "width": self.h["width"], "beta": self.h["beta"], "preset": self.preset,
                     "background": self.h["background"]},
            feature_spec=ImageSpec("L" if self.channels == 1 else "RGB", (-1.0, 1.0)),
            extra={"calibration": self.calibration(), "trained_on": self.name},
        )

    def describe_size(self) -> str:
        extra = " (and as many in the background model)" if "background" in self.nets else ""
        return f"{count_parameters(self.net) / 1e6:.2f}M parameters{extra}, {self.h['latent_dim']} latent dimensions"
