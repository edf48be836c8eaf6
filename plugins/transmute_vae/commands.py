"""Command-line entry points of the VAE plugin: training, and exploring a trained latent space."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options

FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
IMAGE_OR_FOLDER = click.Path(exists=True, path_type=Path)
MODEL_OPTION = click.option("--model", default=None, show_default="digits-vae",
                            help="A VAE checkpoint (RUN/model.safetensors) or a built-in model name.")


@click.command("vae")
@click.option("--data", "folders", type=FOLDER, multiple=True, required=True,
              help="A folder of images (searched recursively); repeat for more.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="1: grayscale (digits), 3: colour (emoji; transparency composited on white).")
@click.option("--size", type=click.IntRange(min=4), default=28, show_default=True,
              help="Images are resized to size x size (a multiple of 4).")
@click.option("--beta", type=click.FloatRange(min=0), default=None,
              help="Weight of the KL term: 1 is the plain VAE, above 1 the disentangling beta-VAE "
                   "(the same as --hparam beta=...).")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="small: 2 CPU cores, about 10 minutes on the digits; default: wider and longer, for a GPU; "
                   "tiny: tests.")
@training_options
def train_command(folders, channels, size, beta, preset, **options):
    """Train a VAE on small images (MNIST digits, 32 px emoji).

    The loss is the negative ELBO: reconstruction (a discretised logistic per
    8-bit sub-pixel, so it is in bits per dimension) + beta x the closed-form
    KL to N(0, I); both are logged in bits/dim. The run folder gets
    model.safetensors (with the training set's outlier-score percentiles),
    checkpoints/last.safetensors (--resume), samples/ (input, reconstruction,
    prior samples) and log.jsonl.
    """
    from transmute.errors import TransmuteError
    from transmute.imagedata import read_image_set
    from transmute.training import say, train
    from transmute_vae.networks import PRESETS
    from transmute_vae.task import VAETask, validate_hparams

    if size % 4:
        raise TransmuteError(f"--size {size}: the VAE halves the image twice; give a multiple of 4 (28, 32, ...)")
    if beta is not None:
        options["hparams"] = tuple(options.get("hparams", ())) + (f"beta={beta}",)
    config = config_from_options(options, PRESETS[preset])
    validate_hparams(config.hparams)
    data, problems = read_image_set(folders, int(channels), size)
    for problem in problems:
        say(f"warning: left out {problem}")
    say(f"{len(data)} training images from {', '.join(map(str, folders))}; preset {preset}, beta "
        f"{config.hparams['beta']:g}, {config.steps} steps")
    task = VAETask(data, preset, config.hparams, name=", ".join(str(f) for f in folders))
    model = train(task, config)
    say(f"VAE: {model} ({task.describe_size()})")


@click.group("vae")
def vae_group():
    """Explore a trained VAE: traverse, interpolate, latent arithmetic, debiasing weights.

    Encoding, decoding, sampling and outlier scores run as pipelines:
    `transmute run vae-reconstruct`, `vae-encode`, `vae-decode`, `vae-sample`, `vae-outliers`.
    """


def _model(model):
    from transmute_vae import DEFAULT_MODEL

    return model or DEFAULT_MODEL


def _images(paths, net, what: str):
    """The images of files and folders, at the model's size and channels: (n, C, S, S) and their names."""
    from transmute.errors import TransmuteError
    from transmute.imagedata import list_images, read_pixels

    import torch

    names, arrays = [], []
    for path in paths:
        files = list_images(path).items() if path.is_dir() else [(path.stem, path)]
        for name, file in files:
            arrays.append(torch.from_numpy(read_pixels(file, net.channels, net.size)))
            names.append(name)
        if path.is_dir() and not names:
            raise TransmuteError(f"{path}: no images in this folder ({what})")
    return torch.stack(arrays).float().div(127.5).sub(1.0), names


def _load(model):
    from transmute_vae.stages import load_vae

    return load_vae(_model(model))


@vae_group.command("traverse")
@MODEL_OPTION
@click.option("--input", "image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from this image's latent mean (default: the origin of the latent space).")
@click.option("--dims", default="active", show_default=True,
              help="Which latents, one row each: 'active' (those the model uses, most used first), 'all', "
                   "or numbers such as 0,3,5.")
@click.option("--steps", type=click.IntRange(min=2), default=9, show_default=True)
@click.option("--range", "span", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Each latent is swept from -range to +range prior standard deviations.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The PNG grid.")
def traverse_command(model, image, dims, steps, span, out):
    """Sweep one latent at a time while the others stay fixed: a PNG grid, one row per latent."""
    import torch

    from transmute.errors import TransmuteError
    from transmute.viz import sheet_png as grid

    net, ckpt = _load(model)
    activity = ckpt.extra.get("calibration", {}).get("latent_std") or [1.0] * net.latent_dim
    if dims == "all":
        chosen = list(range(net.latent_dim))
    elif dims == "active":
        # A latent the encoder does not use keeps q(z|x) at the prior: its means hardly vary over the data.
        chosen = sorted((i for i in range(net.latent_dim) if activity[i] > 0.1), key=lambda i: -activity[i])
        chosen = chosen or list(range(net.latent_dim))
    else:
        try:
            chosen = [int(d) for d in dims.split(",")]
        except ValueError:
            raise TransmuteError(f"--dims {dims!r}: expected 'active', 'all' or numbers such as 0,3,5") from None
        bad = [d for d in chosen if not 0 <= d < net.latent_dim]
        if bad:
            raise TransmuteError(f"--dims: latent {bad[0]} does not exist; the model has {net.latent_dim} "
                                 f"(0 to {net.latent_dim - 1})")
    with torch.no_grad():
        base = net.encode(_images([image], net, "--input")[0])[0][0] if image else torch.zeros(net.latent_dim)
        values = torch.linspace(-span, span, steps)
        rows = []
        for d in chosen:
            z = base.repeat(steps, 1)
            z[:, d] = values
            rows.append(net.decode_image(z))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, out, row_titles=[f"z{d} (sd {activity[d]:.2f})" for d in chosen],
         column_titles=[f"{v:+.1f}" for v in values.tolist()])
    click.echo(f"{out}: {len(chosen)} latents x {steps} values from {-span:g} to {span:g}")


@vae_group.command("interpolate")
@MODEL_OPTION
@click.argument("start", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("end", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The PNG strip.")
def interpolate_command(model, start, end, steps, out):
    """Decode evenly spaced points on the line between two images' latent means: a PNG strip (the two inputs
    at its ends)."""
    import torch

    from transmute.viz import sheet_png as grid

    net, _ = _load(model)
    x, _ = _images([start, end], net, "interpolation ends")
    with torch.no_grad():
        mu = net.encode(x)[0]
        t = torch.linspace(0, 1, steps)[:, None]
        path = net.decode_image((1 - t) * mu[0] + t * mu[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    grid([[x[0], *path, x[1]]], out, column_titles=[start.stem, *[f"{v:.2f}" for v in t[:, 0].tolist()], end.stem])
    click.echo(f"{out}: {steps} steps from {start} to {end}")


@vae_group.command("arithmetic")
@MODEL_OPTION
@click.argument("base", nargs=-1, required=True, type=IMAGE_OR_FOLDER)
@click.option("--minus", type=IMAGE_OR_FOLDER, multiple=True, help="An image or folder (its mean) to subtract.")
@click.option("--plus", type=IMAGE_OR_FOLDER, multiple=True, help="An image or folder (its mean) to add.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A PNG sheet: each base, the result, and the terms.")
def arithmetic_command(model, base, minus, plus, out):
    """Latent arithmetic: z(BASE) - mean z(MINUS) + mean z(PLUS), decoded, for each base image.

    A folder stands for the mean latent of its images, e.g. BASE=a thin 7,
    --minus thin-digits/ --plus thick-digits/ thickens the 7.
    """
    import torch

    from transmute.viz import sheet_png as grid

    net, _ = _load(model)
    with torch.no_grad():
        x, names = _images(list(base), net, "base")
        z = net.encode(x)[0]
        offset = torch.zeros(net.latent_dim)
        terms = []
        for sign, group in ((-1, minus), (1, plus)):
            for item in group:
                mean = net.encode(_images([item], net, "term")[0])[0].mean(0)
                offset += sign * mean
                terms.append(net.decode_image(mean[None])[0])
        result = net.decode_image(z + offset)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid([[a, b, *terms] for a, b in zip(x, result)], out,
         column_titles=["base", "result", *[f"-{p.name}" for p in minus], *[f"+{p.name}" for p in plus]])
    click.echo(f"{out}: {len(names)} result(s)")


@vae_group.command("weights")
@MODEL_OPTION
@click.argument("folders", nargs=-1, required=True, type=FOLDER)
@click.option("--density", type=click.Choice(["kde", "histogram"]), default="kde", show_default=True,
              help="kde: a kernel density in the joint latent space; histogram: DB-VAE's per-latent histograms "
                   "(product over latents; more extreme).")
@click.option("--bandwidth", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="kde: the kernel's width, in prior standard deviations.")
@click.option("--bins", type=click.IntRange(min=2), default=10, show_default=True,
              help="histogram: bins per latent.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Smoothing: the larger, the closer the weights stay to uniform (kde: a share of the mean "
                   "density; histogram: added to each bin's share).")
@click.option("--prefix", default="", help="Put this before every name, to match a trainer that names items "
                                          "by domain: 'a/' or 'b/' for a CycleGAN's trainA/ or trainB/.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV of name,weight for --sample-weights of any trainer.")
def weights_command(model, folders, density, bandwidth, bins, alpha, prefix, out):
    """Per-image sampling weights that favour what a data set under-represents (the DB-VAE idea, Amini et
    al., 2019).

    The density of the images' latent means is estimated (a kernel density in
    the latent space, or DB-VAE's histogram per latent); an image's weight is
    1 / (its density + alpha), so images in sparse regions of the latent space
    are drawn more often and over-represented kinds less. The
    names are those the trainers give the same folders (vae, vqvae; pix2pix
    for its trainA/ or --a folder; a CycleGAN domain with --prefix a/ or b/),
    so the CSV is ready for `transmute train ... --sample-weights CSV`.
    """
    import csv

    import torch

    from transmute.errors import TransmuteError
    from transmute.files import atomic_path
    from transmute.imagedata import read_image_set
    from transmute_vae.debias import debiasing_weights

    net, _ = _load(model)
    data, problems = read_image_set(folders, net.channels, net.size)
    for problem in problems:
        click.echo(f"warning: left out {problem}", err=True)
    with torch.no_grad():
        mu = torch.cat([net.encode(data.tensor(range(i, min(i + 256, len(data)))))[0]
                        for i in range(0, len(data), 256)])
    if len(data) < 2:
        raise TransmuteError(f"{', '.join(map(str, folders))}: {len(data)} image(s); weights need at least 2")
    weights = debiasing_weights(mu, density, bandwidth, alpha, bins)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "weight"])
        writer.writerows((prefix + n, f"{w:.6g}") for n, w in zip(data.names, weights.tolist()))
    ess = float(weights.sum() ** 2 / (weights ** 2).sum())
    top = torch.topk(weights, min(3, len(weights))).indices.tolist()
    click.echo(f"{out}: {len(weights)} weights (mean 1, from {float(weights.min()):.3g} to {float(weights.max()):.3g}; "
               f"effective sample size {ess:.0f} of {len(weights)}); most up-weighted: "
               f"{', '.join(data.names[i] for i in top)}")
