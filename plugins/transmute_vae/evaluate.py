"""`transmute eval vae`: held-out bits per dimension, and how well each outlier score separates the held-out
set from inputs of other kinds (AUROC)."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.outliers import eval_options, write_json


def evaluate(model: str, folders: list[Path], limit: int = 0, samples: int = 0, outliers: bool = True,
             emoji_folder: Path | None = None, progress=None) -> dict:
    import torch

    from transmute.errors import TransmuteError
    from transmute.imagedata import read_image_set
    from transmute.outliers import auroc, compressed_bits_per_dim, outlier_sets
    from transmute_vae.stages import load_vae
    from transmute_vae.task import score_batches

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
    sets = outlier_sets(pixels, net.channels, net.size, emoji_folder)
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
        from transmute.outliers import auroc_table

        lines += auroc_table(result["outliers"], list(next(iter(result["outliers"].values()))["auroc"]))
    return "\n".join(lines)


@click.command("vae")
@click.option("--model", default="digits-vae", show_default=True, help="A VAE checkpoint or built-in name.")
@click.option("--data", "folders", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Held-out images (e.g. data/digits/test); repeat for more.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Score at most this many held-out images.")
@click.option("--samples", type=click.IntRange(min=0), default=0,
              help="Importance samples (0: as the model was calibrated).")
@click.option("--no-outliers", is_flag=True, help="Only the bits per dimension.")
@eval_options
def eval_vae_command(model, folders, limit, samples, no_outliers, emoji_folder, json_path):
    """Held-out bits/dim (ELBO and importance-weighted) and outlier AUROC for each score.

    Outliers: letters rendered from a font, emoji, uniform noise and the
    held-out images inverted, as many of each as held-out images. An AUROC of
    1 separates them perfectly; 0.5 is chance; below 0.5 the model finds the
    outliers *more* likely than its own kind (Nalisnick et al., 2019).
    """

    result = evaluate(model, list(folders), limit, samples, not no_outliers, emoji_folder,
                      progress=lambda m: click.echo(m, err=True))
    click.echo(table(result))
    write_json(json_path, result)
