"""Command-line entry points of the PixelCNN plugin: training, and a sheet of samples."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options

FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("pixelcnn")
@click.option("--data", "folders", type=FOLDER, multiple=True, required=True,
              help="A folder of images, or of speech for a speech --codes-from model (searched recursively); "
                   "repeat for more. With --codes-from, the prior learns the VQ-VAE's codes of them.")
@click.option("--codes-from", "codes_from", default=None, metavar="VQVAE_MODEL",
              help="Learn a prior over this VQ-VAE's code maps (a checkpoint or a built-in name: digits-vqvae for "
                   "images, speech-vqvae for speech) instead of over pixels.")
@click.option("--conditional", is_flag=True,
              help="Condition on each item's class: with one --data folder, the sub-folder it lies in "
                   "(DATA/3/x.png is class '3'); with several, the --data folder (--data kal --data slt).")
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="Pixels: 1 (grayscale) or 3 (RGB, modelled R, then G, then B; transparency on white).")
@click.option("--size", type=click.IntRange(min=2), default=28, show_default=True,
              help="Images are resized to size x size.")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="small: 2 CPU cores (digits' codes about 10 minutes, pixels about 45); default: a GPU; "
                   "tiny: tests.")
@training_options
def train_command(folders, codes_from, conditional, channels, size, preset, **options):
    """Train a Gated PixelCNN prior over images (a 256-way softmax per sub-pixel) or over VQ-VAE codes.

    The loss is the negative log-likelihood, logged in bits per sub-pixel
    (pixels) or nats per code (codes). The run folder gets model.safetensors
    (with the training set's score percentiles, the outlier thresholds),
    checkpoints/last.safetensors (--resume), samples/ (a sheet of samples,
    one row per class when conditional) and log.jsonl.
    """
    from transmute.errors import TransmuteError
    from transmute.imagedata import read_image_set
    from transmute.training import say, train
    from transmute_pixelcnn.networks import preset_for
    from transmute_pixelcnn.task import Maps, PixelCNNTask, encode_images, folder_labels, validate_hparams

    vq = None
    if codes_from:
        from transmute_pixelcnn.codec import vqvae_metadata

        vq = vqvae_metadata(codes_from)["hparams"]
    speech = vq is not None and vq.get("kind") == "speech"
    config = config_from_options(options, preset_for(preset, "speech" if speech else
                                                     "codes" if codes_from else "pixels"))
    h = config.hparams
    validate_hparams(h)
    channels = int(channels)
    corpus = ", ".join(str(f) for f in folders)
    if speech:
        task = speech_task(codes_from, list(folders), conditional, preset, h, corpus)
    else:
        if vq is not None and (int(vq["channels"]) != channels or int(vq["size"]) != size):
            raise TransmuteError(f"{codes_from} encodes {vq['channels']}-channel {vq['size']} px images; give "
                                 f"--channels {vq['channels']} --size {vq['size']}")
        data, problems = read_image_set(list(folders), channels, size)
        for problem in problems:
            say(f"warning: left out {problem}")
        labels, classes = folder_labels(data.names, len(folders)) if conditional else (None, [])
        if vq is None:
            maps = Maps(data.names, data.pixels, labels, "pixels", shift=h["shift"])
            task = PixelCNNTask("pixels", maps, preset, h, channels=channels, classes=classes, corpus=corpus)
        else:
            from transmute_pixelcnn.codec import Codec

            codec = Codec(codes_from)
            say(f"encoding {len(data)} images with {codes_from} ({(2 * h['shift'] + 1) ** 2} shifts each) ...")
            codes = encode_images(codec, data.pixels, h["shift"])
            task = PixelCNNTask("codes", Maps(data.names, codes, labels, "codes"), preset, h,
                                codebook_size=codec.code_spec.codebook_size, classes=classes, corpus=corpus,
                                code_spec=code_spec_of(codec, codes_from), source_size=(size, size))
            task.codec = codec
    what = f"codes of {codes_from}" if codes_from else f"pixels ({channels} channel(s), {size}x{size})"
    classes = f", {len(task.classes)} classes ({', '.join(task.classes)})" if task.classes else ""
    say(f"{len(task.maps.names)} training {'recordings' if speech else 'images'} from {corpus}: {what}{classes}; "
        f"preset {preset}, {config.steps} steps")
    model = train(task, config)
    say(f"PixelCNN: {model} ({task.describe_size()})")


def code_spec_of(codec, ref: str) -> dict:
    """What a code prior stores of its VQ-VAE: the codes' spec, and where to find the model again."""
    from transmute_pixelcnn.codec import stable_ref

    spec = codec.code_spec
    return {"codebook_size": spec.codebook_size, "codebook_id": spec.codebook_id, "source": spec.source,
            "vqvae": stable_ref(ref)}


def speech_task(codes_from: str, folders: list, conditional: bool, preset: str, h: dict, corpus: str):
    """A prior over a speech VQ-VAE's codes: recordings as time-major code maps (a row per code position,
    its groups across), trained on runs of `segment` rows; classes (speakers) from the --data folders."""
    from transmute.errors import TransmuteError
    from transmute.training import say
    from transmute_pixelcnn.codec import Codec
    from transmute_pixelcnn.task import CodeSegments, PixelCNNTask, encode_speech, recording_labels

    codec = Codec(codes_from)
    say(f"encoding the speech in {corpus} with {codes_from} ...")
    maps, skipped = encode_speech(codec, folders)
    for reason in skipped:
        say(f"warning: left out {reason}")
    rows = h["segment"]
    short = [name for name, m in maps.items() if m.shape[0] < rows]
    if short:
        say(f"warning: left out {len(short)} recording(s) shorter than segment ({rows} code rows), e.g. {short[0]}")
    names = [name for name in maps if name not in short]
    if not names:
        raise TransmuteError(f"{corpus}: no recording is as long as segment ({rows} code rows); lower "
                             f"--hparam segment")
    labels, classes = recording_labels(names, len(folders)) if conditional else (None, [])
    speech = {"frames_per_row": codec.frames_per_row, "hop_length": codec.hop_length,
              "sample_rate": codec.sample_rate}
    task = PixelCNNTask("codes", CodeSegments(names, [maps[n] for n in names], labels, rows), preset, h,
                        codebook_size=codec.code_spec.codebook_size, classes=classes, corpus=corpus,
                        code_spec=code_spec_of(codec, codes_from), speech=speech)
    task.codec = codec
    return task


@click.group("pixelcnn")
def pixelcnn_group():
    """Sample from a trained PixelCNN prior.

    Sampling and scoring also run as pipelines: `transmute run pixelcnn-sample`,
    `sample-codes` (codes -> VQ-VAE decoder -> images), `pixelcnn-outliers`.
    """


@pixelcnn_group.command("grid")
@click.option("--model", default=None, show_default="digits-codes-pixelcnn",
              help="A PixelCNN checkpoint or built-in name.")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG to write.")
@click.option("--per-row", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=None,
              help="Rows (default: one per class for a conditional model, else 6).")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0: no limit.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
def grid_command(model, output, per_row, rows, temperature, top_k, top_p, seed, device):
    """A sheet of samples (PNG): one row per class of a conditional model, labelled."""
    import torch

    from transmute.errors import TransmuteError
    from transmute.stages import item_seed
    from transmute.viz import sheet_png
    from transmute_pixelcnn import DEFAULT_MODEL
    from transmute_pixelcnn.stages import Sampler

    if device == "cuda" and not torch.cuda.is_available():
        raise TransmuteError("--device cuda, but this torch sees no CUDA device; use --device cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Full fp32: TF32 matmuls would make the samples depend on the GPU model.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sampler = Sampler(model or DEFAULT_MODEL, torch.device(device))
    classes = sampler.classes
    rows = rows or (len(classes) if classes else 6)
    labels = torch.arange(rows * per_row) // per_row % len(classes) if classes else None
    seeds = [item_seed(seed, f"sample-{i}") for i in range(rows * per_row)]
    images = sampler.images(seeds, labels, temperature, top_k, top_p)
    titles = [classes[int(labels[r * per_row])] for r in range(rows)] if classes else None
    sheet_png([list(images[r * per_row : (r + 1) * per_row]) for r in range(rows)], output, row_titles=titles)
    click.echo(f"wrote {output} ({rows} x {per_row} samples)")
