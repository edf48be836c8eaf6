"""Built-in plugin: MaskCycleGAN-VC voice conversion on mel spectrograms.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in converter (models/kal-slt.safetensors): the default wherever a converter is asked for.
DEFAULT_MODEL = "kal-slt"


@hookimpl
def register_stages(register):
    from transmute_cyclegan_vc.stages import Convert

    register(Convert)


@hookimpl
def register_models(register):
    path = MODELS / f"{DEFAULT_MODEL}.safetensors"
    if path.is_file():
        register(DEFAULT_MODEL, path, "festival kal (male) <-> slt (female), small preset; a2b: kal -> slt")


@hookimpl
def register_trainers(register):
    from transmute_cyclegan_vc.commands import train_command

    register(train_command)


@hookimpl
def register_commands(cli):
    from transmute_cyclegan_vc.commands import convert_voice_command

    cli.add_command(convert_voice_command)


@hookimpl
def register_evaluators(register):
    from transmute_cyclegan_vc.evaluate import eval_vc_command

    register(eval_vc_command)
