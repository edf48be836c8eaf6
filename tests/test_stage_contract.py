"""The stage contract, checked when a plugin registers a stage class; the plugin API version.

In-process and cheap; tests/test_plugins.py installs real plugins that break it.
"""

import types
from pathlib import Path

import pytest

from transmute import PLUGIN_API_VERSION
from transmute.hookspecs import api_satisfies, hookimpl
from transmute.plugins import Manager, api_problem, hook_warnings
from transmute.signals import File, Images, Spectrogram, Waveform
from transmute.stages import Param, Stage, contract_problem


def stage(**attributes):
    """A stage class: a documented Waveform transform unless attributes say otherwise."""
    attributes = {"__doc__": "A stage.", "name": "fx.stage", "consumes": Waveform, "produces": Waveform,
                  "process": lambda self, signal: signal, **attributes}
    return type("Fx", (Stage,), attributes)


def test_a_stage_that_keeps_the_contract_passes():
    assert contract_problem(stage()) is None
    assert contract_problem(stage(consumes=(Waveform, Spectrogram), produces=File, process=Stage.process,
                                  save=lambda self, item, path: None, suffix=lambda self: ".x")) is None
    assert contract_problem(stage(consumes=None, generate=lambda self, count, names: None)) is None
    assert contract_problem(stage(params={"path": Param(Path, Path("missing"), "a file", must_exist=True),
                                          "limit": Param(float, None, "optional", nullable=True)})) is None


@pytest.mark.parametrize("attributes, problem", [
    ({"name": "gain"}, "name 'gain' is not a stage type \"plugin.stage\""),
    ({"name": ""}, "name '' is not a stage type"),
    ({"consumes": "Waveform"}, "consumes 'Waveform' must be a signal type from transmute.signals"),
    ({"consumes": ()}, "consumes () must be a signal type"),
    ({"produces": None}, "produces None must be a signal type from transmute.signals"),
    ({"produces": int}, "produces <class 'int'> must be a signal type"),
    ({"consumes": File, "produces": File}, "it loads and saves (consumes file, produces file); a stage does one"),
    ({"consumes": File}, "a loader must define load() (consumes file, produces Waveform)"),
    ({"consumes": Images, "produces": File, "save": lambda self, item, path: None},
     "a saver must define suffix() (consumes Images, produces file)"),
    ({"__doc__": None}, "no docstring; its first line is the summary `transmute stages` shows"),
    ({"params": [Param(int, 1)]}, "params must be a dict of {'key': Param(...)}, got list"),
    ({"params": {"gain": 1.0}}, "params['gain']: 1.0 is not a Param; declare it as Param(type, default, \"help\"), "
                                "e.g. Param(float, 1.0, \"...\")"),
    ({"params": {"mode": Param(str, "x", choices=("a", "b"))}},
     "params['mode']: its default 'x' is not a valid value: expected one of 'a', 'b', got 'x'"),
    ({"params": {"n": Param(complex, 1j)}}, "params['n']: type <class 'complex'> is not one of int, float"),
    ({"params": {"device": Param(str, "cpu")}}, "params['device']: 'device' is taken by the Stage base class"),
    ({"params": {"process": Param(int, 1)}}, "params['process']: 'process' is taken by the Stage base class"),
    ({"params": {"mode": Param(str, "a", choices="ab")}}, "params['mode']: choices 'ab' must be a list or tuple"),
    ({"params": {"n": Param(int, 1, min="0")}}, "params['n']: min '0' must be a number"),
    ({"params": {"n": Param(int, "1", min=0)}}, "params['n']: its default '1' is not a valid value: expected an integer"),
    ({"params": {"n": Param(str, "x", min=0)}}, "params['n']: its default 'x' cannot be checked: TypeError"),
    ({"replaces": "logmel"}, "replaces 'logmel' is not a stage type"),
    ({"extensions": "wav"}, "extensions must be a tuple of file suffixes"),
])
def test_each_breach_of_the_contract_is_named(attributes, problem):
    assert contract_problem(stage(**attributes)).startswith(problem)


def test_not_a_stage_class():
    assert contract_problem(object) == "<class 'object'> is not a subclass of transmute.stages.Stage"
    assert "is not a subclass" in contract_problem(stage()())


def test_an_unmet_api_requirement_says_which_way_to_go():
    assert api_problem(">=99.0").endswith("upgrade transmute, or install a version of the plugin made for it")
    for too_new in ("<1", ">=0.5,<1.0", "!=1.4"):
        assert api_problem(too_new).endswith(
            "install a version of the plugin made for it, or a transmute that provides what it needs"), too_new


def test_api_requirements():
    assert PLUGIN_API_VERSION == "1.4"
    for met in (">=1.0", ">=1.4", "1.4", ">=1", "==1.4", ">=1.0,<2", "<1.5", "!=0.9"):
        assert api_satisfies(met), met
    for unmet in (">=1.5", ">1.4", "<1", ">=2,<3", "!=1.4"):
        assert not api_satisfies(unmet), unmet
    assert api_satisfies(">=1.2", version="1.10")  # numbers, not strings
    with pytest.raises(ValueError, match="not a version requirement like '>=1.0'"):
        api_satisfies(">= one")
    assert api_problem(">=one") == ("requires_api: '>=one' is not a version requirement like '>=1.0' or "
                                    "'>=1.0,<2'")
    assert api_problem(None) is None and api_problem(">=1.0") is None


def test_a_replacement_is_undone_when_its_plugin_fails_later():
    manager = Manager(only={"audio", "late"})
    manager.load_entry_points()
    builtin = manager.registry.stages["audio.logmel"]

    class LateMel(builtin):
        """audio.logmel, replaced by a plugin whose next hook fails."""

        name = "late.logmel"
        replaces = "audio.logmel"

    late = types.ModuleType("transmute_late")
    late.register_stages = hookimpl(lambda register: register(LateMel))
    assert manager.add(late, "late").status == "ok"
    assert manager.registry.stages["audio.logmel"] is LateMel
    assert manager.plugins["audio"].replaced_by == {"audio.logmel": "late"}

    manager.fail("late", "a later hook failed")  # what a failing register_pipelines or command hook does
    assert manager.registry.stages["audio.logmel"] is builtin
    assert manager.registry.stage_plugin["audio.logmel"] == "audio"
    assert "late.logmel" not in manager.registry.stages
    assert manager.plugins["audio"].replaced_by == {}


def test_a_refused_stage_is_named_until_its_whole_plugin_fails():
    manager = Manager(only={"half"})
    half = types.ModuleType("transmute_half")
    half.register_stages = hookimpl(lambda register: register(stage(name="half.plain", params={"gain": 1.0})))
    assert manager.add(half, "half").status == "ok"
    assert manager.registry.why_missing("half.plain").startswith(
        " (its plugin registered it, but it was refused: stage 'half.plain' (Fx) of plugin 'half': params['gain']")
    manager.fail("half", "commands failed")
    assert manager.registry.why_missing("half.plain") == " (plugin 'half' is not loaded: commands failed)"
    assert manager.plugins["half"].failed_stages == []


def test_functions_that_look_like_hooks_but_are_never_called():
    module = types.ModuleType("transmute_typos")
    exec("def register_stages(register): pass\n"  # not marked
         "def register_pipeline(register): pass\n"  # misspelled and not marked
         "def register_all(register): pass\n"  # a helper: not a hook, not a warning
         "from os.path import join as register_models\n",  # imported, not defined here
         module.__dict__)
    assert hook_warnings(module, ["register_stage"]) == [
        "register_stage() is marked @hookimpl, but transmute has no hook of that name "
        "(did you mean 'register_stages'?); it is never called",
        "register_pipeline() looks like a hook (did you mean 'register_pipelines'?) but is neither spelled as one "
        "nor marked @hookimpl; it is never called",
        "register_stages() looks like the hook 'register_stages' but is not marked @hookimpl "
        "(from transmute.hookspecs import hookimpl); it is never called",
    ]
    module.register_stages = hookimpl(module.register_stages)
    assert len(hook_warnings(module, [])) == 1


def test_a_stage_of_a_plugin_whose_hook_is_never_called_says_why_it_is_unknown():
    module = types.ModuleType("transmute_typo")
    exec("from transmute.hookspecs import hookimpl\n"
         "@hookimpl\ndef register_stage(register): pass\n", module.__dict__)
    manager = Manager(only={"typo"})
    manager.add(module, "typo")
    assert manager.registry.why_missing("typo.gain") == (
        " (plugin 'typo' registered nothing under that name: register_stage() is marked @hookimpl, but transmute "
        "has no hook of that name (did you mean 'register_stages'?); it is never called)")
    assert manager.registry.why_missing("other.gain") == ""


def test_builtin_stages_keep_their_names_when_a_plugin_is_added_before_them():
    """Manager.add before load_entry_points (section 9 of the guide) must not let a plugin take a built-in name."""
    manager = Manager(only={"audio", "early", "eager"})
    impostor = stage(name="audio.logmel", __doc__="Claims audio.logmel.")
    early = types.ModuleType("transmute_early")
    early.register_stages = hookimpl(lambda register: register(impostor))
    assert manager.add(early, "early").stages == ["audio.logmel"]  # no built-in yet
    declared = stage(name="eager.save", replaces="audio.save", __doc__="Replaces audio.save, on purpose.",
                     consumes=Waveform, produces=File, process=Stage.process,
                     save=lambda self, item, path: None, suffix=lambda self: ".x")
    eager = types.ModuleType("transmute_eager")
    eager.register_stages = hookimpl(lambda register: register(declared))
    manager.add(eager, "eager")
    assert manager.plugins["eager"].warnings == ["stage 'eager.save' replaces 'audio.save', which no loaded plugin provides"]

    manager.load_entry_points()
    assert manager.registry.stage_plugin["audio.logmel"] == "audio"
    assert manager.registry.stages["audio.logmel"] is not impostor
    assert manager.plugins["early"].stages == []
    assert manager.plugins["early"].warnings == [
        "stage 'audio.logmel' is a built-in stage of plugin 'audio'; kept that one "
        "(a stage that means to take it over declares replaces = 'audio.logmel')"]
    assert manager.registry.stages["audio.save"] is declared
    assert manager.plugins["audio"].replaced_by == {"audio.save": "eager"}
    assert manager.plugins["eager"].warnings == []  # "replaces 'audio.save', which no loaded plugin provides" is gone
    assert "audio.save" in manager.plugins["audio"].stages

    manager.fail("eager", "gone")  # the built-in it replaced comes back
    assert manager.registry.stage_plugin["audio.save"] == "audio"


def test_a_pipeline_error_on_a_replaced_stage_names_the_plugin_that_replaced_it():
    # resynthesize sets n_fft on audio.logmel; when a plugin replaced it, "unknown parameter 'n_fft'" alone
    # would send the user looking at the built-in.
    from transmute.errors import PipelineError
    from transmute.pipeline import build_pipeline

    manager = Manager(only={"audio", "pipelines", "fastx"})
    mel = stage(name="fastx.logmel", replaces="audio.logmel", __doc__="Replaces audio.logmel.",
                produces=Spectrogram)
    fastx = types.ModuleType("transmute_fastx")
    fastx.register_stages = hookimpl(lambda register: register(mel))
    manager.load_entry_points()
    manager.add(fastx, "fastx")
    assert manager.registry.stages["audio.logmel"] is mel
    with pytest.raises(PipelineError, match=r"stage 'mel' \(audio\.logmel, replaced by fastx\.logmel of plugin "
                                            r"fastx\): unknown parameter 'n_fft'"):
        build_pipeline("resynthesize", manager.registry)
