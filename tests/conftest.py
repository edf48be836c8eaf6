import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One torch/OpenMP thread per test process (and per subprocess, which inherits
# it): the tests' tensors are small, and on a shared 2-core machine a second
# spinning thread per process doubles the wall time instead of halving it
# (measured: 6 tiny CycleGAN-VC steps, 12.9 s with one thread, 26.7 s with two).
# Set OMP_NUM_THREADS yourself to choose otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# Several commands in one interpreter: each is invoked through click's CliRunner,
# which captures its exit code, stdout and stderr; an unexpected exception's
# traceback is added to stderr, as `python -m transmute` would have printed it.
_BATCH_SCRIPT = """
import json, sys, traceback
from click.testing import CliRunner
from transmute.cli import cli
results = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args, prog_name="transmute")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    results.append({"returncode": result.exit_code, "stdout": result.stdout, "stderr": stderr})
with open(sys.argv[2], "w") as out:
    json.dump(results, out)
"""


@pytest.fixture(scope="session")
def transmute_cli_batch(tmp_path_factory):
    """transmute_cli_batch([args, ...], path=(), env=None, cwd=None): several commands, one subprocess.

    For commands that share plugins and environment: the interpreter, and torch
    when a command needs it, start once. Returns one CompletedProcess per command.
    """
    import json

    def run(commands, path=(), env=None, cwd=None) -> list[subprocess.CompletedProcess]:
        commands = [[str(a) for a in args] for args in commands]
        report = tmp_path_factory.mktemp("batch") / "results.json"
        process = _run_python(["-c", _BATCH_SCRIPT, json.dumps(commands), report], path, env, cwd)
        assert process.returncode == 0 and report.is_file(), process.stdout + process.stderr
        return [subprocess.CompletedProcess(args, r["returncode"], r["stdout"], r["stderr"])
                for args, r in zip(commands, json.loads(report.read_text()))]

    return run


# --------------------------------------------------------------------------- speaker similarity


def _cheap_speaker_embedding(audio):
    """A stand-in for resemblyzer's encoder: a unit vector from loudness and zero-crossing rate.

    Voices of different pitch and formants get different vectors; it costs
    microseconds instead of seconds.
    """
    import numpy as np

    audio = np.asarray(audio, dtype=np.float64)
    crossings = np.mean(np.abs(np.diff(np.sign(audio)))) / 2 if len(audio) > 1 else 0.0
    vector = np.array([1.0, 50 * crossings, 10 * np.sqrt(np.mean(audio**2)) if len(audio) else 0.0])
    return vector / np.linalg.norm(vector)


@pytest.fixture
def fake_speaker_encoder(monkeypatch):
    """`transmute eval vc` with a cheap stand-in for the speaker encoder (the real one is tested apart)."""
    from transmute_cyclegan_vc import evaluate

    monkeypatch.setattr(evaluate, "speaker_encoder", lambda: _cheap_speaker_embedding)
    return _cheap_speaker_embedding
