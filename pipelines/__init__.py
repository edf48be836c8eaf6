"""The built-in pipeline files, registered the same way a plugin registers its own."""

from pathlib import Path

from transmute.hookspecs import hookimpl


@hookimpl
def register_pipelines(register):
    for path in sorted(Path(__file__).parent.glob("*.toml")):
        register(path)
