"""`transmute new-plugin`: the package it writes installs, is found, and passes its own tests."""

import pytest
from click.testing import CliRunner

from transmute import PLUGIN_API_VERSION, __version__
from transmute.cli import cli


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


def test_generated_plugin_is_found(transmute_cli_batch, scaffolded):
    _, site = scaffolded
    result, pipelines = transmute_cli_batch([["stages", "myfx.gain"], ["pipelines"]], [site])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("myfx.gain  (transform: Waveform -> Waveform; plugin myfx)")
    assert "gain_db (float, default -6.0)" in result.stdout
    assert "myfx-demo" in pipelines.stdout


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
