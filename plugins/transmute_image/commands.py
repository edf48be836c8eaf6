"""Command-line entry points of the image plugin: translate-images."""

from __future__ import annotations

import click

from transmute.cli import tf32_option, workers_option
from transmute.errors import TransmuteError

PIPELINE = "image-translation"
TRANSLATE = "translate"  # the pipeline's translation step, by name
DEFAULT_MODEL = "openmoji-color"


@click.command("translate-images")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False, readable=False),
              help="Folder for the translated PNGs (sub-folders of input folders are mirrored).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="A pix2pix or CycleGAN checkpoint (RUN/model.safetensors) or a built-in model name "
                   "(transmute models).")
@click.option("--direction", default=None, type=click.Choice(["AtoB", "BtoA"]),
              help="AtoB (default) translates as trained; BtoA the other way (CycleGAN models only).")
@click.option("--tile", type=click.IntRange(min=0), default=None, metavar="N",
              help="Translate images larger than N pixels on a side in overlapping N x N tiles, so memory "
                   "stays bounded (0: whole images; default: the model's stage decides).")
@click.option("--device", default=None, metavar="auto|cpu|cuda[:N]", help="Where the model runs (default: auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist (default: skip them).")
@workers_option
@tf32_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; only failures, warnings and the summary.")
def translate_images_command(inputs, outdir, model, direction, tile, device, batch_size, overwrite, workers,
                             tf32, quiet):
    """Translate image files or folders with a pix2pix or CycleGAN model (pipeline image-translation).

    Any image Pillow reads goes in (grayscale, palette, 16-bit, CMYK, with or
    without alpha; alpha is kept); a PNG comes out at the input's size, under
    the same name. Outputs that exist are skipped, so running the command
    again after an interruption continues where it stopped.
    """
    from transmute import run
    from transmute.cli import RunPrinter

    pipeline = translation_pipeline(model, direction, tile)
    printer = RunPrinter(PIPELINE, outdir, quiet)
    report = run(pipeline, inputs, outdir, device=device, batch_size=batch_size, overwrite=overwrite,
                 workers=workers, tf32=tf32, on_start=printer.start, on_outcome=printer.outcome)
    printer.finish(report)


def translation_pipeline(model: str, direction: str | None = None, tile: int | None = None):
    """The image-translation pipeline, its translate step using the stage of `model`'s family.

    The family is the plugin that made the checkpoint (its metadata says which):
    `pix2pix` runs pix2pix.translate, `cyclegan` cyclegan.translate, and a
    third-party family its own PLUGIN.translate.
    """
    from transmute.checkpoint import read_metadata, resolve_model
    from transmute.pipeline import build_from_dict, read_pipeline, stage_type

    path = resolve_model(model)  # an unknown name: one line that lists the built-in models
    made = read_metadata(path)
    family = made.get("plugin")
    use = f"{family}.{TRANSLATE}"
    stage = stage_type(use)
    if stage is None:
        raise TransmuteError(f"--model {model}: a {family}/{made.get('model')} checkpoint; no installed stage "
                             f"{use} translates images with it (translate-images takes pix2pix and CycleGAN models)")
    doc, source = read_pipeline(PIPELINE)
    [step] = [s for s in doc["stage"] if s.get("name") == TRANSLATE]
    step.update(use=use, model=str(model))
    if direction is not None:
        takes = stage.params.get("direction")
        if takes is not None and (takes.choices is None or direction in takes.choices):
            step["direction"] = direction
        elif direction != "AtoB":
            raise TransmuteError(f"--direction {direction}: model {model} is a {family} model, which translates "
                                 "one way only (AtoB, as trained); train a model the other way round, or use a "
                                 "CycleGAN model")
    if tile is not None:
        if "tile" not in stage.params:
            raise TransmuteError(f"--tile: stage {use} does not tile; leave --tile out")
        step["tile"] = tile
    return build_from_dict(doc, source=str(source), name=PIPELINE)
