import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- plugin packages
# Plugins are installed with pip into throw-away --target folders (never into
# the venv) and exercised through `python -m transmute` in subprocesses whose
# PYTHONPATH names those folders; entry points are then found as for any
# installed plugin.


def _pip_install(source: Path, target: Path, scratch: Path) -> subprocess.Popen:
    # Build from a copy: an in-tree setuptools build would leave build/ and
    # *.egg-info in the repository.
    copy = scratch / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(copy)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="session")
def pip_install(tmp_path_factory):
    """pip_install(folder, ...) -> {folder name: its --target folder}, installed in parallel."""

    def install(*sources) -> dict[str, Path]:
        scratch = tmp_path_factory.mktemp("plugin-src")
        running = {}
        for source in map(Path, sources):
            target = tmp_path_factory.mktemp(f"site-{source.name}")
            running[source.name] = (target, _pip_install(source, target, scratch))
        for name, (_, process) in running.items():
            output, _ = process.communicate()
            assert process.returncode == 0, f"pip install {name} failed:\n{output}"
        return {name: target for name, (target, _) in running.items()}

    return install


def _run_python(args, path=(), env=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSMUTE_")}
    full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    full_env.update(env or {})
    return subprocess.run([sys.executable, *map(str, args)], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def run_python():
    """run_python(args, path=(), env=None, cwd=None): `python ARGS` with PYTHONPATH=path, no TRANSMUTE_* inherited."""
    return _run_python


@pytest.fixture(scope="session")
def transmute_cli():
    """transmute_cli(args, path=(), env=None, cwd=None): `python -m transmute ARGS` in a subprocess."""
    return lambda args, path=(), env=None, cwd=None: _run_python(["-m", "transmute", *args], path, env, cwd)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread: the tests' tensors are tiny, and where cores are shared (2 cores, several test runs)
    a second thread only spin-waits -- a tiny training step measured 10x slower with two threads than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
