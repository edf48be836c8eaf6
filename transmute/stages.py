"""Stages: the typed steps a pipeline chains.

A stage class declares what it consumes and produces (signal types from
transmute.signals, File for loaders and savers, None for generators) and its
parameters (type, default, range, choices, help). The engine validates
parameters before a stage is built and checks the chain of specs before any
compute.

Kinds of stage, by what they consume and produce:
- loader:    consumes File, produces a signal     -> load(path) -> one-item signal
- generator: consumes None, produces a signal     -> generate(count, names) -> batch of len(names) items
- transform: consumes signals, produces a signal  -> process(batch) -> batch
- saver:     consumes signals, produces File      -> save(item, path); suffix()

Stage modules must stay cheap to import (no torch at module level) so that the
CLI can list them quickly; import heavy libraries inside methods.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from transmute.errors import SpecMismatch
from transmute.signals import File, type_name

REQUIRED = object()

_ACCEPTED = {str: ((str,), "a string"), list: ((list, tuple), "a list"), dict: ((dict,), "a table"),
             Path: ((str, Path), "a path")}
_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "table", Path: "path"}


@dataclass(frozen=True)
class Param:
    """A declared stage parameter.

    type: int, float, str, bool, list, dict or Path. An int is accepted where a
    float is wanted; bool is never taken for a number. nullable allows None
    (written "none" on the command line).
    """

    type: type
    default: Any = REQUIRED
    help: str = ""
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    must_exist: bool = False  # for Path parameters

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, getattr(self.type, "__name__", str(self.type)))

    def validate(self, value: Any) -> Any:
        """Return the value converted to the declared type, or raise ValueError."""
        if value is None or (self.nullable and isinstance(value, str) and value.lower() in ("none", "null")):
            if self.nullable:
                return None
            raise ValueError("must be set (it cannot be none)")
        t = self.type
        if t is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ValueError(f"expected an integer, got {value!r}")
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {value!r}")
            value = float(value)
        elif t in _ACCEPTED:
            accepted, what = _ACCEPTED[t]
            if not isinstance(value, accepted):
                raise ValueError(f"expected {what}, got {value!r}")
            if t is list:
                value = list(value)
            elif t is Path:
                value = Path(value).expanduser()
                if self.must_exist and not value.exists():
                    raise ValueError(f"file not found: {value}")
        if self.choices is not None and value not in self.choices:
            options = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"expected one of {options}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"must be at least {self.min}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be at most {self.max}, got {value!r}")
        return value

    def describe(self) -> dict:
        out = {"type": self.type_name(), "help": self.help}
        out["default"] = None if self.required else _jsonable(self.default)
        out["required"] = self.required
        if self.choices is not None:
            out["choices"] = [_jsonable(c) for c in self.choices]
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


def _jsonable(v):
    return str(v) if isinstance(v, Path) else v


class ParamError(ValueError):
    """A parameter problem; .key names the parameter."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Stage:
    """Base class for every stage. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""  # registry name, "plugin.stage"
    consumes: ClassVar[Any] = None  # a signal type, a tuple of them, File, or None
    produces: ClassVar[Any] = None
    params: ClassVar[dict[str, Param]] = {}
    extensions: ClassVar[tuple[str, ...]] = ()  # loaders: file suffixes accepted in folders

    def __init__(self, label: str | None = None, **values):
        self.label = label or self.name.rsplit(".", 1)[-1]
        self.device = "cpu"
        self.values = self.validate_params(values)
        for key, value in self.values.items():
            setattr(self, key, value)

    # ---------------------------------------------------------------- declaration
    @classmethod
    def validate_params(cls, values: dict) -> dict:
        out = {}
        for key in values:
            if key not in cls.params:
                raise ParamError(key, f"unknown parameter '{key}'{suggest(key, cls.params)}")
        for key, param in cls.params.items():
            if key in values:
                try:
                    out[key] = param.validate(values[key])
                except ValueError as exc:
                    raise ParamError(key, f"parameter '{key}': {exc}") from None
            elif param.required:
                raise ParamError(key, f"parameter '{key}' is required ({param.help or param.type_name()})")
            else:
                out[key] = param.default
        return out

    @classmethod
    def consumed_types(cls) -> tuple:
        if cls.consumes is None:
            return ()
        return cls.consumes if isinstance(cls.consumes, tuple) else (cls.consumes,)

    @classmethod
    def role(cls) -> str:
        if cls.consumes is None:
            return "generator"
        if cls.consumes is File:
            return "loader"
        if cls.produces is File:
            return "saver"
        return "transform"

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "role": cls.role(),
            "consumes": [type_name(t) for t in cls.consumed_types()] or ["nothing"],
            "produces": type_name(cls.produces),
            "summary": cls.summary(),
            "params": {k: p.describe() for k, p in cls.params.items()},
        }

    # ---------------------------------------------------------------- checking
    def check(self, incoming):
        """Given the incoming spec (None for loaders/generators), return the outgoing spec.

        Raise SpecMismatch (see require) when the incoming spec cannot work.
        The default passes the spec through unchanged.
        """
        return incoming

    def require(self, field: str, expected, got, hint: str = "") -> None:
        if expected != got:
            raise SpecMismatch(field, expected, got, hint)

    # ---------------------------------------------------------------- running
    def setup(self, device) -> None:
        """Called once before processing: load weights, move them to device."""
        self.device = device

    def accepts(self, path: Path) -> bool:
        """Loaders: whether a file found in an input folder is for this stage."""
        return not self.extensions or path.suffix.lower().lstrip(".") in self.extensions

    def load(self, path: Path):  # loader
        raise NotImplementedError

    def generate(self, count: int, names: list[str]):  # generator
        raise NotImplementedError

    def process(self, signal):  # transform
        raise NotImplementedError

    def suffix(self) -> str:  # saver: the extension of the files it writes, e.g. ".wav"
        raise NotImplementedError

    def save(self, item, path: Path) -> None:  # saver: write exactly `path` (format from params)
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} ({self.name})>"
