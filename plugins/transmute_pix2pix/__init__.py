"""Built-in plugin: pix2pix (Isola et al., 2017), paired image-to-image translation.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in line art -> colour translator (models/openmoji-color.safetensors).
DEFAULT_MODEL = "openmoji-color"


@hookimpl
def register_stages(register):
    from transmute_pix2pix.stages import Translate

    register(Translate)


@hookimpl
def register_models(register):
    path = MODELS / f"{DEFAULT_MODEL}.safetensors"
    if path.is_file():
        register(DEFAULT_MODEL, path, "OpenMoji black line art -> colour emoji, 128 px, small preset")


@hookimpl
def register_trainers(register):
    from transmute_pix2pix.commands import train_command

    register(train_command)
