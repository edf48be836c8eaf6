"""Command-line entry points of the cyclegan plugin."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options


@click.command("cyclegan")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Unpaired domains: DATA/trainA/ and DATA/trainB/ (any number of images each, any names).")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="default: the paper's (256 px, GPU, days); small: 64 px, 2 CPU cores, about an hour; tiny: tests.")
@click.option("--name-a", default="A", show_default=True, help="What domain A is (recorded in the model).")
@click.option("--name-b", default="B", show_default=True, help="What domain B is.")
@training_options
def train_command(data, preset, name_a, name_b, **options):
    """Train a CycleGAN translator (ResNet generators + PatchGANs) between two unpaired image domains.

    Both directions are learnt at once and kept in one model: translate with
    `transmute translate-images --model RUN/model.safetensors --direction
    AtoB|BtoA`. The run folder gets checkpoints/last.safetensors (resume with
    --resume), model.safetensors, samples/ (input | translated | and back,
    every --sample-every steps; the tiny preset writes none) and
    log.jsonl. --hparam takes any key of the preset (e.g. width=64,
    lambda_identity=0); --sample-weights names items 'a/NAME' and 'b/NAME'.
    """
    from transmute.imagedata import unpaired_split
    from transmute.training import say, train
    from transmute_cyclegan.networks import PRESETS
    from transmute_cyclegan.task import CycleGANTask, validate_hparams

    config = config_from_options(options, PRESETS[preset])
    validate_hparams(config.hparams)
    files = unpaired_split(data, "train")
    say(f"domain A '{name_a}': {len(files['a'])} images; domain B '{name_b}': {len(files['b'])} images "
        f"(unpaired: drawn independently); preset {preset}, {config.steps} steps")
    roots = {"a": data / "trainA", "b": data / "trainB"}
    task = CycleGANTask(files, preset, config.hparams, (name_a, name_b), roots)
    model = train(task, config)
    say(f"translator: {model} ({task.describe_size()})")
