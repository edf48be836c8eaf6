"""CLI start-up: `transmute --help` against `python -c "import torch"`, both from this venv.

The CLI must describe itself without importing torch.
Target: `transmute --help` in under a quarter of torch's import time.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import common

REPEATS = 5
MAX_RATIO = 0.25


def venv_bin() -> Path:
    # Not resolved: a venv's python is a link to the base interpreter, and the venv is where the link lives.
    return Path(sys.executable).parent


def transmute_command() -> list[str]:
    script = venv_bin() / "transmute"
    return [str(script)] if script.exists() else [sys.executable, "-m", "transmute"]


def run_quietly(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=common.REPO_ROOT)


def main() -> list[common.Row]:
    common.header("CLI start-up: transmute --help vs import torch")
    help_cmd = transmute_command() + ["--help"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    ours = common.best_of(lambda _: run_quietly(help_cmd), repeats=REPEATS)
    peer = common.best_of(lambda _: run_quietly(torch_cmd), repeats=REPEATS)
    ratio = ours.best_s / peer.best_s
    met = ratio < MAX_RATIO
    print(f"{shlex.join(help_cmd)}: {ours.label}")
    print(f"{shlex.join(torch_cmd)}: {peer.label}")
    print(f"ratio (help / import torch): {ratio:.3f}")
    print(f"target: < {MAX_RATIO:g} of torch's import time -> {common.verdict(met)}")
    return [common.Row("cli --help start-up", f"{ours.best_s:.3f} s", f"{peer.best_s:.3f} s (import torch)",
                       f"{ratio:.3f}", f"< {MAX_RATIO:g}", common.verdict(met))]


if __name__ == "__main__":
    main()
