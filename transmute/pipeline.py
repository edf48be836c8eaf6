"""Pipeline files: ordered stages with parameters, checked before any compute.

    [pipeline]
    description = "wav -> log-mel -> Griffin-Lim -> wav"
    batch_size = 8

    [[stage]]
    use = "audio.load"        # the stage type, as `transmute stages` lists it
    name = "load"             # optional; defaults to the part after the dot
    sample_rate = 22050       # every other key is a parameter of the stage

Two keys name a step, and they are different things:
- `use` is the stage *type*: which registered stage class runs ("audio.logmel";
  this is the class's `Stage.name`, "plugin.stage"). Required.
- `name` is this *step's* name within the pipeline ("mel"): what
  `--set mel.n_mels=128` and error messages refer to, and what Stage.label
  holds. Optional; it defaults to the part of `use` after the dot, and must be
  unique, so a pipeline that uses one type twice names at least one of them.

A pipeline is found by path or by name among registered pipelines. Every error
names the file, the step (name and type) and the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transmute.errors import PipelineError, SpecMismatch, TransmuteError
from transmute.signals import File, type_name
from transmute.stages import ParamError, Stage, suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PIPELINE_KEYS = {"description": str, "batch_size": int, "device": str}
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Pipeline:
    name: str
    source: str  # file path, for messages
    stages: list[Stage]
    specs: list[Any]  # specs[i] is what stage i produces
    description: str = ""
    batch_size: int = 8
    device: str = "auto"
    settings: dict = field(default_factory=dict)

    @property
    def first(self) -> Stage:
        return self.stages[0]

    @property
    def saver(self) -> Stage:
        return self.stages[-1]

    @property
    def transforms(self) -> list[Stage]:
        return self.stages[1:-1]

    @property
    def is_generator(self) -> bool:
        return self.first.role() == "generator"

    def describe(self) -> dict:
        stages = []
        for stage, spec in zip(self.stages, self.specs):
            stages.append({
                "name": stage.label, "use": stage.name, "role": stage.role(),
                "consumes": [type_name(t) for t in stage.consumed_types()] or ["nothing"],
                "produces": type_name(stage.produces), "params": _jsonable(stage.values),
                "spec": _jsonable(_spec_dict(spec)),
            })
        return {"name": self.name, "source": self.source, "description": self.description,
                "batch_size": self.batch_size, "device": self.device, "stages": stages}


def _spec_dict(spec):
    import dataclasses

    if spec is None:
        return None
    return dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else str(spec)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- finding


def find_pipeline(ref: str, registry) -> Path:
    """A pipeline by path (anything with a slash or ending in .toml) or by registered name."""
    path = Path(ref).expanduser()
    if path.is_dir():
        raise PipelineError(f"{ref}: is a folder, not a pipeline file (.toml)")
    if ref.endswith(".toml") or "/" in ref or path.is_file():
        if not path.is_file():
            raise PipelineError(f"{ref}: pipeline file not found")
        return path
    if ref in registry.pipelines:
        return registry.pipelines[ref]
    known = sorted(registry.pipelines)
    raise PipelineError(
        f"no pipeline named '{ref}'{suggest(ref, known)}; known: {', '.join(known) or 'none'} "
        "(or give a path to a .toml file)"
    )


def read_pipeline_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read pipeline file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: invalid TOML: {exc}") from None


# --------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A --set value: a TOML literal (1, 2.5, true, [1, 2], "x"), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list) -> list[tuple[str, str, Any]]:
    """'stage.param=value' strings (values as TOML literals), or ready (stage, param, value) tuples."""
    out = []
    for item in items:
        if isinstance(item, tuple):
            out.append(item)
            continue
        key, sep, value = item.partition("=")
        stage, dot, param = key.strip().partition(".")
        if not sep or not dot or not stage or not param:
            raise PipelineError(f"--set {item!r}: expected STAGE.PARAM=VALUE (or pipeline.KEY=VALUE)")
        out.append((stage, param, parse_value(value.strip())))
    return out


# --------------------------------------------------------------------------- building


def _installed(registry):
    """The registry given, else the installed plugins' (what a plugin's command runs with)."""
    if registry is not None:
        return registry
    from transmute.plugins import get_manager

    return get_manager().registry


def read_pipeline(ref: str, registry=None) -> tuple[dict, Path]:
    """A pipeline by registered name or path, read: (its contents in pipeline-file form, its path).

    For a command that changes a pipeline before running it (a stage's `use`,
    a value): change the dict, then build_from_dict(doc, source=str(path),
    name=ref) and pass the Pipeline to transmute.run; messages still name the file.
    """
    path = find_pipeline(ref, _installed(registry))
    return read_pipeline_file(path), path


def stage_type(use: str, registry=None) -> type[Stage] | None:
    """The installed stage class that `use` names ("plugin.stage"), or None: e.g. to see its params."""
    return _installed(registry).stages.get(use)


def build_pipeline(ref: str, registry, overrides: list[str] | None = None) -> Pipeline:
    path = find_pipeline(ref, registry)
    doc = read_pipeline_file(path)
    name = ref if ref in registry.pipelines and registry.pipelines[ref] == path else path.stem
    return build_from_dict(doc, registry, source=str(path), name=name, overrides=overrides or [])


def build_from_dict(doc: dict, registry=None, source: str = "<pipeline>", name: str = "pipeline",
                    overrides: list[str] | None = None) -> Pipeline:
    """A checked Pipeline from a dict in pipeline-file form (registry: the installed plugins' by default)."""
    registry = _installed(registry)
    where = source
    unknown = set(doc) - {"pipeline", "stage"}
    if unknown:
        key = sorted(unknown)[0]
        raise PipelineError(f"{where}: unknown top-level key '{key}'{suggest(key, ['pipeline', 'stage'])}")
    if not isinstance(doc.get("pipeline", {}), dict):
        raise PipelineError(f"{where}: 'pipeline' must be a [pipeline] table")
    settings = dict(doc.get("pipeline", {}))
    raw_stages = doc.get("stage", [])
    if not isinstance(raw_stages, list) or not raw_stages:
        raise PipelineError(f"{where}: no stages; add [[stage]] tables with a 'use' key")

    configs: list[dict] = []
    labels: dict[str, int] = {}
    for i, raw in enumerate(raw_stages, 1):
        if not isinstance(raw, dict):
            raise PipelineError(f"{where}: stage {i} must be a [[stage]] table")
        raw = dict(raw)
        use = raw.pop("use", None)
        if not use:
            raise PipelineError(f"{where}: stage {i}: missing 'use' (the stage type, e.g. \"audio.load\")")
        if not isinstance(use, str):
            raise PipelineError(f"{where}: stage {i}: 'use' must be a stage type name in quotes, got {use!r}")
        if use not in registry.stages:
            raise PipelineError(
                f"{where}: stage {i}: unknown stage type '{use}'{suggest(use, registry.stages)}"
                f"{registry.why_missing(use)}; `transmute stages` lists the installed ones"
            )
        label = raw.pop("name", use.rsplit(".", 1)[-1])
        if not isinstance(label, str) or not label.strip() or "." in label:
            raise PipelineError(f"{where}: stage {i}: 'name' must be a non-empty name without dots, got {label!r} "
                                "('name' is this step's name for --set; 'use' is the stage type)")
        if label in labels or label == "pipeline":
            raise PipelineError(f"{where}: stage {i}: name '{label}' is used twice; give one a distinct `name = ...` "
                                f"(a step's name defaults to the part of its `use` after the dot)")
        labels[label] = i
        configs.append({"use": use, "name": label, "values": raw})

    base = Path(source).parent if Path(source).is_file() else None
    if base is not None:  # paths written in a file are relative to that file, like the file's own references
        for cfg in configs:
            params = registry.stages[cfg["use"]].params
            for key, value in cfg["values"].items():
                if key in params and params[key].type is Path and isinstance(value, str) and value:
                    path = Path(value).expanduser()
                    cfg["values"][key] = str(path if path.is_absolute() else base / path)

    for stage_label, key, value in parse_overrides(overrides or []):
        if stage_label == "pipeline":
            settings[key] = value
            continue
        if stage_label not in labels:
            raise PipelineError(
                f"{where}: --set {stage_label}.{key}: no stage named '{stage_label}'"
                f"{suggest(stage_label, labels)}; stage names (their `name` key, default the part of `use` after "
                f"the dot): {', '.join(labels)}"
            )
        configs[labels[stage_label] - 1]["values"][key] = value

    for key, value in settings.items():
        if key not in PIPELINE_KEYS:
            raise PipelineError(f"{where}: [pipeline]: unknown key '{key}'{suggest(key, PIPELINE_KEYS)}")
        expected = PIPELINE_KEYS[key]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise PipelineError(f"{where}: [pipeline]: '{key}' must be {expected.__name__}, got {value!r}")
    batch_size = settings.get("batch_size", 8)
    if batch_size < 1:
        raise PipelineError(f"{where}: [pipeline]: 'batch_size' must be at least 1, got {batch_size}")
    device = settings.get("device", "auto")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise PipelineError(f"{where}: [pipeline]: 'device' must be auto, cpu or cuda, got {device!r}")

    stages: list[Stage] = []
    types: dict[str, str] = {}  # step label -> how its stage type is named in messages
    for cfg in configs:
        cls = registry.stages[cfg["use"]]
        types[cfg["name"]] = _type_ref(cfg["use"], cls, registry)
        try:
            stages.append(cls(label=cfg["name"], **cfg["values"]))
        except ParamError as exc:
            raise PipelineError(f"{where}: stage '{cfg['name']}' ({types[cfg['name']]}): {exc}") from None

    specs = check_chain(stages, where, types)
    return Pipeline(name=name, source=where, stages=stages, specs=specs,
                    description=str(settings.get("description", "")), batch_size=batch_size,
                    device=device, settings=settings)


def _type_ref(use: str, cls, registry) -> str:
    """'audio.logmel', or where another plugin replaced it, who did: its parameters and checks are theirs."""
    if use not in getattr(registry, "replaced", {}):
        return use
    by = registry.stage_plugin.get(use, "?")
    return f"{use}, replaced by plugin {by}" if cls.name == use else f"{use}, replaced by {cls.name} of plugin {by}"


def _stage_ref(where: str, stage: Stage, types: dict[str, str] | None = None) -> str:
    return f"{where}: stage '{stage.label}' ({(types or {}).get(stage.label, stage.name)})"


def check_chain(stages: list[Stage], where: str, types: dict[str, str] | None = None) -> list[Any]:
    """Check roles, signal types and specs from first to last stage; return the specs.

    types: step label -> the stage type as messages name it (default: the class's name).
    """
    first, last = stages[0], stages[-1]
    if first.role() not in ("loader", "generator"):
        raise PipelineError(
            f"{_stage_ref(where, first, types)}: the first stage must load files or generate, "
            f"but it consumes {type_name(first.consumed_types()[0])}"
        )
    if last.role() != "saver":
        raise PipelineError(f"{_stage_ref(where, last, types)}: the last stage must save files (e.g. audio.save)")
    if len(stages) < 2:
        raise PipelineError(f"{where}: a pipeline needs at least a first and a last stage")
    specs = []
    incoming = None
    previous = None
    for i, stage in enumerate(stages):
        if i > 0:
            if stage.role() in ("loader", "generator"):
                raise PipelineError(f"{_stage_ref(where, stage, types)}: only the first stage can load or generate")
            if previous.produces not in stage.consumed_types():
                wants = " or ".join(type_name(t) for t in stage.consumed_types())
                raise PipelineError(
                    f"{_stage_ref(where, stage, types)} consumes {wants}, but stage '{previous.label}' "
                    f"({previous.name}) produces {type_name(previous.produces)}"
                )
        if i < len(stages) - 1 and stage.produces is File:
            raise PipelineError(f"{_stage_ref(where, stage, types)}: only the last stage can save files")
        try:
            spec = stage.check(incoming)
        except SpecMismatch as exc:
            source = f" from stage '{previous.label}'" if previous is not None else ""
            raise PipelineError(
                f"{_stage_ref(where, stage, types)}: incoming {type_name(previous.produces) if previous else ''}"
                f"{source}: {exc}"
            ) from None
        except TransmuteError as exc:
            raise PipelineError(f"{_stage_ref(where, stage, types)}: {exc}") from None
        if stage.produces is not File:
            wanted = stage.produces.spec_type
            ref = _stage_ref(where, stage, types)
            if spec is None:
                raise PipelineError(f"{ref}: check() returned None; it must return the spec "
                                    f"it produces (a {wanted.__name__}; the plugin's author can fix this)")
            if not isinstance(spec, wanted):
                raise PipelineError(f"{ref}: check() returned a {type(spec).__name__}, but the "
                                    f"stage produces {type_name(stage.produces)}, whose spec is a {wanted.__name__} "
                                    "(the plugin's author can fix this)")
        specs.append(spec)
        incoming, previous = spec, stage
    return specs
