"""`transmute new-plugin NAME DIR`: a ready-to-install plugin package to start from."""

from __future__ import annotations

import re
from pathlib import Path

from transmute import PLUGIN_API_VERSION, __version__
from transmute.errors import TransmuteError

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "transmute-{name}"
version = "0.1.0"
description = "A transmute plugin: {name}"
requires-python = ">=3.10"
# The lowest transmute this plugin is tested with (the one that wrote it).
dependencies = ["transmute>={version}"]

# This line is what makes transmute find the plugin.
[project.entry-points.transmute]
{name} = "transmute_{name}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
transmute_{name} = ["*.toml"]
'''

_INIT = '''\
"""transmute plugin '{name}'.

Hooks stay cheap to import: heavy imports (torch, models) go inside functions.
"""

from pathlib import Path

from transmute.hookspecs import hookimpl

# The plugin API this plugin is written for; transmute lists the plugin as failed,
# with the reason, where it provides an older one.
requires_api = ">={api}"


@hookimpl
def register_stages(register):
    from transmute_{name}.stages import Gain

    register(Gain)


@hookimpl
def register_pipelines(register):
    register(Path(__file__).with_name("{name}-demo.toml"))
'''

_STAGES = '''\
"""Stages of the '{name}' plugin."""

from transmute.signals import Waveform
from transmute.stages import Param, Stage


class Gain(Stage):
    """Change the level of audio by a number of decibels."""

    name = "{name}.gain"
    consumes = Waveform
    produces = Waveform
    params = {{
        "gain_db": Param(float, -6.0, "gain in decibels", min=-60, max=24),
    }}

    def check(self, incoming):
        # The spec that comes in is what goes out: gain changes no sample rate or channels.
        return incoming

    def process(self, signal: Waveform) -> Waveform:
        return signal.replace(data=signal.data * 10 ** (self.gain_db / 20))
'''

_PIPELINE = '''\
[pipeline]
description = "Test tones through {name}.gain"

[[stage]]
use = "audio.tone"
duration = 0.5

[[stage]]
use = "{name}.gain"
gain_db = -12

[[stage]]
use = "audio.save"
'''

_TEST = '''\
import torch
from click.testing import CliRunner

from transmute.cli import cli
from transmute.signals import Waveform, WaveformSpec
from transmute_{name}.stages import Gain


def test_gain_scales_the_samples():
    wave = Waveform(torch.ones(1, 1, 100), WaveformSpec(22050, 1))
    out = Gain(gain_db=-20.0).process(wave)
    assert torch.allclose(out.data, torch.full((1, 1, 100), 0.1))


def test_a_batch_gives_what_each_item_gives_alone():
    # Binding on every stage: the runner batches items of different lengths (zero-padded at
    # the end), and an item's output must not depend on what it was batched with.
    gain = Gain(gain_db=-20.0)
    items = [Waveform(torch.randn(1, 1, n), WaveformSpec(22050, 1), [f"item{{n}}"]) for n in (300, 500)]
    from_batch = gain.process(Waveform.collate(items)).items()
    for item, batched in zip(items, from_batch):
        assert batched.names == item.names
        torch.testing.assert_close(batched.data, gain.process(item).data)


def test_the_plugin_pipeline_runs(tmp_path):
    result = CliRunner().invoke(cli, ["run", "{name}-demo", "--count", "2", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("*.wav"))) == 2
'''

_README = '''\
# transmute-{name}

A transmute plugin. Install it beside transmute and its stage appears:

    pip install -e .
    transmute stages {name}.gain
    transmute run {name}-demo --count 3 -o out/
    python -m pytest

See transmute's docs/plugin-quickstart.md, then docs/writing-plugins.md for the hooks,
signals and stage API.
'''


def write_plugin(name: str, directory: Path) -> list[Path]:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise TransmuteError(f"plugin name {name!r}: use lower-case letters, digits and '_' (e.g. my_gain)")
    import importlib.metadata

    installed = {ep.name for ep in importlib.metadata.entry_points(group="transmute")}
    if name in installed:
        raise TransmuteError(f"plugin name {name!r} is taken by an installed plugin; choose another")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise TransmuteError(f"{directory}: folder exists and is not empty; choose a new one")
    package = directory / "src" / f"transmute_{name}"
    files = {
        directory / "pyproject.toml": _PYPROJECT,
        directory / "README.md": _README,
        package / "__init__.py": _INIT,
        package / "stages.py": _STAGES,
        package / f"{name}-demo.toml": _PIPELINE,
        directory / "tests" / f"test_{name}.py": _TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, version=__version__, api=PLUGIN_API_VERSION), encoding="utf-8")
    return list(files)
