"""Command-line entry points of the VQ-VAE plugin."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options

@click.command("vqvae")
@click.option("--data", "folders", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of PNG images or of speech recordings (searched recursively); repeatable.")
@click.option("--kind", required=True, type=click.Choice(["images", "speech"]),
              help="images: a 2-D encoder over pixels; speech: a 1-D encoder over log-mel frames.")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="default: GPU; small: 2 CPU cores (digits about 10 min, speech about 20); tiny: tests.")
@click.option("--channels", default=1, show_default=True, type=click.Choice(["1", "3"]),
              help="Images: 1 (grayscale) or 3 (RGB; alpha is composited onto white).")
@click.option("--size", default=28, show_default=True, type=click.IntRange(min=4),
              help="Images: the side every training image is resized to.")
@click.option("--spec-from", default=None, metavar="MODEL",
              help="Speech: encode the features of this model (e.g. the vocoder that will voice the decoded "
                   "mels); default: the built-in vocoder festival-vocos's (22.05 kHz, 80 bands, fmax 8 kHz).")
@training_options
def train_command(folders, kind, preset, channels, size, spec_from, **options):
    """Train a VQ-VAE on images or on speech (log-mel spectrograms).

    The run folder gets checkpoints/last.safetensors (resume with --resume),
    model.safetensors (`--set encode.model=RUN/model.safetensors` in the vqvae
    pipelines), samples/ (input | reconstruction PNGs) and log.jsonl, whose
    lines carry perplexity and codes_in_use (the share of the codebook used in
    the last usage_window steps). --hparam takes any key of the preset (e.g.
    codebook_size=1024, downsample=4).
    """
    import torch

    from transmute.checkpoint import model_feature_spec
    from transmute.errors import TransmuteError
    from transmute.imagedata import read_image_set, spread
    from transmute.training import say, train
    from transmute_vqvae.networks import preset_for, silence
    from transmute_vqvae.task import FEATURES, SAMPLE_FRAMES, SAMPLES, MelSegments, VQVAETask, read_mels, \
        validate_hparams

    config = config_from_options(options, preset_for(preset, kind))
    validate_hparams(config.hparams)
    h = config.hparams
    channels = int(channels)
    corpus = ", ".join(f.name for f in folders)
    if kind == "images":
        multiple = h["downsample"] * 2 ** (h["levels"] - 1)
        if size % multiple:
            raise TransmuteError(f"--size {size} must be a multiple of {multiple} (the downsample, x 2 for a second "
                                 f"level), e.g. --size {-(-size // multiple) * multiple}")
        data, problems = read_image_set(list(folders), channels, size)
        for problem in problems:
            say(f"skipped {problem}")
        samples = list(data.tensor(spread(len(data), SAMPLES)))
        say(f"{len(data)} images from {corpus}, {channels} channel(s) at {size}x{size}; preset {preset}, "
            f"{config.steps} steps")
        task = VQVAETask("images", data, preset, h, channels=channels, size=size, corpus=corpus, samples=samples)
    else:
        spec = model_feature_spec(spec_from).replace(normalization=None) if spec_from else FEATURES
        say(f"reading {corpus} ...")
        mels, skipped = read_mels(list(folders), spec)
        for reason in skipped:
            say(f"skipped {reason}")
        frames = sum(m.shape[1] for m in mels.values())
        say(f"{len(mels)} recordings, {frames * spec.hop_length / spec.sample_rate / 60:.1f} min; preset {preset}, "
            f"{config.steps} steps")
        samples = [torch.from_numpy(m[:, :SAMPLE_FRAMES]) for m in list(mels.values())[:2]]
        data = MelSegments(mels, h["segment_frames"], silence(spec))
        task = VQVAETask("speech", data, preset, h, spec=spec, corpus=corpus, samples=samples)
    model = train(task, config)
    say(f"VQ-VAE: {model} ({task.describe_size()})")
