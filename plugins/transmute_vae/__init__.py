"""Built-in plugin: a variational autoencoder (Kingma & Welling, 2014) for small images, with beta-VAE,
latent exploration (traversals, interpolation, arithmetic), outlier scores and debiasing weights.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in models: the plain VAE and the beta = 4 one, both on the MNIST digits.
DEFAULT_MODEL = "digits-vae"
BUILTIN = {
    "digits-vae": "VAE (beta 1) of 28 px MNIST digits, 16 latents, small preset",
    "digits-beta4-vae": "beta-VAE (beta 4) of 28 px MNIST digits, 16 latents, small preset",
}


@hookimpl
def register_stages(register):
    from transmute_vae.stages import Decode, Encode, LoadLatents, SaveLatents, Sample, Score

    for stage in (Encode, Decode, Sample, Score, SaveLatents, LoadLatents):
        register(stage)


@hookimpl
def register_models(register):
    for name, description in BUILTIN.items():
        path = MODELS / f"{name}.safetensors"
        if path.is_file():
            register(name, path, description)


@hookimpl
def register_trainers(register):
    from transmute_vae.commands import train_command

    register(train_command)


@hookimpl
def register_evaluators(register):
    from transmute_vae.evaluate import eval_vae_command

    register(eval_vae_command)


@hookimpl
def register_commands(cli):
    from transmute_vae.commands import vae_group

    cli.add_command(vae_group)
