"""Finding, loading and isolating plugins.

Plugins come from the entry-point group `transmute` (built-in ones too) or are
registered in-process with `Manager.add`. A plugin that fails to import or
whose hook raises is marked failed with a one-line reason, anything it had
registered is dropped, and every other plugin keeps working.

TRANSMUTE_PLUGINS=a,b loads only those plugins; TRANSMUTE_DISABLE_PLUGINS=a,b
(or `transmute --disable-plugin NAME`) skips some.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from transmute import hookspecs
from transmute.errors import one_line

ENTRY_POINT_GROUP = "transmute"


@dataclass
class PluginInfo:
    name: str
    module: str = ""
    version: str = ""
    status: str = "ok"  # ok | failed | disabled
    reason: str = ""
    hooks: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    pipelines: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self, registry: "Registry | None" = None) -> dict:
        out = {
            "name": self.name, "version": self.version, "module": self.module,
            "status": self.status, "reason": self.reason, "hooks": self.hooks,
            "pipelines": self.pipelines, "models": self.models, "commands": self.commands, "warnings": self.warnings,
        }
        if registry is not None:
            out["stages"] = [registry.stages[s].describe() for s in self.stages if s in registry.stages]
        else:
            out["stages"] = list(self.stages)
        return out


@dataclass
class Registry:
    stages: dict[str, type] = field(default_factory=dict)
    stage_plugin: dict[str, str] = field(default_factory=dict)
    pipelines: dict[str, Path] = field(default_factory=dict)
    pipeline_plugin: dict[str, str] = field(default_factory=dict)
    models: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (path, description)
    model_plugin: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # plugin name -> why it is not loaded

    def why_missing(self, stage_name: str) -> str:
        """A hint for an unknown stage type whose prefix names a disabled or failed plugin."""
        plugin = stage_name.split(".", 1)[0]
        reason = self.unavailable.get(plugin)
        return f" (plugin '{plugin}' is not loaded: {reason})" if reason else ""

    def drop(self, plugin: str) -> None:
        for table, owner in ((self.stages, self.stage_plugin), (self.pipelines, self.pipeline_plugin),
                             (self.models, self.model_plugin)):
            for key in [k for k, p in owner.items() if p == plugin]:
                table.pop(key, None)
                owner.pop(key, None)


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


class Manager:
    def __init__(self, disabled: set[str] | None = None, only: set[str] | None = None):
        self.pm = pluggy.PluginManager("transmute")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registry = Registry()
        self.disabled = set(disabled or ()) | (_names_from_env("TRANSMUTE_DISABLE_PLUGINS") or set())
        self.only = only if only is not None else _names_from_env("TRANSMUTE_PLUGINS")
        self._groups_filled: set[str] = set()

    # ---------------------------------------------------------------- loading
    def load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.plugins:
                continue
            info = PluginInfo(ep.name, module=ep.value)
            try:
                info.version = ep.dist.version if ep.dist is not None else ""
            except Exception:  # a broken distribution must not stop the others
                info.version = ""
            self.plugins[ep.name] = info
            if (self.only is not None and ep.name not in self.only) or ep.name in self.disabled:
                info.status, info.reason = "disabled", "disabled by configuration"
                self.registry.unavailable[ep.name] = "disabled by TRANSMUTE_PLUGINS, TRANSMUTE_DISABLE_PLUGINS or --disable-plugin"
                continue
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
                if isinstance(exc, KeyboardInterrupt):
                    raise
                info.status, info.reason = "failed", f"import failed: {one_line(exc)}"
                self.registry.unavailable[ep.name] = info.reason
                continue
            self._register(module, info)

    def add(self, module: Any, name: str, version: str = "") -> PluginInfo:
        """Register an in-process plugin object (module or class instance with hookimpls)."""
        info = PluginInfo(name, module=getattr(module, "__name__", repr(module)), version=version)
        self.plugins[name] = info
        if name in self.disabled or (self.only is not None and name not in self.only):
            info.status, info.reason = "disabled", "disabled by configuration"
            return info
        self._register(module, info)
        return info

    def _register(self, module: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            info.status, info.reason = "failed", f"registration failed: {one_line(exc)}"
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])
        self._call_one(info, "register_stages", register=self._stage_registrar(info))
        self._call_one(info, "register_pipelines", register=self._pipeline_registrar(info))
        self._call_one(info, "register_models", register=self._model_registrar(info))

    def _impl_of(self, info: PluginInfo, hookname: str):
        plugin = self.pm.get_plugin(info.name)
        for impl in getattr(self.pm.hook, hookname).get_hookimpls():
            if impl.plugin is plugin:
                return impl
        return None

    def _call_one(self, info: PluginInfo, hookname: str, **kwargs) -> None:
        if info.status != "ok":
            return
        impl = self._impl_of(info, hookname)
        if impl is None:
            return
        try:
            impl.function(**{a: kwargs[a] for a in impl.argnames})
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.fail(info.name, f"{hookname} failed: {one_line(exc)}")

    def fail(self, name: str, reason: str) -> None:
        info = self.plugins[name]
        info.status, info.reason = "failed", reason
        self.registry.drop(name)
        self.registry.unavailable[name] = reason
        info.stages, info.pipelines, info.models = [], [], []
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def _stage_registrar(self, info: PluginInfo):
        from transmute.stages import Stage

        def register(stage_class):
            if not (isinstance(stage_class, type) and issubclass(stage_class, Stage)):
                raise TypeError(f"register_stages: {stage_class!r} is not a transmute.stages.Stage subclass")
            if not stage_class.name:
                raise TypeError(f"register_stages: {stage_class.__name__} has no name")
            owner = self.registry.stage_plugin.get(stage_class.name)
            if owner is not None and owner != info.name:
                info.warnings.append(f"stage '{stage_class.name}' already registered by plugin '{owner}'; kept that one")
                return
            self.registry.stages[stage_class.name] = stage_class
            self.registry.stage_plugin[stage_class.name] = info.name
            info.stages.append(stage_class.name)

        return register

    def _pipeline_registrar(self, info: PluginInfo):
        def register(path, name: str | None = None):
            path = Path(path)
            name = name or path.stem
            owner = self.registry.pipeline_plugin.get(name)
            if owner is not None and owner != info.name:
                info.warnings.append(f"pipeline '{name}' already registered by plugin '{owner}'; kept that one")
                return
            self.registry.pipelines[name] = path
            self.registry.pipeline_plugin[name] = info.name
            info.pipelines.append(name)

        return register

    def _model_registrar(self, info: PluginInfo):
        def register(name: str, path, description: str = ""):
            owner = self.registry.model_plugin.get(name)
            if owner is not None and owner != info.name:
                info.warnings.append(f"model '{name}' already registered by plugin '{owner}'; kept that one")
                return
            self.registry.models[name] = (Path(path), description)
            self.registry.model_plugin[name] = info.name
            info.models.append(name)

        return register

    def add_commands(self, cli) -> None:
        """Let plugins add top-level commands (register_commands(cli))."""
        self._fill(cli, "register_commands", cli=cli)

    def add_subcommands(self, group, hookname: str) -> None:
        """Let plugins add commands to a group (register_trainers/register_evaluators(register))."""
        self._fill(group, hookname, register=group.add_command)

    def _fill(self, group, hookname: str, **kwargs) -> None:
        if hookname in self._groups_filled:
            return
        self._groups_filled.add(hookname)
        for info in list(self.plugins.values()):
            before = set(group.commands)
            self._call_one(info, hookname, **kwargs)
            added = sorted(set(group.commands) - before)
            if info.status != "ok":  # a hook that failed half-way adds nothing
                for name in added:
                    group.commands.pop(name, None)
                continue
            prefix = "" if hookname == "register_commands" else f"{group.name} "
            info.commands.extend(prefix + name for name in added)


_manager: Manager | None = None
_cli_disabled: set[str] = set()


def disable(name: str) -> None:
    """Disable a plugin before the manager is first created (used by the CLI flag)."""
    _cli_disabled.add(name)


def configuration_warnings(cli_disabled=()) -> list[str]:
    """One line per plugin name in --disable-plugin, TRANSMUTE_DISABLE_PLUGINS or TRANSMUTE_PLUGINS
    that no installed plugin has (a typo would otherwise disable nothing, or everything, silently)."""
    from transmute.stages import suggest

    sources = [("--disable-plugin", set(cli_disabled)),
               ("TRANSMUTE_DISABLE_PLUGINS", _names_from_env("TRANSMUTE_DISABLE_PLUGINS")),
               ("TRANSMUTE_PLUGINS", _names_from_env("TRANSMUTE_PLUGINS"))]
    if not any(names for _, names in sources):
        return []
    known = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    return [f"{where}: no plugin named '{name}'{suggest(name, known)}; installed plugins: {', '.join(known)}"
            for where, names in sources for name in sorted(set(names or ()) - set(known))]


def get_manager() -> Manager:
    global _manager
    if _manager is None:
        _manager = Manager(disabled=_cli_disabled)
        _manager.load_entry_points()
    return _manager


def reset_manager(manager: Manager | None = None) -> None:
    """For tests and embedding: drop (or replace) the process-wide manager."""
    global _manager
    _manager = manager
