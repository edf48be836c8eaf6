"""Built-in plugin: VQ-VAE (van den Oord et al., 2017), images or log-mel spectrograms <-> discrete codes.

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in models (models/NAME.safetensors), registered when their files are there.
IMAGE_MODEL = "digits-vqvae"
SPEECH_MODEL = "speech-vqvae"
DESCRIPTIONS = {IMAGE_MODEL: "VQ-VAE for 28x28 grayscale digits (MNIST), 512 codes, small preset",
                SPEECH_MODEL: "VQ-VAE for the festival-vocos log-mels (festival kal + slt), 512 codes, small preset"}


@hookimpl
def register_stages(register):
    from transmute_vqvae import stages

    for stage in (stages.Encode, stages.DecodeImages, stages.DecodeSpectrogram, stages.SaveCodes, stages.LoadCodes):
        register(stage)


@hookimpl
def register_models(register):
    for name, description in DESCRIPTIONS.items():
        path = MODELS / f"{name}.safetensors"
        if path.is_file():
            register(name, path, description)


@hookimpl
def register_trainers(register):
    from transmute_vqvae.commands import train_command

    register(train_command)


@hookimpl
def register_evaluators(register):
    from transmute_vqvae.evaluate import eval_command

    register(eval_command)
