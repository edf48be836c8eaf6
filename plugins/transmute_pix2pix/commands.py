"""Command-line entry points of the pix2pix plugin."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options

FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("pix2pix")
@click.option("--data", type=FOLDER, default=None,
              help="Paired data: DATA/train/ of A|B side-by-side images, or DATA/trainA/ and DATA/trainB/ with "
                   "matching file names.")
@click.option("--a", "a_dir", type=FOLDER, default=None, help="Instead of --data: a folder of inputs ...")
@click.option("--b", "b_dir", type=FOLDER, default=None, help="... and one of targets with the same file names.")
@click.option("--direction", default="AtoB", show_default=True, type=click.Choice(["AtoB", "BtoA"]),
              help="AtoB learns A -> B (left half -> right half); BtoA the other way.")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="default: the paper's (256 px, GPU, hours); small: 128 px, 2 CPU cores, about an hour; "
                   "tiny: tests.")
@click.option("--name-a", default="A", show_default=True, help="What the inputs are (recorded in the model).")
@click.option("--name-b", default="B", show_default=True, help="What the outputs are.")
@training_options
def train_command(data, a_dir, b_dir, direction, preset, name_a, name_b, **options):
    """Train a pix2pix translator (U-Net + PatchGAN) on paired images.

    The run folder gets checkpoints/last.safetensors (resume with --resume),
    model.safetensors (the generator: `transmute translate-images --model
    RUN/model.safetensors`), samples/ (input | output | target grids, every
    --sample-every steps; the tiny preset writes none) and
    log.jsonl. --hparam takes any key of the preset (e.g. width=64,
    gan_loss="vanilla", crop_size=256).
    """
    from transmute.errors import TransmuteError
    from transmute.imagedata import aligned_only, paired_split
    from transmute.training import say, train
    from transmute_pix2pix.networks import PRESETS
    from transmute_pix2pix.task import Pix2PixTask, validate_hparams

    if data is None and a_dir is None:
        raise TransmuteError("give --data DIR (a data set folder) or --a DIR --b DIR (two folders of pairs)")
    config = config_from_options(options, PRESETS[preset])
    validate_hparams(config.hparams)
    pairs, notes = aligned_only(paired_split(data, "train", a_dir, b_dir), data)
    for note in notes:
        say(f"warning: {note}")
    if direction == "BtoA":
        name_a, name_b = name_b, name_a
    say(f"{len(pairs)} training pairs from {data or a_dir}; preset {preset}, {config.steps} steps")
    task = Pix2PixTask(pairs, preset, config.hparams, direction, (name_a, name_b))
    model = train(task, config)
    say(f"translator: {model} ({task.describe_size()})")
