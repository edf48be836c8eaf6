"""File helpers: atomic writes and input discovery."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from transmute.errors import InputError, OutputError, TransmuteError, os_reason


# Permission checks ask about the effective user, the one whose rights opening a file uses.
_EFFECTIVE = os.access in os.supports_effective_ids


def check_readable(path: Path) -> None:
    """Raise InputError('cannot read: permission denied', ...) if `path` cannot be opened for reading.

    The runner calls it before any loader, so a loader of any plugin that is
    handed an unreadable file fails that file alone, with these words.
    """
    if not os.access(path, os.R_OK, effective_ids=_EFFECTIVE):
        raise InputError("cannot read: permission denied")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"cannot read: {os_reason(exc)}") from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    On any error (or Ctrl-C) the temporary file is removed and `path` is left
    as it was, so a reader never sees a half-written file. A failure to write
    is raised as a TransmuteError that names `path` (never the temporary name)
    and the reason in words: 'permission denied', 'no space left on device'.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {path.parent}: {os_reason(exc)}", os_reason(exc), exc.errno) from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        if not tmp.exists():
            raise TransmuteError(f"{path}: nothing was written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would have made it, whatever the writer chose
        os.replace(tmp, path)
    except Exception as exc:
        reason = _write_failure(exc, tmp, path)
        if reason is None:
            raise
        raise OutputError(f"cannot write {path}: {reason}", reason, getattr(exc, "errno", None)) from exc
    finally:
        # Only what exists: on a read-only disk, unlinking a missing file fails with EROFS, which would
        # hide the real error. A temporary that cannot be removed is left rather than raised over it.
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                tmp.unlink()


# Below this much free space, a write that failed without saying why is put down to a full disk.
_NEARLY_FULL = 1 << 20


def _write_failure(exc: Exception, tmp: Path, path: Path) -> str | None:
    """Why writing `tmp` failed, in words; None for an error that is not about writing the file.

    Called while the temporary file still exists, so a disk it filled still reads as full.
    """
    if isinstance(exc, TransmuteError):
        return None
    if isinstance(exc, OSError) and exc.errno:
        return os_reason(exc)
    # Writers in Rust wrap the system's error in their own type and keep only its text: safetensors raises
    # SafetensorError("... I/O error: No space left on device (os error 28)") and has already removed its
    # partial file, so the folder below would look fine. The errno in the text says why.
    code = re.search(r"\(os error (\d+)\)", str(exc))
    if code:
        return os_reason(OSError(int(code.group(1)), ""))
    # Some writers only say "System error." (libsndfile): ask the folder what is wrong.
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        stats = None
    if stats is not None and stats.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(path.parent, os.W_OK, effective_ids=_EFFECTIVE):
        return "permission denied"
    if stats is not None and stats.f_bavail * stats.f_frsize < _NEARLY_FULL:
        return "no space left on device"
    text = " ".join(str(exc).split())
    if str(tmp) in text or tmp.name in text:  # an I/O failure the writer described: keep its words
        return text.replace(str(tmp), str(path)).replace(tmp.name, path.name)
    return None  # not about writing (e.g. a writer's complaint about the data): raised as it is


@dataclass
class InputFile:
    path: Path
    relative: Path  # where its output goes, relative to the output folder (suffix replaced)


def discover(
    inputs: list[str], accepts: Callable[[Path], bool], exclude: Path | None = None
) -> tuple[list[InputFile], list[Path], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into input files.

    Returns (files, ignored, problems): files named directly are always taken;
    files inside folders are taken when `accepts` says so, hidden files and
    folders are skipped, and the rest is listed as ignored. Files below
    `exclude` (the output folder, when it sits inside an input folder) are not
    inputs. Symbolic links are followed. Each (path, reason) in problems is
    something that could not be taken: a missing input, a folder that cannot
    be read, a broken link, a link back to a folder above it.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found: list[InputFile] = []
    ignored: list[Path] = []
    problems: list[tuple[str, str]] = []

    def walk(folder: Path, rel: Path, above: frozenset[tuple[int, int]]) -> None:
        # os.scandir rather than Path.rglob: rglob drops unreadable folders and
        # links to folders without a word, and raises on other errors.
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append((str(folder), f"cannot read folder: {os_reason(exc)}"))
            return
        if entries and not os.access(folder, os.X_OK, effective_ids=_EFFECTIVE):  # listed, but not enterable
            problems.append((str(folder), "cannot enter folder: permission denied"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            sub = folder / entry.name
            try:
                if entry.is_symlink() and not os.path.exists(sub):
                    problems.append((str(sub), f"broken symbolic link (to {os.readlink(sub)})"))
                    continue
                is_dir, is_file = entry.is_dir(), entry.is_file()
                if is_dir:
                    key = _identity(os.stat(sub))
            except OSError as exc:
                problems.append((str(sub), f"cannot read: {os_reason(exc)}"))
                continue
            if is_dir:
                if key in above:
                    problems.append((str(sub), "symbolic link loop, skipped"))
                elif exclude is None or sub.resolve() != exclude:
                    walk(sub, rel / entry.name, above | {key})
            elif not is_file:
                continue  # a socket, a fifo, a device: never an input
            elif accepts(sub):
                found.append(InputFile(sub, rel / entry.name))
            else:
                ignored.append(sub)

    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            walk(path, Path(), frozenset({_identity(path.stat())}))
        elif path.exists():
            found.append(InputFile(path, Path(path.name)))
        elif path.is_symlink():
            problems.append((raw, f"broken symbolic link (to {os.readlink(path)})"))
        else:
            problems.append((raw, "no such file or folder"))
    return found, ignored, problems


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


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


class ScoreTable:
    """A CSV of one row per item, keyed by its name (the first column), that a scoring stage rewrites whole and
    atomically after each batch, so it never holds a half-written row. Rows of an earlier run into the same
    folder with the same header are kept (the inputs that run skips have their outputs there already); a file
    of other columns is replaced. Under torchrun each process writes its own file (NAME.rankN.csv)."""

    def __init__(self, folder: Path | None, name: str, header: list[str]):
        self.header = list(header)
        self.path = None
        if name and folder is not None:
            path = Path(folder) / name
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                path = path.with_name(f"{path.stem}.rank{os.environ.get('RANK', '0')}{path.suffix}")
            self.path = path
        self.rows = self._rows_already_there()

    def _rows_already_there(self) -> dict:
        import csv

        if self.path is None or not self.path.is_file():
            return {}
        try:
            with open(self.path, encoding="utf-8", newline="") as handle:
                lines = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError):
            return {}
        if not lines or lines[0] != self.header:
            return {}
        return {row[0]: row for row in lines[1:] if len(row) == len(self.header)}

    def set(self, row: list[str]) -> None:
        """Add or replace the row of item row[0] (an item scored again keeps one row)."""
        self.rows[row[0]] = [str(v) for v in row]

    def record(self, name: str, cells: list[str], value: float, threshold: float, message: str) -> bool:
        """Add item `name`'s row, [name, *cells, threshold, unusual], where unusual says whether `value` is above
        the threshold; an unusual item is warned about (an InputWarning naming it: "unusual input: MESSAGE")."""
        import warnings

        from transmute.errors import InputWarning

        unusual = value > threshold
        self.set([name, *cells, f"{threshold:.4f}", "yes" if unusual else "no"])
        if unusual:
            warnings.warn(InputWarning(f"unusual input: {message}", item=name))
        return unusual

    def write(self) -> None:
        import csv

        if self.path is None:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows.values())
