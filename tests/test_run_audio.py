"""`transmute run` on audio: bad inputs, batching, skipping, atomic outputs."""

import warnings

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from transmute.cli import cli
from transmute.errors import InputWarning

FAST = ["--set", "griffinlim.n_iter=4"]


def tone(seconds, sr, freq=440.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    y = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def failed_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("FAILED")]


@pytest.fixture
def messy_folder(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "good.wav", tone(0.5, 16000), 16000, subtype="FLOAT")
    sf.write(src / "u8.wav", tone(0.3, 22050), 22050, subtype="PCM_U8")
    sf.write(src / "s24.wav", tone(0.3, 44100), 44100, subtype="PCM_24")
    sf.write(src / "sub" / "stereo48k.wav", tone(0.5, 48000, freq=1000, channels=2), 48000, subtype="PCM_16")
    sf.write(src / "one.wav", np.array([0.25]), 22050)
    sf.write(src / "clip.flac", np.clip(tone(0.3, 22050) * 5, -1, 1), 22050)
    (src / "empty.wav").write_bytes(b"")
    (src / "text.wav").write_text("this is not audio\n")
    good = (src / "good.wav").read_bytes()
    (src / "truncated.wav").write_bytes(good[:30])  # header cut short
    (src / "cut.wav").write_bytes(good[: len(good) * 6 // 10])  # data cut short: what is there is read
    sf.write(src / "nan.wav", np.array([0.1, np.nan, 0.2] * 100), 22050, subtype="FLOAT")
    (src / "notes.txt").write_text("not for this pipeline")
    (src / ".hidden.wav").write_bytes(b"")
    return src


def test_bad_inputs_are_reported_and_the_rest_goes_on(messy_folder, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("run", "resynthesize", messy_folder, "-o", out, *FAST)
    # The cut-short file is processed with a warning: printed by the runner, or (where the runner
    # does not catch warnings) raised from the reader.
    shown = result.output + "\n".join(str(w.message) for w in caught if issubclass(w.category, InputWarning))
    assert ("the file is cut short: its header promises 8000 frames (0.50 s), it holds 4792; "
            "3208 frames (0.20 s) are missing, what is there was used") in shown
    assert shown.count("cut short") == 1
    assert result.exit_code == 1
    failed = failed_lines(result)
    assert sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in failed) == [
        "empty.wav", "nan.wav", "text.wav", "truncated.wav"]
    by_name = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in failed}
    assert "not a readable audio file" in by_name["text.wav"]
    assert "NaN" in by_name["nan.wav"]
    assert "7 written, 0 skipped (already there), 4 failed, 1 ignored" in result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["clip.wav", "cut.wav", "good.wav", "one.wav", "s24.wav", "sub/stereo48k.wav", "u8.wav"]
    for path in out.rglob("*.wav"):
        y, sr = sf.read(path)
        assert sr == 22050 and y.ndim == 1 and np.isfinite(y).all() and np.abs(y).max() <= 1
    # Lengths follow the input duration at the new rate; a 1-sample file stays 1 sample.
    assert len(sf.read(out / "one.wav")[0]) == 1
    assert abs(len(sf.read(out / "good.wav")[0]) - 11025) <= 1
    assert 0 < len(sf.read(out / "cut.wav")[0]) < 11025
    # The stereo 48 kHz 1 kHz tone is mixed down, resampled and still a 1 kHz tone.
    y, sr = sf.read(out / "sub" / "stereo48k.wav")
    spectrum = np.abs(np.fft.rfft(y[2000:-2000]))
    assert abs(np.argmax(spectrum) * sr / (len(y) - 4000) - 1000) < 15


def test_rerun_skips_existing_and_overwrite_replaces(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        sf.write(src / f"a{i}.wav", tone(0.2, 22050, 300 + 100 * i), 22050)
    out = tmp_path / "out"
    assert run("run", "resynthesize", src, "-o", out, *FAST).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run("run", "resynthesize", src, "-o", out, *FAST)
    assert again.exit_code == 0 and "0 written, 3 skipped" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    forced = run("run", "resynthesize", src, "-o", out, "--overwrite", *FAST)
    assert "3 written, 0 skipped" in forced.output


def test_batched_output_equals_unbatched(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, seconds in enumerate((0.13, 0.5, 0.31, 0.07)):
        sf.write(src / f"x{i}.wav", tone(seconds, 22050, 200 + 90 * i), 22050)
    one, four = tmp_path / "one", tmp_path / "four"
    assert run("run", "resynthesize", src, "-o", one, "--batch-size", "1", *FAST).exit_code == 0
    assert run("run", "resynthesize", src, "-o", four, "--batch-size", "4", *FAST).exit_code == 0
    for path in sorted(one.iterdir()):
        alone, batched = sf.read(path)[0], sf.read(four / path.name)[0]
        # Equal up to float rounding (matmul blocking differs with batch width): 1 LSB of PCM_16.
        assert alone.shape == batched.shape and np.abs(alone - batched).max() <= 1.5 / 32768, path.name


def test_inputs_are_never_overwritten(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", tone(0.2, 22050), 22050)
    original = (src / "a.wav").read_bytes()
    result = run("run", "resynthesize", src / "a.wav", "-o", src, "--overwrite", *FAST)
    assert result.exit_code == 1 and "would overwrite the input" in result.output
    assert (src / "a.wav").read_bytes() == original


def test_interrupted_run_keeps_finished_files_and_continues(tmp_path, monkeypatch):
    from transmute_audio.stages import SaveAudio

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        sf.write(src / f"a{i}.wav", tone(0.2, 22050, 300 + 50 * i), 22050)
    out = tmp_path / "out"
    real_save = SaveAudio.save
    calls = []

    def flaky_save(self, item, path):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"half a file")  # a partial write, then Ctrl-C
            raise KeyboardInterrupt
        real_save(self, item, path)

    monkeypatch.setattr(SaveAudio, "save", flaky_save)
    # --workers 0 saves on the main thread, where a real Ctrl-C lands (tests/test_run_api.py covers workers).
    result = run("run", "resynthesize", src, "-o", out, "--batch-size", "1", "--workers", "0", *FAST)
    assert result.exit_code == 130 and "run the same command again" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["a0.wav", "a1.wav"]  # no partial file left
    monkeypatch.setattr(SaveAudio, "save", real_save)
    result = run("run", "resynthesize", src, "-o", out, *FAST)
    assert result.exit_code == 0 and "2 written, 2 skipped" in result.output
    assert all(sf.info(p).frames > 0 for p in out.iterdir())


def test_missing_input_and_no_inputs(tmp_path):
    result = run("run", "resynthesize", tmp_path / "nothing-here.wav", "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 1 and "nothing-here.wav: no such file or folder" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("run", "resynthesize", empty, "-o", tmp_path / "out", *FAST)
    assert result.exit_code != 0 and "no input files found" in result.output
    result = run("run", "resynthesize", "-o", tmp_path / "out")
    assert result.exit_code != 0 and "needs input files or folders" in result.output


def test_pipeline_mistakes_are_one_line_errors(tmp_path):
    src = tmp_path / "a.wav"
    sf.write(src, tone(0.1, 22050), 22050)
    result = run("run", "resynthesize", src, "-o", tmp_path / "out", "--set", "griffinlim.n_iters=3")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: ")
    assert "unknown parameter 'n_iters' (did you mean 'n_iter'?)" in result.output
    bad = tmp_path / "typo.toml"
    bad.write_text('[[stage]]\nuse = "audio.lod"\n[[stage]]\nuse = "audio.save"\n')
    result = run("run", bad, src, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "unknown stage type 'audio.lod' (did you mean 'audio.load'?)" in result.output


def test_generator_pipeline_runs_without_inputs(tmp_path):
    pipe = tmp_path / "tones.toml"
    pipe.write_text('[[stage]]\nuse = "audio.tone"\nduration = 0.25\n[[stage]]\nuse = "audio.save"\nformat = "flac"\n')
    out = tmp_path / "out"
    result = run("run", pipe, "--count", "3", "-o", out)
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [p.name for p in files] == ["sample-0000.flac", "sample-0001.flac", "sample-0002.flac"]
    peaks = []
    for p in files:
        y, sr = sf.read(p)
        assert sr == 22050 and len(y) == 5512
        peaks.append(np.argmax(np.abs(np.fft.rfft(y))) * sr / len(y))
    assert abs(peaks[0] - 440) < 5 and abs(peaks[1] - 440 * 2 ** (1 / 12)) < 5
    result = run("run", pipe, tmp_path, "-o", out)
    assert result.exit_code != 0 and "give --count N instead of inputs" in result.output


@pytest.mark.slow
def test_ten_minute_file(tmp_path):
    src = tmp_path / "long.wav"
    sr = 16000
    t = np.arange(10 * 60 * sr) / sr
    sf.write(src, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) / 1.5, sr)
    out = tmp_path / "out"
    result = run("run", "resynthesize", src, "-o", out, "--set", "griffinlim.n_iter=2")
    assert result.exit_code == 0, result.output
    info = sf.info(out / "long.wav")
    assert info.samplerate == 22050 and abs(info.frames - 10 * 60 * 22050) <= 1
