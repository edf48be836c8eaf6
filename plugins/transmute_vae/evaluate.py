"""`transmute eval vae`: held-out bits per dimension, and how well each outlier score separates the held-out
set from inputs of other kinds (AUROC)."""

from __future__ import annotations

import json
from pathlib import Path

import click

KINDS = ("letters", "emoji", "noise", "inverted")
EMOJI_DEFAULTS = (Path("data/emoji-google-twitter"), Path("examples/images"))


def auroc(inliers, outliers) -> float:
    """Area under the ROC curve of a score that should be higher for outliers (ties count one half):
    the probability that a random outlier scores above a random inlier (Mann-Whitney U)."""
    import torch

    a, b = torch.as_tensor(inliers, dtype=torch.float64), torch.as_tensor(outliers, dtype=torch.float64)
    above = (b[:, None] > a[None, :]).double().sum() + 0.5 * (b[:, None] == a[None, :]).double().sum()
    return float(above / (len(a) * len(b)))


def letters(count: int, size: int, seed: int = 0):
    """Letters A-Z and a-z in Pillow's built-in font, prepared as MNIST's digits were (LeCun et al.): white
    on black, drawn large with strokes about as thick as a pen's, scaled to fit a 20 x 20 box (aspect kept,
    anti-aliased), and placed so the centre of mass is the centre of the 28 x 28 image. Thin, small glyphs
    would be easier to tell apart from digits for the wrong reason (less ink). (count, 1, size, size) uint8."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    font = ImageFont.load_default(size=96.0)
    box = round(size * 20 / 28)
    out = np.zeros((count, 1, size, size), dtype=np.uint8)
    for i in range(count):
        char = alphabet[rng.integers(len(alphabet))]
        canvas = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(canvas).text((30, 10), char, fill=255, font=font, stroke_width=int(rng.integers(0, 3)),
                                    stroke_fill=255)
        glyph = canvas.crop(canvas.getbbox())
        scale = box / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                             Image.LANCZOS)
        ink = np.asarray(glyph, dtype=np.float64)
        rows, cols = np.indices(ink.shape)
        cy, cx = (rows * ink).sum() / ink.sum(), (cols * ink).sum() / ink.sum()
        top = int(np.clip(round(size / 2 - cy), 0, size - glyph.height))
        left = int(np.clip(round(size / 2 - cx), 0, size - glyph.width))
        image = Image.new("L", (size, size), 0)
        image.paste(glyph, (left, top))
        out[i, 0] = np.asarray(image)
    return out


def emoji(folder: Path, count: int, channels: int, size: int):
    """Up to `count` emoji images from a folder, at the model's size and channels (on black, for digits)."""
    import numpy as np

    from transmute.imagedata import list_images, read_pixels

    from transmute.errors import TransmuteError

    files = list(list_images(folder).values())
    if not files:
        raise TransmuteError(f"{folder}: no images for the emoji outlier set")
    step = max(1, len(files) // count)
    return np.stack([read_pixels(f, channels, size, background=0 if channels == 1 else 255)
                     for f in files[::step][:count]])


def noise(count: int, channels: int, size: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (count, channels, size, size), dtype=np.uint8)


def evaluate(model: str, folders: list[Path], limit: int = 0, samples: int = 0, outliers: bool = True,
             emoji_folder: Path | None = None, progress=None) -> dict:
    import torch

    from transmute.errors import TransmuteError
    from transmute.imagedata import read_image_set
    from transmute_vae.stages import load_vae
    from transmute_vae.task import compressed_bits_per_dim, score_batches

    net, background, ckpt = load_vae(model, background=True)
    k = samples or int(ckpt.extra.get("calibration", {}).get("samples", 64))
    data, problems = read_image_set(folders, net.channels, net.size)
    pixels = data.pixels
    if limit:
        pixels = pixels[torch.linspace(0, len(pixels) - 1, min(limit, len(pixels))).round().long().numpy()]
    say = progress or (lambda message: None)
    say(f"{len(pixels)} held-out images, {k} importance samples")
    as_float = lambda p: torch.from_numpy(p).float().div(127.5).sub(1.0)  # noqa: E731
    held_out = score_batches(net, as_float(pixels), k, "cpu", background=background)
    names = list(held_out)
    result = {"model": str(model), "data": [str(f) for f in folders], "items": len(pixels), "samples": k,
              "beta": ckpt.hparams.get("beta"), "problems": problems,
              "bits_per_dim": {"elbo": float(held_out["elbo"].mean()), "iwae": float(held_out["iwae"].mean()),
                               "png": float(compressed_bits_per_dim(as_float(pixels)).mean())}}
    if not outliers:
        return result
    count = len(pixels)
    sets = {"letters": letters(count, net.size) if net.channels == 1 else None,
            "noise": noise(count, net.channels, net.size),
            "inverted": 255 - pixels}
    folder = emoji_folder or next((f for f in EMOJI_DEFAULTS if f.is_dir()), None)
    if folder is not None:
        sets["emoji"] = emoji(folder, count, net.channels, net.size)
    if sets["letters"] is None:
        del sets["letters"]
    result["outliers"] = {}
    for kind, array in sets.items():
        say(f"scoring {len(array)} {kind}")
        scores = score_batches(net, as_float(array), k, "cpu", background=background)
        result["outliers"][kind] = {
            "items": len(array),
            "mean": {s: float(scores[s].mean()) for s in names},
            "auroc": {s: auroc(held_out[s], scores[s]) for s in names}}
    if not result["outliers"]:
        raise TransmuteError("no outlier sets could be made")
    return result


def table(result: dict) -> str:
    lines = [f"{result['model']} (beta {result['beta']}): {result['items']} held-out images, bits/dim: "
             f"ELBO {result['bits_per_dim']['elbo']:.3f}, importance-weighted (K={result['samples']}) "
             f"{result['bits_per_dim']['iwae']:.3f} (lossless PNG of the same images: "
             f"{result['bits_per_dim']['png']:.3f})"]
    if "outliers" in result:
        names = list(next(iter(result["outliers"].values()))["auroc"])
        lines.append(f"{'outlier AUROC':<16}" + "".join(f"{s:>12}" for s in names))
        for kind, entry in result["outliers"].items():
            lines.append(f"{kind:<16}" + "".join(f"{entry['auroc'][s]:>12.3f}" for s in names))
    return "\n".join(lines)


@click.command("vae")
@click.option("--model", default="digits-vae", show_default=True, help="A VAE checkpoint or built-in name.")
@click.option("--data", "folders", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Held-out images (e.g. data/digits/test); repeat for more.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Score at most this many held-out images.")
@click.option("--samples", type=click.IntRange(min=0), default=0,
              help="Importance samples (0: as the model was calibrated).")
@click.option("--no-outliers", is_flag=True, help="Only the bits per dimension.")
@click.option("--emoji", "emoji_folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Emoji images for the outlier test (default: data/emoji-google-twitter, "
                                 "else the shipped examples/images).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON.")
def eval_vae_command(model, folders, limit, samples, no_outliers, emoji_folder, json_path):
    """Held-out bits/dim (ELBO and importance-weighted) and outlier AUROC for each score.

    Outliers: letters rendered from a font, emoji, uniform noise and the
    held-out images inverted, as many of each as held-out images. An AUROC of
    1 separates them perfectly; 0.5 is chance; below 0.5 the model finds the
    outliers *more* likely than its own kind (Nalisnick et al., 2019).
    """
    from transmute.files import atomic_path

    result = evaluate(model, list(folders), limit, samples, not no_outliers, emoji_folder,
                      progress=lambda m: click.echo(m, err=True))
    click.echo(table(result))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
