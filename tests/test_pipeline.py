"""Pipeline files: parsing, overrides, and refusing bad chains before any compute."""

import copy
from pathlib import Path

import numpy as np
import pytest

from transmute.errors import PipelineError
from transmute.pipeline import build_from_dict, build_pipeline, parse_value
from transmute.plugins import Registry, get_manager
from transmute.signals import Spectrogram
from transmute.stages import Param, Stage

RESYNTH = {
    "pipeline": {"description": "test", "batch_size": 2},
    "stage": [
        {"use": "audio.load", "sample_rate": 22050},
        {"use": "audio.logmel", "name": "mel"},
        {"use": "audio.mel_to_linear", "name": "invert"},
        {"use": "audio.griffinlim", "n_iter": 4},
        {"use": "audio.save"},
    ],
}


@pytest.fixture(scope="module")
def registry():
    return get_manager().registry


def build(doc, registry, overrides=()):
    return build_from_dict(copy.deepcopy(doc), registry, source="test.toml", overrides=list(overrides))


def test_builtin_pipeline_found_by_name_and_checked(registry):
    p = build_pipeline("resynthesize", registry)
    assert [s.name for s in p.stages] == [
        "audio.load", "audio.logmel", "audio.mel_to_linear", "audio.griffinlim", "audio.save"]
    mel_spec = p.specs[1]
    assert mel_spec.sample_rate == 22050 and mel_spec.n_mels == 80 and mel_spec.fmax == 11025


def test_pipeline_by_path(tmp_path, registry):
    path = tmp_path / "mine.toml"
    path.write_text('[[stage]]\nuse = "audio.tone"\n[[stage]]\nuse = "audio.save"\n')
    p = build_pipeline(str(path), registry)
    assert p.is_generator and p.name == "mine"


def test_overrides_are_typed_and_validated(registry):
    p = build(RESYNTH, registry, ["griffinlim.n_iter=64", "mel.n_mels=128", "pipeline.batch_size=3",
                                  "save.format=flac"])
    assert p.stages[3].n_iter == 64 and p.specs[1].n_mels == 128 and p.batch_size == 3
    assert p.saver.suffix() == ".flac"
    with pytest.raises(PipelineError, match=r"test.toml: stage 'griffinlim' \(audio.griffinlim\): parameter 'n_iter': expected an integer"):
        build(RESYNTH, registry, ["griffinlim.n_iter=many"])
    with pytest.raises(PipelineError, match=r"no stage named 'griffin'.*did you mean 'griffinlim'"):
        build(RESYNTH, registry, ["griffin.n_iter=3"])
    with pytest.raises(PipelineError, match=r"expected STAGE.PARAM=VALUE"):
        build(RESYNTH, registry, ["n_iter=3"])


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("hann") == "hann" and parse_value('"x y"') == "x y"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["stage"][1].update(use="audio.logmell"),
         r"test.toml: stage 2: unknown stage type 'audio.logmell' \(did you mean 'audio.logmel'\?\)"),
        (lambda d: d["stage"][1].update(n_mel=80),
         r"test.toml: stage 'mel' \(audio.logmel\): unknown parameter 'n_mel' \(did you mean 'n_mels'\?\)"),
        (lambda d: d["stage"][3].update(momentum="fast"),
         r"stage 'griffinlim' \(audio.griffinlim\): parameter 'momentum': expected a number, got 'fast'"),
        (lambda d: d["stage"][4].update(format="mp4"),
         r"stage 'save' \(audio.save\): parameter 'format': expected one of 'wav', 'flac', got 'mp4'"),
        (lambda d: d["stage"].pop(2),
         r"stage 'griffinlim' \(audio.griffinlim\): incoming Spectrogram from stage 'mel': field 'n_mels' "
         r"expected 0, got 80; add an audio.mel_to_linear stage"),
        (lambda d: d["stage"].pop(1),
         r"stage 'invert' \(audio.mel_to_linear\) consumes Spectrogram, but stage 'load' \(audio.load\) produces Waveform"),
        (lambda d: d["stage"][0].update(sample_rate=0),
         r"stage 'mel' \(audio.logmel\): needs a known sample rate"),
        (lambda d: d["stage"][0].update(sample_rate=8000),
         r"fmax 11025 Hz is above the Nyquist frequency 4000 Hz"),
        (lambda d: d["stage"].pop(),
         r"stage 'griffinlim' \(audio.griffinlim\): the last stage must save files"),
        (lambda d: d["stage"].pop(0),
         r"stage 'mel' \(audio.logmel\): the first stage must load files or generate"),
        (lambda d: d["pipeline"].update(batchsize=3), r"\[pipeline\]: unknown key 'batchsize' \(did you mean 'batch_size'\?\)"),
        (lambda d: d["stage"][1].pop("use"), r"stage 2: missing 'use'"),
        (lambda d: d.update(stages=[]), r"unknown top-level key 'stages' \(did you mean 'stage'\?\)"),
        (lambda d: d["stage"][1].update(use=3), r"stage 2: 'use' must be a stage type name in quotes, got 3"),
        (lambda d: d["stage"][1].update(use=["audio.logmel"]), r"stage 2: 'use' must be a stage type name"),
        (lambda d: d.update(pipeline=3), r"'pipeline' must be a \[pipeline\] table"),
        (lambda d: d["stage"][1].update(name=""), r"stage 2: 'name' must be a non-empty name without dots"),
        (lambda d: d["stage"][1].update(window="kaiser"), r"stage 'mel' \(audio.logmel\): window 'kaiser' is not a window"),
    ],
)
def test_mistakes_are_refused_with_file_stage_and_key(registry, mutate, message):
    doc = copy.deepcopy(RESYNTH)
    if "fmax" in message:
        doc["stage"][1]["fmax"] = 11025
    mutate(doc)
    with pytest.raises(PipelineError, match=message) as info:
        build(doc, registry)
    assert "\n" not in str(info.value)


def test_invalid_toml_names_the_file(tmp_path, registry):
    path = tmp_path / "broken.toml"
    path.write_text("[[stage]\nuse = 'audio.load'\n")
    with pytest.raises(PipelineError, match=r"broken.toml: invalid TOML"):
        build_pipeline(str(path), registry)
    with pytest.raises(PipelineError, match=r"no pipeline named 'resynthesise' \(did you mean 'resynthesize'\?\)"):
        build_pipeline("resynthesise", registry)
    with pytest.raises(PipelineError, match=r"nope.toml: pipeline file not found"):
        build_pipeline(str(tmp_path / "nope.toml"), registry)


class NeedsCheckpoint(Stage):
    """A stage with a checkpoint parameter, as model stages have."""

    name = "test.model"
    consumes = Spectrogram
    produces = Spectrogram
    params = {"checkpoint": Param(Path, help="weights", must_exist=True)}


def test_missing_checkpoint_is_refused_at_build_time(tmp_path, registry):
    local = Registry(stages=dict(registry.stages, **{"test.model": NeedsCheckpoint}))
    doc = copy.deepcopy(RESYNTH)
    doc["stage"].insert(2, {"use": "test.model", "name": "model", "checkpoint": str(tmp_path / "missing.safetensors")})
    with pytest.raises(PipelineError, match=r"stage 'model' \(test.model\): parameter 'checkpoint': file not found: .*missing.safetensors"):
        build(doc, local)
    doc["stage"][2].pop("checkpoint")
    with pytest.raises(PipelineError, match=r"parameter 'checkpoint' is required \(weights\)"):
        build(doc, local)


def test_spec_flows_through_the_chain(registry):
    p = build(RESYNTH, registry, ["load.sample_rate=16000", "mel.fmax=8000"])
    wave_spec, mel_spec, linear_spec, out_spec = p.specs[:4]
    assert wave_spec.sample_rate == 16000 and mel_spec.sample_rate == 16000
    assert linear_spec.n_mels == 0 and not linear_spec.log
    assert out_spec.sample_rate == 16000
    described = p.describe()
    assert [s["name"] for s in described["stages"]] == ["load", "mel", "invert", "griffinlim", "save"]


def test_duplicate_stage_names_refused(registry):
    doc = copy.deepcopy(RESYNTH)
    doc["stage"][2]["name"] = "mel"
    with pytest.raises(PipelineError, match=r"stage 3: name 'mel' is used twice"):
        build(doc, registry)


def test_waveform_transform_accepts_any_rate_when_resampling(registry, tmp_path):
    doc = {"stage": [{"use": "audio.load"}, {"use": "audio.resample", "sample_rate": 16000},
                     {"use": "audio.logmel", "fmax": 8000}, {"use": "audio.mel_to_linear"},
                     {"use": "audio.griffinlim", "n_iter": 2}, {"use": "audio.save"}]}
    p = build(doc, registry)
    assert p.specs[0].sample_rate is None, "the loader keeps each file's own rate"
    assert [spec.sample_rate for spec in p.specs[1:5]] == [16000] * 4, "16 kHz reaches griffinlim's output"
    import soundfile as sf
    from click.testing import CliRunner

    from transmute.cli import cli

    pipeline = tmp_path / "p.toml"
    pipeline.write_text("".join(f"[[stage]]\n" + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in s.items())
                                for s in doc["stage"]))
    for rate in (22050, 44100):
        sf.write(tmp_path / f"in-{rate}.wav", np.sin(np.arange(rate // 4) * 0.05), rate)
        result = CliRunner().invoke(cli, ["run", str(pipeline), str(tmp_path / f"in-{rate}.wav"), "-o",
                                          str(tmp_path / "out"), "-q"])
        assert result.exit_code == 0, result.output
        info = sf.info(tmp_path / "out" / f"in-{rate}.wav")
        assert info.samplerate == 16000 and abs(info.frames - 16000 // 4) <= 1, info


def test_paths_in_a_file_are_relative_to_it_and_set_paths_to_the_working_dir(tmp_path, registry, monkeypatch):
    local = Registry(stages=dict(registry.stages, **{"test.model": NeedsCheckpoint}))
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "weights.safetensors").write_bytes(b"x")
    pipe = tmp_path / "shipped" / "p.toml"
    pipe.write_text(
        '[[stage]]\nuse = "audio.load"\nsample_rate = 22050\n[[stage]]\nuse = "audio.logmel"\n'
        '[[stage]]\nuse = "test.model"\nname = "model"\ncheckpoint = "weights.safetensors"\n'
        '[[stage]]\nuse = "audio.mel_to_linear"\n[[stage]]\nuse = "audio.griffinlim"\n[[stage]]\nuse = "audio.save"\n'
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = build_pipeline(str(pipe), local)
    assert p.stages[2].checkpoint == tmp_path / "shipped" / "weights.safetensors"
    (elsewhere / "mine.safetensors").write_bytes(b"y")
    p = build_pipeline(str(pipe), local, ["model.checkpoint=mine.safetensors"])
    assert p.stages[2].checkpoint == Path("mine.safetensors") and p.stages[2].checkpoint.exists()


def test_channel_index_may_be_given_as_a_number(registry):
    p = build(RESYNTH, registry, ["load.channel=1"])
    assert p.stages[0].channel == "1"


def test_a_number_set_on_a_string_parameter_is_its_text():
    """`--set sample.class_name=3` parses as the TOML integer 3: a string parameter takes it as "3"
    (class names such as digits are numbers); true and false stay refused."""
    param = Param(str, "", "a class name")
    assert param.validate(parse_value("3")) == "3"
    assert param.validate(parse_value('"3"')) == "3"
    with pytest.raises(ValueError, match="expected a string"):
        param.validate(parse_value("true"))
    with pytest.raises(ValueError, match="expected a string"):
        param.validate(parse_value("1.5"))
