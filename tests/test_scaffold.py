"""`transmute new-plugin`: the package it writes installs, is found, and passes its own tests."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from transmute import PLUGIN_API_VERSION, __version__
from transmute.cli import cli


QUICKSTART = Path(__file__).parents[1] / "docs" / "plugin-quickstart.md"
CODE_BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.M | re.S)


def quickstart_blocks() -> list[tuple[str, str, str]]:
    """(language, title, code) of each code block of docs/plugin-quickstart.md."""
    return CODE_BLOCK.findall(QUICKSTART.read_text(encoding="utf-8"))


def new_plugin(*args):
    """`transmute new-plugin ARGS` in this process: writing files needs no installed plugin."""
    return CliRunner().invoke(cli, ["new-plugin", *map(str, args)])


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory, pip_install):
    """(package folder, its pip --target folder) for a plugin written by `transmute new-plugin myfx`."""
    folder = tmp_path_factory.mktemp("new-plugin") / "myfx"
    result = new_plugin("myfx", folder)
    assert result.exit_code == 0, result.output
    assert f"wrote {folder / 'pyproject.toml'}" in result.stdout
    return folder, pip_install(folder)["myfx"]


def test_generated_plugin_passes_its_own_tests(run_python, scaffolded):
    folder, site = scaffolded
    result = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], [site], cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_generated_plugin_states_what_transmute_it_needs(tmp_path):
    assert new_plugin("myfx", tmp_path).exit_code == 0
    assert f'dependencies = ["transmute>={__version__}"]' in (tmp_path / "pyproject.toml").read_text()
    assert f'requires_api = ">={PLUGIN_API_VERSION}"' in (tmp_path / "src" / "transmute_myfx" / "__init__.py").read_text()


def test_generated_plugin_is_found(transmute_cli_batch, scaffolded, tmp_path):
    """And the quick start's commands run as written (with the scaffolded plugin's name)."""
    _, site = scaffolded
    [pipeline] = [code for _, title, code in quickstart_blocks() if title == "my-pipeline.toml"]
    (tmp_path / "my-pipeline.toml").write_text(pipeline.replace("my_fx", "myfx"), encoding="utf-8")
    (tmp_path / "recordings").mkdir()
    take = 0.5 * np.sin(2 * np.pi * 100 * np.arange(800) / 8000).astype(np.float32)  # whole periods: no DC
    soundfile.write(str(tmp_path / "recordings" / "take.wav"), take, 8000, subtype="FLOAT")
    commands = [shlex.split(line[len("$ transmute "):].replace("my_fx", "myfx"))
                for language, _, code in quickstart_blocks() if language == "console"
                for line in code.splitlines() if line.startswith("$ transmute ") and "new-plugin" not in line]
    assert len(commands) == 3
    results = transmute_cli_batch([*commands, ["pipelines"]], [site], cwd=tmp_path)
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
    stages, _, _, pipelines = results
    assert stages.stdout.startswith("myfx.gain  (transform: Waveform -> Waveform; plugin myfx)")
    assert "gain_db (float, default -6.0)" in stages.stdout
    assert "myfx-demo" in pipelines.stdout
    assert len(list((tmp_path / "out").glob("*.wav"))) == 3
    quieter, _ = soundfile.read(str(tmp_path / "quieter" / "take.wav"), dtype="float32")
    np.testing.assert_allclose(quieter, take * 10 ** (-12 / 20), atol=1e-3)  # 16-bit output
    assert np.abs(quieter).max() > 0.12


def test_the_quickstart_shows_the_files_new_plugin_writes(tmp_path):
    assert new_plugin("my_fx", tmp_path).exit_code == 0
    shown = {title: code for _, title, code in quickstart_blocks() if title and (tmp_path / title).is_file()}
    assert sorted(shown) == ["src/transmute_my_fx/__init__.py", "src/transmute_my_fx/my_fx-demo.toml",
                             "src/transmute_my_fx/stages.py", "tests/test_my_fx.py"]
    for title, code in shown.items():
        assert code == (tmp_path / title).read_text(encoding="utf-8"), title


@pytest.mark.parametrize("name", ["MyFx", "1fx", "my-fx", "fx!"])
def test_invalid_plugin_name_is_refused(tmp_path, name):
    result = new_plugin(name, tmp_path / "out")
    assert result.exit_code != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and f"plugin name {name!r}" in line
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    result = new_plugin("myfx", tmp_path)
    assert result.exit_code != 0
    [line] = result.stderr.strip().splitlines()
    assert line == f"Error: {tmp_path}: folder exists and is not empty; choose a new one"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
