"""The hooks a transmute plugin can implement.

Each hook receives a `register` callback (or the CLI group). An implementation
names only the arguments it uses; pluggy passes just those, so adding an
argument to a hook never breaks an existing plugin.
"""

from __future__ import annotations

import re

import pluggy

from transmute import PLUGIN_API_VERSION

PROJECT = "transmute"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)?\s*(\d+(?:\.\d+)*)\s*")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def api_satisfies(requirement: str, version: str = PLUGIN_API_VERSION) -> bool:
    """Whether the plugin API `version` meets `requirement`: comma-separated clauses
    such as ">=1.0", ">=1.0,<2" or "==1.0" (a bare "1.0" means ">=1.0").

    A plugin declares what it needs in its entry-point module:

        requires_api = ">=1.0"

    and transmute lists it as failed, with one line saying why, when it is not met.
    """
    clauses = str(requirement).split(",")
    checks = []
    for clause in clauses:
        match = _CLAUSE.fullmatch(clause)
        if not match:
            raise ValueError(f"{requirement!r} is not a version requirement like '>=1.0' or '>=1.0,<2'")
        checks.append((match.group(1) or ">=", match.group(2)))
    have = _version(version)
    for op, wanted in checks:
        want = _version(wanted)
        width = max(len(want), len(have))
        a, b = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
        if not {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]:
            return False
    return True


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


HOOK_NAMES = tuple(name for name, value in list(globals().items()) if hasattr(value, f"{PROJECT}_spec"))
