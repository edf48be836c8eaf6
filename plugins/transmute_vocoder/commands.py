"""Command-line entry points of the vocoder plugin."""

from __future__ import annotations

from pathlib import Path

import click

from transmute.training import config_from_options, training_options


@click.command("vocoder")
@click.option("--data", "folders", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of speech (any format and rate; searched recursively); repeat for several voices.")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["default", "small", "tiny"]),
              help="default: the paper's width (GPU, days); small: 2 CPU cores, an hour or two; tiny: tests.")
@click.option("--spec-from", default=None, metavar="MODEL",
              help="Train on the features of this model (a checkpoint or built-in name, e.g. an acoustic model "
                   "whose mels the vocoder will voice); default: 22.05 kHz, 80 bands, fmax 8 kHz.")
@training_options
def train_command(folders, preset, spec_from, **options):
    """Train a Vocos vocoder (log-mel -> waveform) on recordings of speech.

    The run folder gets checkpoints/last.safetensors (resume with --resume),
    model.safetensors (the vocoder: `--set vocoder.model=RUN/model.safetensors`,
    or `transmute convert-voice --vocoder RUN/model.safetensors`), samples/
    (WAV and spectrogram PNG) and log.jsonl. --hparam takes any key of the
    preset (e.g. dim=384, gan_from=0); --sample-weights names items
    'FOLDER/PATH', FOLDER the --data folder's name.
    """
    from transmute.checkpoint import model_feature_spec
    from transmute.training import say, train
    from transmute_vocoder.networks import PRESETS
    from transmute_vocoder.task import FEATURES, VocoderTask, read_speech, validate_hparams

    config = config_from_options(options, PRESETS[preset])
    validate_hparams(config.hparams)
    spec = model_feature_spec(spec_from).replace(normalization=None) if spec_from else FEATURES
    say(f"reading {', '.join(map(str, folders))} ...")
    audio, skipped = read_speech(list(folders), spec.sample_rate)
    for reason in skipped:
        say(f"skipped {reason}")
    hours = sum(a.shape[0] for a in audio.values()) / spec.sample_rate / 3600
    say(f"{len(audio)} recordings, {hours * 60:.1f} min; preset {preset}, {config.steps} steps")
    task = VocoderTask(audio, preset, config.hparams, spec, corpus=", ".join(f.name for f in folders))
    model = train(task, config)
    say(f"vocoder: {model} ({task.describe_size()})")
