"""The hooks a transmute plugin can implement.

Each hook receives a `register` callback (or the CLI group). An implementation
names only the arguments it uses; pluggy passes just those, so adding an
argument to a hook never breaks an existing plugin.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("transmute")
hookimpl = pluggy.HookimplMarker("transmute")


@hookspec
def register_stages(register):
    """Register stage classes: register(StageSubclass)."""


@hookspec
def register_pipelines(register):
    """Register pipeline files: register(path) or register(path, name="...")."""


@hookspec
def register_commands(cli):
    """Add click commands to the `transmute` command group."""


@hookspec
def register_trainers(register):
    """Add a click command under `transmute train`: register(command).

    Build it with transmute.training.training_options so every family shares
    --out, --steps, --resume, --device and the rest.
    """


@hookspec
def register_evaluators(register):
    """Add a click command under `transmute eval`: register(command)."""


@hookspec
def register_models(register):
    """Name checkpoints a plugin ships: register(name, path, description="")."""
