"""Built-in plugin: MaskCycleGAN-VC voice conversion on mel spectrograms.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")


@hookimpl
def register_trainers(register):
    from transmute_cyclegan_vc.commands import train_command

    register(train_command)
