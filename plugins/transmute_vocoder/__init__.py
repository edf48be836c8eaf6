"""Built-in plugin: a Vocos neural vocoder (log-mel spectrogram -> waveform).

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in vocoder (models/festival-vocos.safetensors): the default wherever a vocoder is asked for.
DEFAULT_MODEL = "festival-vocos"


@hookimpl
def register_stages(register):
    from transmute_vocoder.stages import Synthesize

    register(Synthesize)


@hookimpl
def register_models(register):
    path = MODELS / f"{DEFAULT_MODEL}.safetensors"
    if path.is_file():
        register(DEFAULT_MODEL, path, "Vocos vocoder for 22.05 kHz 80-band log-mels (fmax 8 kHz), festival kal + slt, small preset")


@hookimpl
def register_trainers(register):
    from transmute_vocoder.commands import train_command

    register(train_command)


@hookimpl
def register_evaluators(register):
    from transmute_vocoder.evaluate import eval_vocoder_command

    register(eval_vocoder_command)
