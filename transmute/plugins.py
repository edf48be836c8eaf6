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
    builtin: bool = False  # an entry point of the transmute distribution itself
    stage_classes: dict[str, type] = field(default_factory=dict)  # name -> the class this plugin registered
    failed_stages: list[dict] = field(default_factory=list)  # {"name", "class", "reason"}: refused, the rest load
    replaced_by: dict[str, str] = field(default_factory=dict)  # a stage of ours -> the plugin that replaced it

    def as_dict(self, registry: "Registry | None" = None) -> dict:
        out = {
            "name": self.name, "version": self.version, "module": self.module, "builtin": self.builtin,
            "status": self.status, "reason": self.reason, "hooks": self.hooks,
            "pipelines": self.pipelines, "models": self.models, "commands": self.commands, "warnings": self.warnings,
            "failed_stages": self.failed_stages, "replaced_by": self.replaced_by,
        }
        if registry is not None:
            out["stages"] = [self.stage_classes[s].describe() for s in self.stages]
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
    failed_stages: dict[str, str] = field(default_factory=dict)  # stage name -> why it was refused
    replaced: dict[str, tuple[str, type]] = field(default_factory=dict)  # stage name -> (its plugin, its class)
    uncalled_hooks: dict[str, str] = field(default_factory=dict)  # plugin name -> its first hook_warnings line

    def why_missing(self, stage_name: str) -> str:
        """A hint for an unknown stage type that was refused, or whose prefix names a disabled or failed plugin."""
        if stage_name in self.failed_stages:
            return f" (its plugin registered it, but it was refused: {self.failed_stages[stage_name]})"
        plugin = stage_name.split(".", 1)[0]
        reason = self.unavailable.get(plugin)
        if reason:
            return f" (plugin '{plugin}' is not loaded: {reason})"
        uncalled = self.uncalled_hooks.get(plugin)
        return f" (plugin '{plugin}' registered nothing under that name: {uncalled})" if uncalled else ""

    def drop(self, plugin: str) -> None:
        for table, owner in ((self.stages, self.stage_plugin), (self.pipelines, self.pipeline_plugin),
                             (self.models, self.model_plugin)):
            for key in [k for k, p in owner.items() if p == plugin]:
                table.pop(key, None)
                owner.pop(key, None)
                if table is self.stages and key in self.replaced:  # the replaced stage comes back
                    owner[key], table[key] = self.replaced.pop(key)


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
        """Built-in plugins first, then the others by name: a built-in stage keeps its name
        unless a plugin declares that it replaces it (Stage.replaces)."""
        entry_points = [(ep, _is_builtin(ep)) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
        for ep, builtin in sorted(entry_points, key=lambda pair: (not pair[1], pair[0].name)):
            if ep.name in self.plugins:
                continue
            info = PluginInfo(ep.name, module=ep.value, builtin=builtin)
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
        needs = api_problem(getattr(module, "requires_api", None))
        if needs:
            info.status, info.reason = "failed", needs
            self.registry.unavailable[info.name] = needs
            return
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            info.status, info.reason = "failed", f"registration failed: {one_line(exc)}"
            self.registry.unavailable[info.name] = info.reason
            return
        callers = self.pm.get_hookcallers(module) or []
        info.hooks = sorted(h.name for h in callers if h.has_spec())
        uncalled = hook_warnings(module, [h.name for h in callers if not h.has_spec()])
        info.warnings.extend(uncalled)
        if uncalled:  # its stages are "unknown" to a pipeline: say why there too
            self.registry.uncalled_hooks[info.name] = uncalled[0]
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
        info.stage_classes = {}
        for failed in info.failed_stages:  # a failed plugin is the reason now, not its refused stages
            self.registry.failed_stages.pop(failed["name"], None)
        info.failed_stages = []
        for other in self.plugins.values():
            for stage in [s for s, by in other.replaced_by.items() if by == name]:
                del other.replaced_by[stage]
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def _stage_registrar(self, info: PluginInfo):
        from transmute.stages import contract_problem

        def register(stage_class):
            try:
                problem = contract_problem(stage_class)
            except Exception as exc:  # noqa: BLE001 - a class odd enough to break the check is refused too
                problem = f"cannot be checked: {one_line(exc)}"
            name = getattr(stage_class, "name", None)
            name = name if isinstance(name, str) and name else getattr(stage_class, "__name__", repr(stage_class))
            if problem is None and name in info.stage_classes:
                if info.stage_classes[name] is stage_class:
                    return  # the same class twice: harmless, listed once
                problem = (f"registered twice by this plugin ({info.stage_classes[name].__name__} and "
                           f"{stage_class.__name__}); give each class its own name")
                self._unregister_stage(info, name)
            elif problem is None and any(f["name"] == name for f in info.failed_stages):
                problem = f"registered twice by this plugin (also by {stage_class.__name__}); give each class its own name"
            if problem is not None:
                self._refuse_stage(info, name, getattr(stage_class, "__name__", repr(stage_class)), problem)
                return
            self._add_stage(info, stage_class)

        return register

    def _refuse_stage(self, info: PluginInfo, name: str, class_name: str, reason: str) -> None:
        for failed in info.failed_stages:
            if failed["name"] == name:  # one line per stage name
                failed["reason"] = reason
                break
        else:
            info.failed_stages.append({"name": name, "class": class_name, "reason": reason})
        self.registry.failed_stages.setdefault(name, f"stage '{name}' ({class_name}) of plugin '{info.name}': {reason}")

    def _unregister_stage(self, info: PluginInfo, name: str) -> None:
        info.stages.remove(name)
        info.stage_classes.pop(name)
        for key in [k for k, cls in self.registry.stages.items()
                    if self.registry.stage_plugin.get(k) == info.name and cls.name == name]:
            if key in self.registry.replaced:
                previous, self.registry.stages[key] = self.registry.replaced.pop(key)
                self.registry.stage_plugin[key] = previous
                self.plugins[previous].replaced_by.pop(key, None)
            else:
                del self.registry.stages[key], self.registry.stage_plugin[key]

    def _add_stage(self, info: PluginInfo, stage_class) -> None:
        registry, name, replaces = self.registry, stage_class.name, stage_class.replaces
        owner = registry.stage_plugin.get(name)
        if owner is not None and owner != info.name and info.builtin and not self.plugins[owner].builtin:
            # A plugin added in-process before the built-ins loaded holds a built-in name.
            holder = registry.stages[name]
            if holder.replaces == name:  # on purpose: it stays, as if the built-in had come first
                registry.replaced[name] = (info.name, stage_class)
                info.replaced_by[name] = owner
                stale = f"stage '{holder.name}' replaces '{name}', which no loaded plugin provides"
                self.plugins[owner].warnings = [w for w in self.plugins[owner].warnings if w != stale]
                info.stages.append(name)
                info.stage_classes[name] = stage_class
                return
            loser = self.plugins[owner]
            self._unregister_stage(loser, holder.name)
            loser.warnings = [w for w in loser.warnings if not w.startswith(f"stage '{holder.name}' ")]
            loser.warnings.append(f"stage '{name}' is a built-in stage of plugin '{info.name}'; kept that one "
                                  f"(a stage that means to take it over declares replaces = '{name}')")
            owner = None
        if owner is not None and owner != info.name and replaces != name:
            how = "built-in stage of plugin" if self.plugins[owner].builtin else "stage already registered by plugin"
            info.warnings.append(f"stage '{name}' is a {how} '{owner}'; kept that one (a stage that means to "
                                 f"take it over declares replaces = '{name}')")
            return
        if replaces is not None:
            current = registry.stage_plugin.get(replaces)
            if current is None:
                info.warnings.append(f"stage '{name}' replaces '{replaces}', which no loaded plugin provides")
            elif replaces in registry.replaced:
                winner = registry.stages[replaces].name
                info.warnings.append(f"stage '{name}' replaces '{replaces}', but plugin '{current}' replaced it "
                                     f"first (with '{winner}'); kept that one")
                if replaces == name:
                    return
                replaces = None
            elif current == info.name:
                replaces = None
            else:
                registry.replaced[replaces] = (current, registry.stages[replaces])
                self.plugins[current].replaced_by[replaces] = info.name
            if replaces is not None:
                registry.stages[replaces], registry.stage_plugin[replaces] = stage_class, info.name
        prefix = name.split(".", 1)[0]
        if prefix != info.name and stage_class.replaces != name:
            info.warnings.append(f"stage '{name}' is outside this plugin's prefix '{info.name}.': name it "
                                 f"'{info.name}.{name.split('.', 1)[1]}' (stage names are global), or declare "
                                 f"replaces = '{name}' to take over another plugin's stage")
        registry.stages[name], registry.stage_plugin[name] = stage_class, info.name
        info.stages.append(name)
        info.stage_classes[name] = stage_class

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


def _is_builtin(ep) -> bool:
    try:
        return ep.dist is not None and (ep.dist.metadata["Name"] or "").lower() == "transmute"
    except Exception:  # a broken distribution is not ours
        return False


def api_problem(requirement) -> str | None:
    """Why a plugin's `requires_api` is not met by this transmute, in one line; None when it is."""
    from transmute import PLUGIN_API_VERSION
    from transmute.hookspecs import api_satisfies

    if requirement is None:
        return None
    try:
        if api_satisfies(requirement):
            return None
    except ValueError as exc:
        return f"requires_api: {exc}"
    lower = [c for c in str(requirement).split(",") if not c.strip().startswith(("<", "!="))]
    if lower and not api_satisfies(",".join(lower)):  # this transmute is too old for it
        advice = "upgrade transmute, or install a version of the plugin made for it"
    else:  # too new: "upgrade transmute" would not help
        advice = "install a version of the plugin made for it, or a transmute that provides what it needs"
    return (f"needs plugin API {requirement} (its requires_api), but this transmute provides "
            f"{PLUGIN_API_VERSION}: {advice}")


def hook_warnings(module, unknown_hooks) -> list[str]:
    """Functions that look like hooks but are never called: marked @hookimpl under a name
    transmute has no hook for, or named like a hook but not marked."""
    import difflib
    import inspect

    from transmute.stages import suggest

    hooks = hookspecs.HOOK_NAMES
    out = [f"{name}() is marked @hookimpl, but transmute has no hook of that name{suggest(name, hooks)}; "
           "it is never called" for name in sorted(unknown_hooks)]
    if not inspect.ismodule(module):
        return out
    for attr, value in sorted(vars(module).items()):
        if not inspect.isfunction(value) or value.__module__ != module.__name__:
            continue
        if hasattr(value, f"{hookspecs.PROJECT}_impl"):
            continue
        if attr in hooks:
            out.append(f"{attr}() looks like the hook '{attr}' but is not marked @hookimpl "
                       "(from transmute.hookspecs import hookimpl); it is never called")
        elif difflib.get_close_matches(attr, hooks, n=1, cutoff=0.85):  # a typo, not a helper like register_all
            out.append(f"{attr}() looks like a hook{suggest(attr, hooks)} but is neither spelled as one nor marked "
                       "@hookimpl; it is never called")
    return out


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
