"""File helpers: atomic writes and input discovery."""

from __future__ import annotations

import contextlib
import os
import re
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
            for sub in _files_below(path, missing):
                rel = sub.relative_to(path)
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


def _files_below(folder: Path, unreadable: list[tuple[str, str]]) -> list[Path]:
    """Files below folder, sorted, without hidden files and folders; folders that cannot be listed
    go to `unreadable` (path, reason) rather than silently looking empty."""

    def refused(exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        unreadable.append((str(exc.filename), f"cannot read this folder: {reason}; check its permissions"))

    files = []
    for root, dirs, names in os.walk(folder, onerror=refused, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(p for p in files if p.is_file())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the `.NAME.PID.part` files that killed runs left in `folder` (recursively).

    atomic_path removes its temporary file on any error, but not when the
    process is killed outright (SIGKILL, power loss). A temporary file is stale
    when its process is gone, or when that PID now belongs to a process started
    after the file was last written (the PID was reused). A file that a running
    process is still writing is left alone.
    """
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            match = _TEMPORARY.match(name)
            path = Path(root, name)
            if match and _is_stale(path, int(match["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.part$")


def _is_stale(path: Path, pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or a number no process can have
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _process_started(pid)
    try:
        return started is not None and path.stat().st_mtime < started - 2  # boot time has 1 s resolution
    except FileNotFoundError:
        return False


def _process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, counted after "pid (comm)"
    except (OSError, ValueError, IndexError, StopIteration):
        return None
