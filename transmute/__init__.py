"""transmute: translate audio and images between domains through plugin stages.

    import transmute
    report = transmute.run("resynthesize", ["in/"], "out/")

`run` is imported on first use, so `import transmute` stays cheap (no torch).
"""

__version__ = "0.1.0"
# The version of what plugins use (the modules docs/writing-plugins.md lists as the
# plugin API). The minor grows when something is added, the major when something a
# plugin may use changes or goes. A plugin states what it needs with
# `requires_api = ">=1.0"` in its entry-point module.
PLUGIN_API_VERSION = "1.4"

# The modules a plugin's own code may import (docs/writing-plugins.md, "The plugin
# API"). Everything else (transmute.plugins, transmute.runner, ...)
# is the engine's and may change in any release. A plugin's tests may also use
# transmute.cli.cli with click's CliRunner, and transmute.plugins to register a
# plugin in-process.
PLUGIN_API_MODULES = (
    "transmute",  # __version__, PLUGIN_API_VERSION
    "transmute.hookspecs",  # hookimpl, api_satisfies
    "transmute.stages",  # Stage, Param, ParamError
    "transmute.signals",  # the signals, their specs, length_mask
    "transmute.errors",  # InputError, PipelineError, SpecMismatch, CheckpointError, InputWarning
    "transmute.dsp",  # the one STFT, features and their inverses, mel, Griffin-Lim
    "transmute.audio",  # reading and resampling audio files
    "transmute.files",  # finding inputs, atomic writes
    "transmute.checkpoint",  # safetensors checkpoints with metadata
    "transmute.training",  # the training loop a model family plugs into
    "transmute.imagedata",  # image translation data sets: layouts, augmentation, PairedImages, UnpairedImages
    "transmute.gan",  # adversarial losses, the CycleGAN objective, history buffer, PatchGAN, LR decay
    "transmute.pipeline",  # building pipelines from files or dicts
    "transmute.viz",  # spectrogram PNGs for training samples, sheets of small images (sheet_png)
    "transmute.outliers",  # outlier test sets for small-image likelihood models, AUROC, eval options
    "transmute.imaging",  # apply_image_network: an image-to-image network over Images of any size and mode
    "transmute.metrics",  # PSNR, PESQ-WB/STOI/LSD/MR-STFT: the quality figures evaluations share
    "transmute.cli",  # RunPrinter, workers_option, tf32_option: a command that runs a pipeline shows it as `run` does
)


__all__ = ["run", "Report", "Outcome", "TransmuteError"]


def __getattr__(name):
    if name in ("run", "Report", "Outcome"):
        from transmute import runner

        return getattr(runner, name)
    if name == "TransmuteError":
        from transmute.errors import TransmuteError

        return TransmuteError
    raise AttributeError(f"module 'transmute' has no attribute {name!r}")
