"""File helpers: atomic writes and input discovery."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from transmute.errors import TransmuteError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is left
    as it was, so a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        if not tmp.exists():
            raise TransmuteError(f"{path}: nothing was written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would have made it, whatever the writer chose
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that atomic_path calls left when their process was killed.

    Only files named as atomic_path names them (.NAME.PID.part) whose process
    is gone are removed; a live writer's file is left alone.
    """
    removed = []
    for tmp in Path(folder).glob(".*.part") if Path(folder).is_dir() else ():
        pid = tmp.name[: -len(".part")].rsplit(".", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class InputFile:
    path: Path
    relative: Path  # where its output goes, relative to the output folder (suffix replaced)


def discover(
    inputs: list[str], accepts: Callable[[Path], bool], exclude: Path | None = None
) -> tuple[list[InputFile], list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into input files.

    Returns (files, ignored, missing): files named directly are always taken;
    files inside folders are taken when `accepts` says so, hidden files and
    folders are skipped, and the rest is listed as ignored. Files below
    `exclude` (the output folder, when it sits inside an input folder) are not
    inputs.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found: list[InputFile] = []
    ignored: list[Path] = []
    missing: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                rel = sub.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not sub.is_file():
                    continue
                if exclude is not None and exclude in sub.resolve().parents:
                    continue
                if accepts(sub):
                    found.append(InputFile(sub, rel))
                else:
                    ignored.append(sub)
        elif path.exists():
            found.append(InputFile(path, Path(path.name)))
        else:
            missing.append((raw, "no such file or folder"))
    return found, ignored, missing
