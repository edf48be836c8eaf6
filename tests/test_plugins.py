"""Third-party plugins end to end: installed with pip (outside the venv), run through `python -m transmute`.

tests/fixtures/ holds the plugin packages: echo (a stage, a pipeline file and a
command), broken (fails at import), badhook (its register_stages raises),
clash (registers a stage name the audio plugin already owns), faulty (plugins
'acme', whose stages and hooks break the contract in each way the engine
catches, and 'future', which needs a newer plugin API) and replace (plugins
'fastmel' and 'zmel', which both declare that they replace audio.logmel). The
plugin that docs/writing-plugins.md walks through is built from the guide's
code blocks.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

FIXTURES = Path(__file__).parent / "fixtures"
MISBEHAVING = ("broken_plugin", "badhook_plugin", "clash_plugin", "faulty_plugin")
GUIDE = Path(__file__).parents[1] / "docs" / "writing-plugins.md"
CODE_BLOCK = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.M | re.S)


def guide_blocks() -> list[tuple[str, str, str]]:
    """(language, title, code) of each code block of the guide; title is "" when it has none."""
    return CODE_BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def write_guide_package(folder: Path) -> Path:
    """The guide's blocks with a title are the files of its plugin; blocks of one file follow each other."""
    files: dict[str, list[str]] = {}
    for _, title, code in guide_blocks():
        if title:
            files.setdefault(title, []).append(code)
    for title, parts in files.items():
        (folder / title).parent.mkdir(parents=True, exist_ok=True)
        (folder / title).write_text("\n\n".join(parts), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def sites(pip_install, tmp_path_factory):
    guide = write_guide_package(tmp_path_factory.mktemp("guide") / "transmute-gate")
    return pip_install(FIXTURES / "echo_plugin", *(FIXTURES / name for name in MISBEHAVING),
                       FIXTURES / "replace_plugin", guide)


@pytest.fixture(scope="session")
def echo_only(sites):
    return [sites["echo_plugin"]]


@pytest.fixture(scope="session")
def everything(sites):
    return [sites[name] for name in ("echo_plugin", *MISBEHAVING)]


@pytest.fixture(scope="session")
def guide_site(sites):
    return [sites["transmute-gate"]]


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def plugins_by_name(result):
    """The output of `transmute plugins --json`, by plugin name."""
    return {p["name"]: p for p in json.loads(ok(result))}


def plugins_json(transmute_cli, path, env=None, args=()):
    return plugins_by_name(transmute_cli([*args, "plugins", "--json"], path, env))


def write_pipeline(folder: Path, *stages: str) -> Path:
    path = folder / "pipeline.toml"
    path.write_text("".join(f"[[stage]]\n{stage}\n\n" for stage in stages), encoding="utf-8")
    return path


def write_wav(path: Path, seconds=0.25, sample_rate=16000) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    audio = (0.4 * rng.uniform(-1, 1, int(seconds * sample_rate))).astype(np.float32)
    soundfile.write(str(path), audio, sample_rate, subtype="FLOAT")
    return audio


# --------------------------------------------------------------------------- a working plugin


def test_echo_stage_is_listed_with_its_plugin(transmute_cli_batch, echo_only):
    stages, plugins = transmute_cli_batch([["stages"], ["plugins", "--json"]], echo_only)
    listing = ok(stages)
    assert "echo.invert  (transform: Waveform -> Waveform; plugin echo)" in listing
    assert "gain (float, default 1.0): linear gain applied after inverting" in listing
    assert "audio.load" in listing

    echo = plugins_by_name(plugins)["echo"]
    assert (echo["version"], echo["status"], echo["reason"], echo["module"]) == ("1.2.3", "ok", "", "transmute_echo")
    assert echo["hooks"] == ["register_commands", "register_pipelines", "register_stages"]
    assert (echo["pipelines"], echo["commands"]) == (["echo-tones"], ["echo-hello"])
    [stage] = echo["stages"]
    assert (stage["name"], stage["role"], stage["consumes"], stage["produces"]) == (
        "echo.invert", "transform", ["Waveform"], "Waveform")
    assert stage["params"]["gain"] == {"type": "float", "help": "linear gain applied after inverting",
                                       "default": 1.0, "required": False, "min": 0, "max": 4}


def test_pipeline_file_with_the_plugin_stage_inverts_a_wav(transmute_cli, echo_only, tmp_path):
    audio = write_wav(tmp_path / "in" / "voice.wav")
    # remove_dc off: the comparison below is sample-exact, and noise has a (small) mean
    pipeline = write_pipeline(tmp_path, 'use = "audio.load"\nremove_dc = false', 'use = "echo.invert"\ngain = 0.5',
                              'use = "audio.save"\nsubtype = "FLOAT"')
    ok(transmute_cli(["run", pipeline, tmp_path / "in", "-o", tmp_path / "out", "-q"], echo_only))
    out, rate = soundfile.read(str(tmp_path / "out" / "voice.wav"), dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(out, -0.5 * audio)


def test_bad_parameter_of_a_plugin_stage_is_one_line(transmute_cli, echo_only, tmp_path):
    pipeline = write_pipeline(tmp_path, 'use = "audio.tone"', 'use = "echo.invert"\ngain = 9', 'use = "audio.save"')
    result = transmute_cli(["describe", pipeline], echo_only)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "stage 'invert' (echo.invert): parameter 'gain': must be at most 4" in line


def test_plugin_pipeline_runs_by_name(transmute_cli_batch, echo_only, tmp_path):
    listing, run = transmute_cli_batch([["pipelines"], ["run", "echo-tones", "--count", "2", "-o", tmp_path, "-q"]],
                                       echo_only)
    assert "echo-tones" in ok(listing)
    ok(run)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["sample-0000.wav", "sample-0001.wav"]
    tone, rate = soundfile.read(str(tmp_path / "sample-0000.wav"))
    assert (rate, len(tone)) == (8000, 800)
    # A 0.5-amplitude sine starting upwards, inverted and halved: starts downwards, peaks at 0.25.
    assert tone[1] < 0
    assert abs(np.abs(tone).max() - 0.25) < 1e-3


def test_plugin_command(transmute_cli, echo_only):
    # In a process of its own: `python -m transmute` is how a user meets a plugin command.
    assert ok(transmute_cli(["echo-hello", "--name", "tests"], echo_only)) == "hello tests from echo\n"


# --------------------------------------------------------------------------- failing plugins


def test_failing_plugins_are_listed_and_the_rest_works(transmute_cli_batch, everything):
    help_, listing, as_json, stages, hello = transmute_cli_batch(
        [["--help"], ["plugins"], ["plugins", "--json"], ["stages"], ["echo-hello"]], everything)
    assert "echo-hello" in ok(help_)

    listing = ok(listing).splitlines()
    broken = listing.index("broken 0.0.1  [FAILED]  (transmute_broken)")
    assert listing[broken + 1] == ("  reason: import failed: ModuleNotFoundError: "
                                   "No module named 'transmute_fixture_missing_dependency'")
    badhook = listing.index("badhook 0.0.1  [FAILED]  (transmute_badhook)")
    assert listing[badhook + 1] == "  reason: register_stages failed: RuntimeError: badhook cannot register its stages"

    plugins = plugins_by_name(as_json)
    assert {name: p["status"] for name, p in plugins.items()} == {
        "acme": "ok", "audio": "ok", "badhook": "failed", "broken": "failed", "clash": "ok", "echo": "ok",
        "future": "failed", "cyclegan_vc": "ok", "images": "ok", "pipelines": "ok", "pix2pix": "ok", "cyclegan": "ok",
        "vocoder": "ok", "vae": "ok", "vqvae": "ok", "pixelcnn": "ok"}
    assert {name for name, p in plugins.items() if p["builtin"]} == {"audio", "cyclegan_vc", "images", "pipelines",
                                                                     "pix2pix", "cyclegan", "vocoder", "vae", "vqvae",
                                                                     "pixelcnn"}
    assert plugins["badhook"]["stages"] == []

    stages = ok(stages)
    assert "echo.invert" in stages and "audio.griffinlim" in stages
    ok(hello)


def test_builtin_and_plugin_pipelines_run_beside_failing_plugins(transmute_cli_batch, everything, tmp_path):
    # 'acme' sorts before 'audio' and registers a stage named audio.logmel: the built-in keeps it,
    # so resynthesize (which sets audio.logmel's n_mels and fmax) still runs.
    write_wav(tmp_path / "voice.wav", seconds=0.2, sample_rate=22050)
    for result in transmute_cli_batch([
        ["run", "resynthesize", tmp_path / "voice.wav", "-o", tmp_path / "resynth", "-q", "--set", "griffinlim.n_iter=2"],
        ["run", "echo-tones", "--count", "1", "-o", tmp_path / "tones", "-q"],
    ], everything):
        ok(result)
    assert soundfile.info(str(tmp_path / "resynth" / "voice.wav")).samplerate == 22050
    assert (tmp_path / "tones" / "sample-0000.wav").is_file()


def test_stage_name_collision_keeps_the_first_and_warns(transmute_cli_batch, everything):
    as_json, listing, saver = transmute_cli_batch(
        [["plugins", "--json"], ["plugins"], ["stages", "audio.save", "--json"]], everything)
    clash = plugins_by_name(as_json)["clash"]
    assert clash["stages"] == []
    assert clash["warnings"] == ["stage 'audio.save' is a built-in stage of plugin 'audio'; kept that one (a stage "
                                 "that means to take it over declares replaces = 'audio.save')"]
    assert "  warning: stage 'audio.save' is a built-in stage of plugin 'audio'" in ok(listing)
    [saver] = json.loads(ok(saver))
    assert (saver["plugin"], saver["produces"]) == ("audio", "file")


ACME_REFUSED = [
    {"name": "acme.plain", "class": "PlainParam",
     "reason": "params['gain']: 1.0 is not a Param; declare it as Param(type, default, \"help\"), "
               "e.g. Param(float, 1.0, \"...\")"},
    {"name": "acme.bad_default", "class": "BadDefault",
     "reason": "params['gain']: its default 9.0 is not a valid value: must be at most 4, got 9.0"},
    {"name": "acme.noprocess", "class": "NoProcess",
     "reason": "a transform must define process() (consumes Waveform, produces Waveform)"},
    {"name": "acme.twice", "class": "TwiceB",
     "reason": "registered twice by this plugin (TwiceA and TwiceB); give each class its own name"},
]
ACME_WARNINGS = [
    "register_pipeline() is marked @hookimpl, but transmute has no hook of that name "
    "(did you mean 'register_pipelines'?); it is never called",
    "register_commands() looks like the hook 'register_commands' but is not marked @hookimpl "
    "(from transmute.hookspecs import hookimpl); it is never called",
    "stage 'audio.logmel' is a built-in stage of plugin 'audio'; kept that one "
    "(a stage that means to take it over declares replaces = 'audio.logmel')",
    "stage 'shared.thing' is outside this plugin's prefix 'acme.': name it 'acme.thing' (stage names are global), "
    "or declare replaces = 'shared.thing' to take over another plugin's stage",
]


def test_a_stage_that_breaks_the_contract_is_refused_alone(transmute_cli_batch, everything, tmp_path):
    (tmp_path / "nocheck").mkdir()
    (tmp_path / "plain").mkdir()
    nocheck = write_pipeline(tmp_path / "nocheck", 'use = "audio.tone"', 'use = "acme.nocheck"', 'use = "audio.save"')
    plain = write_pipeline(tmp_path / "plain", 'use = "audio.tone"', 'use = "acme.plain"', 'use = "audio.save"')
    as_json, listing, stages, logmel, plain_stage, describe_nocheck, describe_plain = transmute_cli_batch(
        [["plugins", "--json"], ["plugins"], ["stages"], ["stages", "audio.logmel", "--json"], ["stages", "acme.plain"],
         ["describe", nocheck], ["describe", plain]], everything)
    plugins = plugins_by_name(as_json)
    acme = plugins["acme"]
    assert (acme["status"], acme["builtin"]) == ("ok", False)
    assert [stage["name"] for stage in acme["stages"]] == ["acme.good", "acme.nocheck", "shared.thing",
                                                           "acme.fewer_items", "acme.throws"]
    assert acme["failed_stages"] == ACME_REFUSED
    assert acme["warnings"] == ACME_WARNINGS
    assert acme["hooks"] == ["register_stages"]
    assert (plugins["future"]["status"], plugins["future"]["reason"]) == (
        "failed", "needs plugin API >=99.0 (its requires_api), but this transmute provides 1.4: upgrade transmute, "
                  "or install a version of the plugin made for it")

    listing = ok(listing).splitlines()
    start = listing.index("acme 0.0.1  [ok]  (transmute_faulty.acme)")
    shown = listing[start + 1:listing.index("audio 0.1.0  [ok]  (transmute_audio)")]
    for refused in ACME_REFUSED:
        assert f"  stage FAILED {refused['name']} ({refused['class']}): {refused['reason']}" in shown
    for warning in ACME_WARNINGS:
        assert f"  warning: {warning}" in shown
    # The guide's example of this listing shows lines of it.
    example = [line[2:] for line in GUIDE.read_text(encoding="utf-8").splitlines()
               if line.startswith(("    stage acme.", "    stage FAILED acme.", "    warning: register_"))]
    assert len(example) == 3 and set(example) <= set(shown)

    stages = ok(stages)
    assert "acme.good  (" in stages and "acme.plain" not in stages
    [logmel] = json.loads(ok(logmel))
    assert (logmel["plugin"], logmel["implemented_by"]) == ("audio", None)

    assert plain_stage.stderr == (f"Error: no stage named 'acme.plain' (its plugin registered it, but it was refused: "
                                  f"stage 'acme.plain' (PlainParam) of plugin 'acme': {ACME_REFUSED[0]['reason']})\n")
    for result in (describe_nocheck, describe_plain):
        assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = describe_nocheck.stderr.strip().splitlines()
    assert line == (f"Error: {nocheck}: stage 'nocheck' (acme.nocheck): check() returned None; it must return the "
                    "spec it produces (a WaveformSpec; the plugin's author can fix this)")
    [line] = describe_plain.stderr.strip().splitlines()
    assert line == (f"Error: {plain}: stage 2: unknown stage type 'acme.plain' (its plugin registered it, but it was "
                    f"refused: stage 'acme.plain' (PlainParam) of plugin 'acme': {ACME_REFUSED[0]['reason']}); "
                    "`transmute stages` lists the installed ones")


def test_a_stage_that_drops_items_or_raises_fails_its_items_by_name(transmute_cli_batch, everything, tmp_path):
    # Results are paired with inputs by position: a stage returning fewer items than it was given must
    # not have one file's output written under another's name.
    pipelines = {}
    for stage in ("fewer_items", "throws"):
        (tmp_path / stage).mkdir()
        pipelines[stage] = write_pipeline(tmp_path / stage, 'use = "audio.tone"\nduration = 0.05',
                                          f'use = "acme.{stage}"', 'use = "audio.save"')
    drop3, drop1, explode = transmute_cli_batch(
        [["run", pipelines["fewer_items"], "--count", "3", "-o", tmp_path / "out3"],
         ["run", pipelines["fewer_items"], "--count", "1", "-o", tmp_path / "out1"],
         ["run", pipelines["throws"], "--count", "2", "-o", tmp_path / "out-explode"]], everything)
    rule = "stage 'fewer_items' (acme.fewer_items, plugin acme) broke the batch rule: process() was given {} and " \
           "returned {}; nothing was written for these items (the plugin's author can fix this)"
    for result, count, given in ((drop3, 3, "3 items"), (drop1, 1, "1 item")):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
        # The whole batch fails, with what the stage did to it: never retried item by item, where a
        # stage that miscounts only in batches would pass and hide its bug.
        assert failed == [f"FAILED sample-{i:04d}: {rule.format(given, count - 1)}" for i in range(count)]
        assert f"0 written, 0 skipped (already there), {count} failed" in result.stderr
        assert "no input files" not in result.stderr
        assert not any((tmp_path / f"out{count}").glob("*.wav"))
    assert explode.returncode == 1
    assert [line for line in explode.stderr.splitlines() if line.startswith("FAILED")] == [
        f"FAILED sample-{i:04d}: stage 'throws' (acme.throws, plugin acme): RuntimeError: kaboom" for i in range(2)]


def test_a_plugin_replaces_a_builtin_stage_only_when_it_says_so(transmute_cli_batch, sites, tmp_path):
    as_json, listing, logmel, resynthesize = transmute_cli_batch(
        [["plugins", "--json"], ["plugins"], ["stages", "audio.logmel", "--json"], ["describe", "resynthesize", "--json"]],
        [sites["echo_plugin"], sites["replace_plugin"]])
    plugins = plugins_by_name(as_json)
    [fastmel] = plugins["fastmel"]["stages"]
    assert (fastmel["name"], fastmel["replaces"]) == ("fastmel.logmel", "audio.logmel")
    assert plugins["audio"]["replaced_by"] == {"audio.logmel": "fastmel"}
    assert [stage["name"] for stage in plugins["audio"]["stages"]][2] == "audio.logmel"
    # The second plugin to replace it, and one that takes another plugin's name, lose and are told who won.
    assert plugins["zmel"]["warnings"] == [
        "stage 'zmel.logmel' replaces 'audio.logmel', but plugin 'fastmel' replaced it first (with 'fastmel.logmel'); "
        "kept that one",
        "stage 'echo.invert' is a stage already registered by plugin 'echo'; kept that one "
        "(a stage that means to take it over declares replaces = 'echo.invert')",
    ]
    assert [stage["name"] for stage in plugins["zmel"]["stages"]] == ["zmel.logmel"]
    assert plugins["echo"]["warnings"] == plugins["audio"]["warnings"] == []

    listing = ok(listing)
    assert "; replaced by fastmel.logmel (plugin fastmel)\n" in listing
    assert "; replaces audio.logmel\n" in listing
    [logmel] = json.loads(ok(logmel))
    assert (logmel["name"], logmel["plugin"], logmel["implemented_by"]) == ("audio.logmel", "fastmel", "fastmel.logmel")
    mel = json.loads(ok(resynthesize))["stages"][1]
    assert (mel["name"], mel["use"], mel["params"]["n_mels"]) == ("mel", "fastmel.logmel", 80)


# --------------------------------------------------------------------------- choosing plugins


@pytest.mark.parametrize("args, env", [
    ((), {"TRANSMUTE_PLUGINS": "audio,pipelines"}),
    ((), {"TRANSMUTE_DISABLE_PLUGINS": "echo"}),
    (("--disable-plugin", "echo"), {}),
], ids=["only-audio-and-pipelines", "env-disable", "flag-disable"])
def test_a_disabled_plugin_is_not_loaded(transmute_cli_batch, echo_only, tmp_path, args, env):
    pipeline = write_pipeline(tmp_path, 'use = "audio.tone"', 'use = "echo.invert"', 'use = "audio.save"')
    as_json, stages, result = transmute_cli_batch(
        [[*args, "plugins", "--json"], [*args, "stages"], [*args, "run", pipeline, "--count", "1", "-o", tmp_path / "out"]],
        echo_only, env)
    plugins = plugins_by_name(as_json)
    assert (plugins["echo"]["status"], plugins["audio"]["status"]) == ("disabled", "ok")
    assert plugins["echo"]["stages"] == plugins["echo"]["hooks"] == []

    stages = ok(stages)
    assert "echo.invert" not in stages and "audio.tone" in stages

    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "stage 2: unknown stage type 'echo.invert'" in line
    assert not (tmp_path / "out").exists()


def test_only_named_plugins_load(transmute_cli, everything):
    plugins = plugins_json(transmute_cli, everything, {"TRANSMUTE_PLUGINS": "audio,echo"})
    assert {name for name, p in plugins.items() if p["status"] == "ok"} == {"audio", "echo"}
    assert plugins["broken"]["status"] == "disabled"


# --------------------------------------------------------------------------- cost of the CLI


def test_listing_commands_do_not_import_torch(run_python, everything):
    script = (
        "import sys\n"
        "from transmute.cli import main\n"
        "for args in (['--help'], ['plugins'], ['stages'], ['pipelines']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (args, exit.code)\n"
        "    assert 'torch' not in sys.modules, args\n"
    )
    ok(run_python(["-c", script], everything))


# --------------------------------------------------------------------------- docs/writing-plugins.md


def test_the_guide_plugin_passes_its_own_tests(run_python, guide_site, tmp_path):
    package = write_guide_package(tmp_path / "transmute-gate")
    result = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], guide_site, cwd=package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b6 passed\b", result.stdout), result.stdout


def test_the_guide_snippets_run(run_python, guide_site):
    snippets = [code for language, title, code in guide_blocks() if language == "python" and not title]
    assert len(snippets) >= 3
    ok(run_python(["-c", "\n\n".join(snippets)], guide_site))


def test_the_guide_shows_real_output(transmute_cli, guide_site, tmp_path):
    guide = GUIDE.read_text(encoding="utf-8")

    def shown(result):
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        missing = [line for line in lines if line not in guide]
        assert not missing, f"not in {GUIDE.name}: {missing}"

    shown(transmute_cli(["new-plugin", "my_fx", "my-fx/"], cwd=tmp_path))
    plugins = ok(transmute_cli(["plugins"], guide_site))
    shown(transmute_cli(["stages", "gate.spectral"], guide_site))
    assert plugins[plugins.index("gate 0.1.0"):plugins.index("images ")] in guide

    shutil.copy(write_guide_package(tmp_path / "guide") / "masked.toml", tmp_path)
    shown(transmute_cli(["gate-make-mask", "mask.safetensors", "--tilt-db", "-12"], guide_site, cwd=tmp_path))
    ok(transmute_cli(["describe", "masked.toml"], guide_site, cwd=tmp_path))
    shown(transmute_cli(["describe", "masked.toml", "--set", "mel.n_mels=64"], guide_site, cwd=tmp_path))

    result = transmute_cli(["run", "gate-clean", "in/", "-o", "out/", "--set", "gate.threshold_db=6"], guide_site)
    assert result.returncode != 0
    assert result.stderr.strip().split("gate-clean.toml")[1] in guide


def test_the_guides_python_run_example_runs(run_python, guide_site, tmp_path):
    [code] = [code for _, title, code in guide_blocks() if title == "examples/run_gate.py"]
    write_wav(tmp_path / "recordings" / "take1.wav")
    (tmp_path / "run_gate.py").write_text(code, encoding="utf-8")
    result = run_python([tmp_path / "run_gate.py"], guide_site, cwd=tmp_path)
    assert ok(result).startswith("1 written, 0 skipped (already there), 0 failed")
    assert (tmp_path / "cleaned" / "take1.wav").is_file()
