"""Command-line entry points of the cyclegan_vc plugin."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.cli import tf32_option, workers_option
from transmute.training import config_from_options, training_options
from transmute_cyclegan_vc import DEFAULT_MODEL


@click.command("cyclegan-vc")
@click.option("--a", "a_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Recordings of speaker A (any format and sample rate; searched recursively).")
@click.option("--b", "b_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Recordings of speaker B (unpaired with A's).")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="default: the paper's widths (GPU, hours); small: CPU, under an hour; tiny: tests.")
@click.option("--name-a", default=None, help="Label of speaker A (default: the folder name).")
@click.option("--name-b", default=None, help="Label of speaker B (default: the folder name).")
@training_options
def train_command(a_dir, b_dir, preset, name_a, name_b, **options):
    """Train a MaskCycleGAN-VC converter between two speakers from unpaired recordings.

    The run folder gets checkpoints/last.safetensors (resume with --resume),
    model.safetensors (the converter, both directions), samples/ (PNG and WAV)
    and log.jsonl. --hparam takes any key of the preset (e.g. gen_channels=64,
    lr_g=1e-4); --sample-weights names items 'a/PATH' and 'b/PATH', PATH
    relative to --a or --b.
    """
    from transmute.training import say, train
    from transmute_cyclegan_vc.networks import PRESETS
    from transmute_cyclegan_vc.task import CycleGANVCTask, describe_size

    config = config_from_options(options, PRESETS[preset])
    labels = (name_a or a_dir.name, name_b or b_dir.name)
    say(f"reading {a_dir} and {b_dir} ...")
    task = CycleGANVCTask.from_folders(a_dir, b_dir, preset, config.hparams, labels)
    for reason in task.skipped:
        say(f"skipped {reason}")
    say(f"speaker A '{labels[0]}': {len(task.features['a'])} utterances; speaker B '{labels[1]}': "
        f"{len(task.features['b'])} utterances; preset {preset}, {config.steps} steps")
    model = train(task, config)
    say(f"converter: {model} ({describe_size(task)})")


@click.command("convert-voice")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False))
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False, readable=False),
              help="Folder for the converted files.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="A converter checkpoint (RUN/model.safetensors) or a built-in model name.")
@click.option("--direction", default="a2b", show_default=True, type=click.Choice(["a2b", "b2a"]),
              help="a2b: speaker A -> B as trained (--a -> --b); b2a: the other way.")
@click.option("--vocoder", default=None, metavar="MODEL|griffinlim",
              help="What turns the converted mels into sound: griffinlim (mel inversion + Griffin-Lim, the "
                   "pipeline's default), or a vocoder checkpoint or built-in name (festival-vocos).")
@click.option("--griffinlim-iters", default=32, show_default=True, type=click.IntRange(min=1),
              help="Griffin-Lim iterations (when Griffin-Lim voices the output).")
@click.option("--loudness", default="keep", show_default=True, type=click.Choice(["keep", "normalize"]),
              help="keep: as loud as the input; normalize: at the target speaker's level in training.")
@click.option("--device", default=None, metavar="auto|cpu|cuda[:N]", help="Where the model runs (default: auto).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
@workers_option
@tf32_option
@click.option("-q", "--quiet", is_flag=True)
def convert_voice_command(inputs, outdir, model, direction, vocoder, griffinlim_iters, loudness, device, batch_size,
                          overwrite, workers, tf32, quiet):
    """Convert speech files or folders to the other speaker's voice (pipeline voice-conversion)."""
    from transmute import run
    from transmute.cli import RunPrinter

    pipeline = conversion_pipeline(model, direction, vocoder, griffinlim_iters, loudness)
    printer = RunPrinter(PIPELINE, outdir, quiet)
    report = run(pipeline, inputs, outdir, device=device, batch_size=batch_size,
                 overwrite=overwrite, workers=workers, tf32=tf32, on_start=printer.start, on_outcome=printer.outcome)
    printer.finish(report)


PIPELINE = "voice-conversion"


def conversion_pipeline(model: str = DEFAULT_MODEL, direction: str = "a2b", vocoder: str | None = None,
                        griffinlim_iters: int = 32, loudness: str = "keep"):
    """The voice-conversion pipeline with `model` one way, voiced by `vocoder` (a model, or 'griffinlim';
    None: the pipeline file's)."""
    from transmute.pipeline import build_from_dict, read_pipeline

    doc, source = read_pipeline(PIPELINE)
    stages = doc["stage"]
    named = {s.get("name"): s for s in stages}
    named["mel"]["spec_from"] = str(model)
    named["convert"].update(model=str(model), direction=direction, loudness=loudness)
    # What voices the mels: everything between the converter and the saver (a vocoder stage, or mel
    # inversion and Griffin-Lim), replaced when --vocoder asks for the other.
    start = next(i for i, s in enumerate(stages) if s.get("name") == "convert") + 1
    end = next(i for i, s in enumerate(stages) if s.get("use") == "audio.save")
    if vocoder == "griffinlim":  # the engine's mel inversion and Griffin-Lim
        stages[start:end] = [{"use": "audio.mel_to_linear", "name": "invert"},
                             {"use": "audio.griffinlim", "name": "griffinlim", "n_iter": griffinlim_iters,
                              "momentum": 0.99}]
    elif vocoder is not None:
        stages[start:end] = [{"use": "vocoder.synthesize", "name": "vocoder", "model": str(vocoder)}]
    else:
        for stage in stages[start:end]:
            if stage.get("use") == "audio.griffinlim":
                stage["n_iter"] = griffinlim_iters
    return build_from_dict(doc, source=str(source), name=PIPELINE)
