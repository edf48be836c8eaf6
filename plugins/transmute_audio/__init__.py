"""Built-in audio plugin: file I/O, resampling, log-mel, mel inversion, Griffin-Lim, test tones."""

from transmute.hookspecs import hookimpl


@hookimpl
def register_stages(register):
    from transmute_audio.stages import STAGES

    for stage in STAGES:
        register(stage)
