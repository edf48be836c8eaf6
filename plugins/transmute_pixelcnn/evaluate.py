"""`transmute eval pixelcnn`: held-out bits per dimension (pixels) or nats per code (codes) against a
baseline, and the likelihood as an outlier score: the same AUROC table as `transmute eval vae`."""

from __future__ import annotations

import math
from pathlib import Path

import click

from transmute.outliers import eval_options, write_json


def _pick(count: int, limit: int):
    import torch

    return torch.linspace(0, count - 1, min(limit, count)).round().long().numpy() if limit else slice(None)


def evaluate(model: str, folders: list[Path], limit: int = 0, outliers: bool = True,
             emoji_folder: Path | None = None, progress=None) -> dict:
    import numpy as np
    import torch

    from transmute.imagedata import read_image_set
    from transmute.outliers import auroc, compressed_bits_per_dim, outlier_sets
    from transmute.errors import TransmuteError
    from transmute_pixelcnn.task import folder_labels, load_pixelcnn, nll_batches, unit

    say = progress or (lambda message: None)
    net, ckpt = load_pixelcnn(model)
    if ckpt.extra.get("layout") == "time":
        return evaluate_speech(net, ckpt, model, folders, limit, say)
    kind, classes = net.kind, list(ckpt.extra.get("classes") or [])
    rows, cols = (int(n) for n in ckpt.need("extra", "map_size"))
    if kind == "pixels":
        channels, size = net.channels, rows
    else:
        from transmute_pixelcnn.codec import Codec

        size = int(ckpt.need("extra", "source_size")[0])
        code = ckpt.need("extra", "code_spec")
        codec = Codec(code["vqvae"])
        codec.check(code["codebook_id"])
        channels = codec.channels
    data, problems = read_image_set(folders, channels, size)
    pick = _pick(len(data), limit)
    pixels = data.pixels[pick]
    names = list(np.asarray(data.names)[pick])

    def maps_of(images):
        """The model's input for uint8 images: the levels, or the VQ-VAE's codes of them."""
        if kind == "pixels":
            return torch.from_numpy(images.astype(np.int64))
        return codec.encode_images(images)

    def scores_of(images):
        nll = nll_batches(net, maps_of(images), None, "cpu")
        out = {"nll": nll}
        if kind == "pixels":  # Serra et al.'s input-complexity correction, as the VAE's table has it
            out["complexity"] = nll - compressed_bits_per_dim(torch.from_numpy(images).float().div(127.5).sub(1))
        return out

    say(f"{len(pixels)} held-out images ({unit(kind)})")
    held_out = scores_of(pixels)
    result = {"model": str(model), "kind": kind, "unit": unit(kind), "data": [str(f) for f in folders],
              "items": len(pixels), "problems": problems, "classes": classes,
              "nll": float(held_out["nll"].mean())}
    if classes:  # the likelihood given the true class too, where the folders name it
        try:
            labels, found = folder_labels(names, len(folders))
        except TransmuteError:  # images not in class folders: no conditional figure
            labels = None
        if labels is not None and set(found) <= set(classes):
            y = torch.tensor([classes.index(found[i]) for i in labels])
            result["nll_given_class"] = float(nll_batches(net, maps_of(pixels), y, "cpu").mean())
    if kind == "pixels":
        result["baseline"] = {"png": float(compressed_bits_per_dim(
            torch.from_numpy(pixels).float().div(127.5).sub(1)).mean())}
    else:
        result["baseline"] = code_baselines(maps_of(pixels), net.values)
    if not outliers:
        return result
    result["outliers"] = {}
    for what, array in outlier_sets(pixels, channels, size, emoji_folder).items():
        say(f"scoring {len(array)} {what}")
        scores = scores_of(array)
        result["outliers"][what] = {"items": len(array), "mean": {s: float(v.mean()) for s, v in scores.items()},
                                    "auroc": {s: auroc(held_out[s], v) for s, v in scores.items()}}
    return result


def code_baselines(codes, values: int) -> dict:
    """Nats per code of two baselines: uniform over the codebook, and the codes' own frequencies (a unigram
    model fit on the very codes it is scored on, so a little optimistic)."""
    import torch

    counts = torch.bincount(codes.flatten(), minlength=values).double()
    p = counts[counts > 0] / counts.sum()
    return {"uniform": math.log(values), "unigram_of_held_out": float(-(p * p.log()).sum())}


def evaluate_speech(net, ckpt, model: str, folders: list[Path], limit: int, say) -> dict:
    """A speech code prior on held-out recordings: nats per code over their whole code maps."""
    import torch

    from transmute.errors import TransmuteError
    from transmute_pixelcnn.codec import Codec
    from transmute_pixelcnn.task import encode_speech, nll_batches, recording_labels

    classes = list(ckpt.extra.get("classes") or [])
    code = ckpt.need("extra", "code_spec")
    codec = Codec(code["vqvae"])
    codec.check(code["codebook_id"])
    maps, skipped = encode_speech(codec, folders)
    names = sorted(maps)
    if limit:
        names = [names[i] for i in _pick(len(names), limit)]
    say(f"{len(names)} held-out recordings (nats/code)")
    tensors = [torch.from_numpy(maps[n].astype("int64"))[None] for n in names]
    weights = torch.tensor([t.numel() for t in tensors], dtype=torch.float64)
    nll = torch.cat([nll_batches(net, t, None, "cpu") for t in tensors]).double()
    result = {"model": str(model), "kind": "codes", "unit": "nats/code", "data": [str(f) for f in folders],
              "items": len(names), "problems": skipped, "classes": classes,
              "codes": int(weights.sum()), "nll": float((nll * weights).sum() / weights.sum()),
              "baseline": code_baselines(torch.cat([t.flatten() for t in tensors]), net.values)}
    if classes:
        try:
            labels, found = recording_labels(names, len(folders))
        except TransmuteError:  # recordings not in speaker folders: no conditional figure
            labels, found = None, []
        if labels is not None and set(found) <= set(classes):
            given = torch.cat([nll_batches(net, t, torch.tensor([classes.index(found[k])]), "cpu")
                               for t, k in zip(tensors, labels)]).double()
            result["nll_given_class"] = float((given * weights).sum() / weights.sum())
    return result


def table(result: dict) -> str:
    u = result["unit"]
    what = "recordings" if "codes" in result and isinstance(result.get("codes"), int) else "images"
    line = f"{result['model']}: {result['items']} held-out {what}, {result['nll']:.3f} {u}"
    if "nll_given_class" in result:
        line += f" ({result['nll_given_class']:.3f} given the class)"
    base = result["baseline"]
    if "png" in base:
        line += f"; lossless PNG of the same images: {base['png']:.3f} bits/dim"
    else:
        line += (f"; uniform over the codebook: {base['uniform']:.3f}, the held-out codes' own frequencies "
                 f"(a unigram model fit on the test set): {base['unigram_of_held_out']:.3f} nats/code")
    lines = [line]
    if result.get("outliers"):
        from transmute.outliers import auroc_table

        lines += auroc_table(result["outliers"], list(next(iter(result["outliers"].values()))["auroc"]))
    return "\n".join(lines)


@click.command("pixelcnn")
@click.option("--model", default=None, show_default="digits-codes-pixelcnn",
              help="A PixelCNN checkpoint or built-in name (digits-pixelcnn: the pixel model).")
@click.option("--data", "folders", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              required=True, help="Held-out images (e.g. data/digits/test), or speech for a speech code prior "
                                  "(e.g. data/festival/eval/kal); repeat for more. A code model scores their "
                                  "codes under its VQ-VAE.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="Score at most this many held-out images.")
@click.option("--no-outliers", is_flag=True, help="Only the held-out likelihood.")
@eval_options
def eval_command(model, folders, limit, no_outliers, emoji_folder, json_path):
    """Held-out negative log-likelihood (bits/dim for pixels, nats/code for codes) and outlier AUROC.

    A conditional model's figure is the likelihood under any class (the mean
    of p(x | class) over the classes), comparable with an unconditional
    model's; given the true class (from the class folders) it is printed too.
    Outliers (image priors): letters drawn as MNIST's digits were, emoji,
    uniform noise and the held-out images inverted, as many of each as
    held-out images.
    """
    from transmute_pixelcnn import DEFAULT_MODEL

    result = evaluate(model or DEFAULT_MODEL, list(folders), limit, not no_outliers, emoji_folder,
                      progress=lambda m: click.echo(m, err=True))
    click.echo(table(result))
    write_json(json_path, result)
