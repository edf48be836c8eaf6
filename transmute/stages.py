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
import re
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
        elif t is str and isinstance(value, int) and not isinstance(value, bool):
            # `--set sample.class_name=3` parses as the TOML integer 3; a string parameter means "3".
            value = str(value)
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
    replaces: ClassVar[str | None] = None  # a stage type of another plugin this one takes over (see plugins.py)
    # The run's output folder, set by the runner before setup(): where a stage may write a report of the
    # whole run beside the outputs (e.g. a CSV of scores). None outside a run.
    output_dir: Path | None = None

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
            "replaces": cls.replaces,
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

    def require_spec(self, expected, got, hint: str = "") -> None:
        """Refuse an incoming spec that differs from `expected` (e.g. what a model was trained on) in any field,
        naming the first such field and both values."""
        from transmute.signals import spec_differences

        for field, want, have in spec_differences(expected, got):
            raise SpecMismatch(field, want, have, hint)

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


# --------------------------------------------------------------------------- the stage contract

STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_ROLE_METHODS = {"loader": ("load",), "generator": ("generate",), "transform": ("process",),
                 "saver": ("save", "suffix")}


def item_seed(seed: int, name: str) -> int:
    """The seed of one item of a generator (named NAME-i by the runner) or of a scored input: item i of a run
    with `seed` gets seed * 1000003 + i (another name: its CRC-32), so it is the same at any batch size."""
    import zlib

    index = name.rsplit("-", 1)[-1]
    return seed * 1_000_003 + (int(index) if index.isdigit() else zlib.crc32(name.encode()))


def _is_signal_type(t) -> bool:
    from transmute.signals import Signal

    return isinstance(t, type) and issubclass(t, Signal) and t is not Signal


def contract_problem(cls) -> str | None:
    """What is wrong with a stage class as declared, in one line; None when it keeps the contract.

    Checked when a plugin registers the class, so that a mistake in one stage is
    reported against that stage instead of breaking every listing later.
    """
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        return f"{cls!r} is not a subclass of transmute.stages.Stage"
    if not isinstance(cls.name, str) or not STAGE_NAME.fullmatch(cls.name):
        return (f"name {cls.name!r} is not a stage type \"plugin.stage\" "
                "(letters, digits and '_', one dot), e.g. name = \"my_fx.gain\"")
    if cls.replaces is not None and (not isinstance(cls.replaces, str) or not STAGE_NAME.fullmatch(cls.replaces)):
        return f"replaces {cls.replaces!r} is not a stage type \"plugin.stage\""
    consumed = cls.consumes if isinstance(cls.consumes, tuple) else (cls.consumes,)
    if cls.consumes is not None and cls.consumes is not File and not (
            consumed and all(_is_signal_type(t) for t in consumed)):
        return (f"consumes {cls.consumes!r} must be a signal type from transmute.signals (Waveform, Spectrogram, "
                "Images, Codes, Latents), a tuple of them, File (a loader) or None (a generator)")
    if cls.produces is not File and not _is_signal_type(cls.produces):
        return (f"produces {cls.produces!r} must be a signal type from transmute.signals "
                "(Waveform, Spectrogram, Images, Codes, Latents) or File (a saver)")
    if cls.produces is File and cls.consumes in (File, None):
        what = "loads" if cls.consumes is File else "generates"
        return f"it {what} and saves (consumes {type_name(cls.consumes)}, produces file); a stage does one of them"
    role = cls.role()
    for method in _ROLE_METHODS[role]:
        if getattr(cls, method) is getattr(Stage, method):
            return f"a {role} must define {method}() (consumes {type_name(cls.consumes)}, produces {type_name(cls.produces)})"
    if not (cls.__doc__ or "").strip():
        return "no docstring; its first line is the summary `transmute stages` shows"
    if not isinstance(cls.params, dict):
        return f"params must be a dict of {{'key': Param(...)}}, got {type(cls.params).__name__}"
    for key, param in cls.params.items():
        problem = _param_problem(key, param)
        if problem:
            return f"params[{key!r}]: {problem}"
    if not isinstance(cls.extensions, (tuple, list)) or not all(isinstance(e, str) for e in cls.extensions):
        return f"extensions must be a tuple of file suffixes like ('wav', 'flac'), got {cls.extensions!r}"
    return None


def _param_problem(key, param) -> str | None:
    if not isinstance(key, str) or not key.isidentifier():
        return "a parameter name must be a Python identifier"
    if hasattr(Stage, key) or key in ("label", "device", "values"):
        return f"'{key}' is taken by the Stage base class; choose another parameter name"
    if not isinstance(param, Param):
        return (f"{param!r} is not a Param; declare it as Param(type, default, \"help\"), "
                f"e.g. Param({type(param).__name__}, {param!r}, \"...\")")
    if param.type not in _TYPE_NAMES:
        return f"type {param.type!r} is not one of int, float, str, bool, list, dict, pathlib.Path"
    if param.choices is not None and not isinstance(param.choices, (list, tuple)):
        return f"choices {param.choices!r} must be a list or tuple of values"
    for bound in ("min", "max"):
        value = getattr(param, bound)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{bound} {value!r} must be a number"
    if not param.required and not (param.default is None and param.nullable):
        check = param if not param.must_exist else Param(param.type, param.default, choices=param.choices,
                                                          min=param.min, max=param.max)
        try:
            check.validate(param.default)
        except ValueError as exc:
            return f"its default {param.default!r} is not a valid value: {exc}"
        except Exception as exc:  # noqa: BLE001 - e.g. a str default compared with a numeric min
            return f"its default {param.default!r} cannot be checked: {type(exc).__name__}: {exc}"
    return None
