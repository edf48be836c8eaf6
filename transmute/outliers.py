"""Outlier test sets for likelihood models of small images, and the AUROC that scores a model on them.

A held-out set of the training domain is compared with inputs of other kinds:
letters rendered as MNIST's digits were, emoji, uniform noise and the held-out
images inverted. `transmute eval vae` and `transmute eval pixelcnn` print the
same table from these.
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("letters", "emoji", "noise", "inverted")
# The training set's score percentiles a model stores: the thresholds a scoring stage can flag above.
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.5, 99.9)
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


def compressed_bits_per_dim(x):
    """Each item's size as a PNG (zlib at level 9), in bits per sub-pixel: the input-complexity estimate
    of Serra et al. (2020)."""
    import io

    import torch
    from PIL import Image

    pixels = x.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    out = []
    for item in pixels:
        array = item[0].numpy() if item.shape[0] == 1 else item.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=9)
        out.append(8.0 * buffer.tell() / item.numel())
    return torch.tensor(out)


def percentiles(values) -> dict[str, float]:
    """{"99": value, ...}: the PERCENTILES of a 1-D tensor of scores, rounded to 5 decimals."""
    import torch

    q = torch.quantile(values.double(), torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.double))
    return {f"{p:g}": round(float(v), 5) for p, v in zip(PERCENTILES, q)}


def outlier_sets(pixels, channels: int, size: int, emoji_folder: Path | None = None) -> dict:
    """{kind: uint8 (n, channels, size, size)} with n = len(pixels): letters (grayscale models only), noise,
    the held-out `pixels` inverted, and emoji from emoji_folder (default: data/emoji-google-twitter, else the
    shipped examples/images; left out when neither is there)."""
    count = len(pixels)
    sets = {}
    if channels == 1:
        sets["letters"] = letters(count, size)
    folder = emoji_folder or next((f for f in EMOJI_DEFAULTS if f.is_dir()), None)
    if folder is not None:
        sets["emoji"] = emoji(folder, count, channels, size)
    sets["noise"] = noise(count, channels, size)
    sets["inverted"] = 255 - pixels
    return sets


def auroc_table(rows: dict, scores: list[str]) -> list[str]:
    """Lines of a table: one row per outlier kind ({kind: {"auroc": {score: value}}}), one column per score."""
    lines = [f"{'outlier AUROC':<16}" + "".join(f"{s:>12}" for s in scores)]
    for kind, entry in rows.items():
        lines.append(f"{kind:<16}" + "".join(f"{entry['auroc'][s]:>12.3f}" for s in scores))
    return lines


def eval_options(func):
    """The options an image likelihood model's `transmute eval` shares (click decorator): --emoji (the emoji
    outlier set's folder) and --json (the figures as JSON too, written with write_json)."""
    import click

    func = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Also write the figures as JSON.")(func)
    return click.option("--emoji", "emoji_folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
                        default=None, help="Emoji images for the outlier test (default: data/emoji-google-twitter, "
                                           "else the shipped examples/images).")(func)


def write_json(path: Path | None, result: dict) -> None:
    """An evaluation's figures as indented JSON, written atomically (nothing when path is None)."""
    import json

    from transmute.files import atomic_path

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
