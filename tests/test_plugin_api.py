"""The plugin API: the modules a plugin may import, kept to by the built-in plugins; the guide lists them and every spec field."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from transmute import PLUGIN_API_MODULES
from transmute.signals import CodeSpec, FeatureSpec, ImageSpec, WaveformSpec

ROOT = Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "writing-plugins.md"
# Imports of the built-in plugins outside the plugin API that wait for a fix: none now.
# Add a line only with the reason; the test says when one is fixed.
PENDING: set[tuple[str, str]] = set()


def transmute_imports(path: Path) -> set[str]:
    """The transmute modules a file imports ("from transmute import dsp" counts as transmute.dsp)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "transmute")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "transmute":
            for alias in node.names:
                is_module = node.module == "transmute" and (ROOT / "transmute" / f"{alias.name}.py").is_file()
                found.add(f"transmute.{alias.name}" if is_module else node.module)
    return found


def test_builtin_plugins_import_only_the_plugin_api():
    outside = set()
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        relative = path.relative_to(ROOT / "plugins").as_posix()
        outside |= {(relative, module) for module in transmute_imports(path) if module not in PLUGIN_API_MODULES}
    assert outside - PENDING == set(), "built-in plugins must use only transmute.PLUGIN_API_MODULES"
    assert PENDING - outside == set(), "fixed: remove these from PENDING"


def test_the_import_check_sees_every_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import transmute.runner\nfrom transmute import dsp, PLUGIN_API_VERSION, plugins\n"
                      "from transmute.cli import cli\n\ndef f():\n    from transmute.stages import Stage\n")
    assert transmute_imports(sample) == {"transmute.runner", "transmute.dsp", "transmute", "transmute.plugins",
                                         "transmute.cli", "transmute.stages"}


def test_the_guide_lists_the_plugin_api():
    section = re.split(r"^## \d+\. The plugin API$", GUIDE.read_text(encoding="utf-8"), flags=re.M)[1].split("\n## ")[0]
    listed = set(re.findall(r"^\| `(transmute[\w.]*)`", section, re.M))
    assert listed == set(PLUGIN_API_MODULES)


@pytest.mark.parametrize("spec", [WaveformSpec, FeatureSpec, ImageSpec, CodeSpec], ids=lambda spec: spec.__name__)
def test_the_guide_has_a_row_for_every_spec_field(spec):
    section = GUIDE.read_text(encoding="utf-8").split(f"#### `{spec.__name__}` fields", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert rows == [f.name for f in dataclasses.fields(spec)]
