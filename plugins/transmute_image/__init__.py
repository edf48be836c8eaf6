"""Built-in image plugin: load any Pillow-readable file, fit to a multiple of N, save PNG/JPEG/WebP;
`transmute translate-images` and `transmute eval images`."""

from transmute.hookspecs import hookimpl


@hookimpl
def register_stages(register):
    from transmute_image.stages import STAGES

    for stage in STAGES:
        register(stage)


@hookimpl
def register_evaluators(register):
    from transmute_image.evaluate import eval_images_command

    register(eval_images_command)


@hookimpl
def register_commands(cli):
    from transmute_image.commands import translate_images_command

    cli.add_command(translate_images_command)
