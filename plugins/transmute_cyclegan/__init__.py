"""Built-in plugin: CycleGAN (Zhu et al., 2017), unpaired image-to-image translation.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in Google <-> Twitter emoji translator (models/emoji-google-twitter.safetensors).
DEFAULT_MODEL = "emoji-google-twitter"


@hookimpl
def register_stages(register):
    from transmute_cyclegan.stages import Translate

    register(Translate)


@hookimpl
def register_models(register):
    path = MODELS / f"{DEFAULT_MODEL}.safetensors"
    if path.is_file():
        register(DEFAULT_MODEL, path, "Google <-> Twitter emoji designs, 64 px, small preset; AtoB: Google -> Twitter")


@hookimpl
def register_trainers(register):
    from transmute_cyclegan.commands import train_command

    register(train_command)
