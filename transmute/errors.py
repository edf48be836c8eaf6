"""User-facing errors: one line that says what was wrong, where, and what to do."""

from __future__ import annotations

import os


class TransmuteError(Exception):
    """A problem the user can fix; shown as one line, never as a traceback.

    exit_code is the CLI's exit status for it: 1, or 130/143 for a run stopped by Ctrl-C/SIGTERM.
    """

    exit_code = 1


class PipelineError(TransmuteError):
    """A pipeline file or a stage combination that cannot work."""


class InputError(TransmuteError):
    """One input file that cannot be processed; the rest of a batch goes on."""


class InputWarning(UserWarning):
    """Something about one input that the user should know, though it was processed.

    Stages raise it with warnings.warn(message, InputWarning); the runner records
    it against the file being processed and the CLI prints it as one line.
    A transform, which sees a whole batch, names the item it is about:
    warnings.warn(InputWarning(message, item=signal.names[i])); one without
    an item is recorded against every item of the batch.
    """

    def __init__(self, message: str = "", item: str | None = None):
        super().__init__(message)
        self.item = item


class CheckpointError(TransmuteError):
    """A checkpoint that is missing, unreadable or for another model."""


class SpecMismatch(PipelineError):
    """A signal whose metadata does not match what the next stage needs."""

    def __init__(self, field: str, expected, got, hint: str = ""):
        self.field, self.expected, self.got = field, expected, got
        message = f"field '{field}' expected {expected!r}, got {got!r}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class OutputError(TransmuteError, OSError):
    """A file or folder that could not be written, with the user's path and the reason in words.

    An OSError too, so code that guards its writes with `except OSError` (the
    training loop keeps its last checkpoint safe that way) catches it whether
    the writer's own error or atomic_path's came first.
    """

    def __init__(self, message: str, reason: str, errno: int | None = None):
        super().__init__(errno or 0, reason)
        self.message, self.reason = message, reason

    def __str__(self) -> str:
        return self.message


def os_reason(exc: OSError) -> str:
    """What went wrong, in the words users know: 'permission denied', 'no space left on device'."""
    words = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    return words[:1].lower() + words[1:]


def one_line(exc: BaseException) -> str:
    """A single-line description of an exception, for batch reports."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, TransmuteError):
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return ": ".join([os_reason(exc), " -> ".join(names)] if names else [os_reason(exc)])
    if isinstance(exc, TransmuteError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
