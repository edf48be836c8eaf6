"""Built-in plugin: Gated PixelCNN priors (van den Oord et al., 2016) over 8-bit images and over VQ-VAE code
maps, with the fast cached sampler of Ramachandran et al. (2017).

Hooks only here; torch and the networks are imported when a command or stage runs.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

MODELS = Path(__file__).with_name("models")
# The built-in models: a prior over the digits VQ-VAE's codes (the default: sample-codes) and one over the
# digits' pixels, both conditioned on the digit; and one over the speech VQ-VAE's codes, conditioned on the
# speaker.
DEFAULT_MODEL = "digits-codes-pixelcnn"
PIXELS_MODEL = "digits-pixelcnn"
SPEECH_MODEL = "speech-codes-pixelcnn"
BUILTIN = {
    DEFAULT_MODEL: "Gated PixelCNN over the 7x7 codes of digits-vqvae, conditioned on the digit, small preset",
    PIXELS_MODEL: "Gated PixelCNN over 28 px MNIST digits' pixels (256 levels), conditioned on the digit, "
                  "small preset",
    SPEECH_MODEL: "Gated PixelCNN over the codes of speech-vqvae (festival kal + slt), conditioned on the "
                  "speaker, small preset",
}


@hookimpl
def register_stages(register):
    from transmute_pixelcnn.stages import Sample, SampleCodes, Score, ScoreCodes

    for stage in (Sample, SampleCodes, Score, ScoreCodes):
        register(stage)


@hookimpl
def register_models(register):
    for name, description in BUILTIN.items():
        path = MODELS / f"{name}.safetensors"
        if path.is_file():
            register(name, path, description)


@hookimpl
def register_trainers(register):
    from transmute_pixelcnn.commands import train_command

    register(train_command)


@hookimpl
def register_commands(cli):
    from transmute_pixelcnn.commands import pixelcnn_group

    cli.add_command(pixelcnn_group)


@hookimpl
def register_evaluators(register):
    from transmute_pixelcnn.evaluate import eval_command

    register(eval_command)
