"""transmute.run: the engine's entry point. Batching by key, worker threads, warnings, faults."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from PIL import Image

import transmute
from transmute.cli import cli
from transmute.errors import InputWarning, TransmuteError
from transmute.files import remove_stale_temporaries
from transmute_image.stages import FitImages, LoadImages

FAST = ("griffinlim.n_iter=4",)
IMAGES = {"pipeline": {"device": "cpu", "batch_size": 4},
          "stage": [{"use": "images.load"}, {"use": "images.fit", "multiple_of": 8}, {"use": "images.save"}]}


def tone(path, seconds=0.2, freq=440.0, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.4 * np.sin(2 * np.pi * freq * t), sr)
    return path


def images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


def cli_run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def deny_reading(monkeypatch, unreadable):
    """What chmod 000 does to a user other than root: os.access says no, opening raises PermissionError."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if os.path.abspath(path) == os.path.abspath(unreadable) and mode & os.R_OK
        else real_access(path, mode, **kw)))


# --------------------------------------------------------------------------- the API


def test_run_returns_a_report_and_never_prints(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        tone(src / f"a{i}.wav", freq=300 + 100 * i)
    (src / "bad.wav").write_text("not audio")
    seen = []
    report = transmute.run("resynthesize", [src], tmp_path / "out", overrides=FAST, on_outcome=seen.append)
    assert capsys.readouterr() == ("", "")
    assert [(o.job.label.rsplit("/", 1)[-1], o.status) for o in report.outcomes] == [
        ("a0.wav", "written"), ("a1.wav", "written"), ("a2.wav", "written"), ("bad.wav", "failed")]
    assert seen == report.outcomes and "not a readable audio file" in report.failed[0].reason
    assert all(o.timings["load"] > 0 and o.timings["save"] > 0 and "compute" in o.timings for o in report.written)
    assert report.device == "cpu" and report.summary().startswith("3 written, 0 skipped (already there), 1 failed")
    again = transmute.run("resynthesize", [src / "a0.wav"], tmp_path / "out", overrides=FAST)
    assert [o.status for o in again.outcomes] == ["skipped"]


def test_one_input_or_override_may_be_given_bare(tmp_path):
    """A bare string is one input, not its characters ("in/" walked "i", "n" and "/": the whole disk)."""
    src = tmp_path / "in"
    src.mkdir()
    tone(src / "a.wav")
    for i, inputs in enumerate([str(src) + "/", src]):
        report = transmute.run("resynthesize", inputs, tmp_path / f"out{i}", overrides=FAST[0])
        assert [(o.job.label, o.status) for o in report.outcomes] == [(str(src / "a.wav"), "written")]


def test_setup_problems_raise_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TransmuteError, match="no pipeline named 'resynthesise' .*did you mean 'resynthesize'"):
        transmute.run("resynthesise", [tmp_path], tmp_path / "out")
    with pytest.raises(TransmuteError, match="needs input files or folders"):
        transmute.run("resynthesize", [], tmp_path / "out")
    with pytest.raises(TransmuteError, match=r"1 file\(s\) there are not for it \(notes.txt\)"):
        transmute.run("resynthesize", [tmp_path], tmp_path / "out")
    with pytest.raises(TransmuteError, match="--device cuda:7"):
        transmute.run("resynthesize", [tmp_path / "notes.txt"], tmp_path / "out", device="cuda:7")
    assert not (tmp_path / "out").exists()


def test_importing_transmute_stays_cheap(run_python):
    result = run_python(["-c", "import sys, transmute; transmute.run; print('torch' in sys.modules)"])
    assert result.stdout.strip() == "False", result.stderr


# --------------------------------------------------------------------------- batching and workers


def test_mixed_sizes_still_form_full_batches_in_input_order(tmp_path):
    src = images(tmp_path / "in", [(16, 24), (32, 8)] * 4 + [(8, 8)])
    report = transmute.run(IMAGES, [src], tmp_path / "out", workers=2)
    assert sorted(report.batch_sizes) == [1, 4, 4]  # was nine batches of one: the key alternated
    assert [o.job.name for o in report.outcomes] == [f"im{i:02d}" for i in range(9)]


def test_waiting_groups_are_bounded():
    import torch

    from transmute.runner import _Groups, _Pending
    from transmute.signals import Images

    groups = _Groups(batch_size=4, max_items=6, max_elements=10_000)
    ready = [groups.add(_Pending(i, None, Images(torch.zeros(1, 1, 8 + i, 8)), [], {})) for i in range(7)]
    assert ready[:6] == [[]] * 6  # six sizes, none fills a batch: they wait
    assert [[p.index for p in batch] for batch in ready[6]] == [[0]]  # a seventh: the oldest group goes
    big = groups.add(_Pending(7, None, Images(torch.zeros(1, 1, 101, 100)), [], {}))
    assert [p.index for batch in big for p in batch] == [1, 2, 3, 4, 5, 6, 7]  # over the element cap
    assert groups.items == 0 and groups.elements == 0


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_outputs_and_order_do_not_depend_on_workers(tmp_path, workers):
    src = images(tmp_path / "in", [(16, 24), (32, 8), (17, 9)] * 3)
    reference = transmute.run(IMAGES, [src], tmp_path / "ref", workers=0)
    report = transmute.run(IMAGES, [src], tmp_path / "out", workers=workers)
    assert report.workers == workers and report.batch_sizes == reference.batch_sizes
    assert [o.job.name for o in report.outcomes] == [o.job.name for o in reference.outcomes]
    for path in sorted((tmp_path / "ref").iterdir()):
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


def test_input_warnings_are_kept_per_file_and_printed(tmp_path, monkeypatch):
    src = images(tmp_path / "in", [(8, 8)] * 4)
    real_load = LoadImages.load

    def load(self, path):
        if path.stem in ("im01", "im03"):
            warnings.warn("animated image: only its first frame is used", InputWarning)
        return real_load(self, path)

    monkeypatch.setattr(LoadImages, "load", load)
    report = transmute.run(IMAGES, [src], tmp_path / "out", workers=3)
    assert [o.warnings for o in report.outcomes] == [
        [], ["animated image: only its first frame is used"], [], ["animated image: only its first frame is used"]]
    pipe = tmp_path / "images.toml"
    pipe.write_text('[[stage]]\nuse = "images.load"\n[[stage]]\nuse = "images.save"\n')
    result = cli_run("run", pipe, src, "-o", tmp_path / "cli", "--workers", "2")
    assert result.exit_code == 0
    assert f"warning: {src / 'im01.png'}: animated image: only its first frame is used" in result.output
    assert "4 written, 0 skipped (already there), 0 failed, 2 warning(s)" in result.output


def test_a_batch_failure_leaves_its_neighbours(tmp_path, monkeypatch):
    src = images(tmp_path / "in", [(8, 8)] * 4)
    real = FitImages.process

    def process(self, signal):
        if "im02" in signal.names:
            raise RuntimeError("out of memory")
        return real(self, signal)

    monkeypatch.setattr(FitImages, "process", process)
    report = transmute.run(IMAGES, [src], tmp_path / "out")
    assert [o.status for o in report.outcomes] == ["written", "written", "failed", "written"]
    assert report.outcomes[2].reason == "stage 'fit' (images.fit, plugin images): RuntimeError: out of memory"
    assert report.batch_sizes == [4]


def test_a_stage_that_drops_an_item_only_in_batches_fails_the_batch(tmp_path, monkeypatch):
    # Retried alone it would pass, hiding the bug (and the docs' "given 4 items and returned 3").
    src = images(tmp_path / "in", [(8, 8)] * 4)
    real = FitImages.process

    def process(self, signal):
        out = real(self, signal)
        return out if len(signal) == 1 else type(out).collate(out.items()[:-1])

    monkeypatch.setattr(FitImages, "process", process)
    report = transmute.run(IMAGES, [src], tmp_path / "out")
    assert [o.status for o in report.outcomes] == ["failed"] * 4
    assert {o.reason for o in report.outcomes} == {
        "stage 'fit' (images.fit, plugin images) broke the batch rule: process() was given 4 items and returned 3; "
        "nothing was written for these items (the plugin's author can fix this)"}
    assert not any((tmp_path / "out").glob("*"))


def test_ctrl_c_during_compute_stops_cleanly_and_a_rerun_finishes(tmp_path, monkeypatch):
    src = images(tmp_path / "in", [(8, 8)] * 12)
    real = FitImages.process
    batches = []

    def process(self, signal):
        batches.append(signal.names)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return real(self, signal)

    monkeypatch.setattr(FitImages, "process", process)
    report = transmute.run(IMAGES, [src], tmp_path / "out", workers=3)
    assert report.interrupted == signal.SIGINT
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"im{i:02d}.png" for i in range(4)]  # the first batch; nothing partial, no .part
    monkeypatch.setattr(FitImages, "process", real)
    rerun = transmute.run(IMAGES, [src], tmp_path / "out")
    assert len(rerun.skipped) == 4 and len(rerun.written) == 8 and not rerun.interrupted


# --------------------------------------------------------------------------- bad input and faults


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod-000 file anyway; the next test fakes it")
def test_an_unreadable_file_fails_alone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tone(src / "a.wav")
    locked = tone(src / "locked.wav")
    locked.chmod(0)
    try:
        result = cli_run("run", "resynthesize", locked, src / "a.wav", "-o", tmp_path / "out", "--set", *FAST)
    finally:
        locked.chmod(0o644)
    assert result.exit_code == 1
    assert f"FAILED {locked}: cannot read: permission denied" in result.output
    assert (tmp_path / "out" / "a.wav").exists()


def test_an_unreadable_file_fails_alone_faked(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    tone(src / "a.wav")
    locked = tone(src / "locked.wav")
    deny_reading(monkeypatch, locked)
    # Before, click refused the whole command: "Invalid value for '[INPUTS]...': Path ... is not readable."
    result = cli_run("run", "resynthesize", locked, src / "a.wav", "-o", tmp_path / "out", "--set", *FAST)
    assert result.exit_code == 1, result.output
    assert f"FAILED {locked}: cannot read: permission denied" in result.output
    assert "1 written, 0 skipped (already there), 1 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav"]


def test_a_file_named_twice_is_processed_once(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    a = tone(src / "a.wav")
    tone(src / "b.wav")
    result = cli_run("run", "resynthesize", a, a, src, "-o", tmp_path / "out", "--set", *FAST)
    assert result.exit_code == 0, result.output
    assert "2 written, 0 skipped (already there), 0 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav", "b.wav"]


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = out / "sub" / f".x.wav.{int(dead.stdout)}.part"
    reused = out / f".y.wav.{os.getpid()}.part"  # our PID, but written before this process started
    live = out / f".z.wav.{os.getpid()}.part"  # being written now by a live process: kept
    for path in (gone, reused, live):
        path.write_bytes(b"half")
    os.utime(reused, (time.time() - 10 * 24 * 3600,) * 2)
    (out / ".notes.part").write_bytes(b"not ours")
    assert sorted(remove_stale_temporaries(out)) == sorted([gone, reused])
    assert live.exists() and (out / ".notes.part").exists()
    live.unlink()
    src = tone(tmp_path / "a.wav")
    gone.write_bytes(b"half")
    report = transmute.run("resynthesize", [src], out, overrides=FAST)
    assert report.removed_temporaries == [gone] and not gone.exists()


def test_sigterm_stops_like_ctrl_c(tmp_path, run_python):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(24):
        tone(src / f"a{i:02d}.wav", seconds=0.5, freq=200 + 20 * i)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSMUTE_")}
    process = subprocess.Popen([sys.executable, "-m", "transmute", "run", "resynthesize", src, "-o", out,
                                "--batch-size", "2", "--set", "griffinlim.n_iter=48"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(out.glob("*.wav")) and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "interrupted: run the same command again to continue where it stopped" in stderr
    assert "written" in stderr and "Traceback" not in stderr
    written = sorted(out.iterdir())
    assert 0 < len(written) < 24 and all(p.suffix == ".wav" and sf.info(p).frames > 0 for p in written)


def test_an_unreadable_folder_is_a_failure_not_an_empty_folder(tmp_path, monkeypatch):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    tone(src / "a.wav")
    tone(src / "locked" / "b.wav")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.abspath(path) == str(src / "locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what chmod 000 on the folder does to a user other than root
    report = transmute.run("resynthesize", [src], tmp_path / "out", overrides=FAST)
    assert [(o.job.label, o.status, o.reason) for o in report.outcomes] == [
        (str(src / "locked"), "failed", "cannot read folder: permission denied"),
        (str(src / "a.wav"), "written", "")]


def test_tf32_is_off_on_cuda_unless_asked(monkeypatch, tmp_path):
    import torch

    from transmute.runner import Runner, _set_tf32

    knobs = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    before = [k.fp32_precision for k in knobs]
    try:
        _set_tf32(False)
        assert [k.fp32_precision for k in knobs] == ["ieee"] * 3
        _set_tf32(True)
        assert [k.fp32_precision for k in knobs] == ["tf32"] * 3
    finally:
        for knob, value in zip(knobs, before):
            knob.fp32_precision = value
    from transmute.pipeline import build_from_dict
    from transmute.plugins import get_manager

    pipeline = build_from_dict(IMAGES, get_manager().registry)
    assert Runner(pipeline, tmp_path).tf32 is False
    assert Runner(pipeline, tmp_path, tf32=True).tf32 is True
    monkeypatch.setenv("TRANSMUTE_TF32", "1")
    assert Runner(pipeline, tmp_path).tf32 is True


def test_a_generator_that_makes_fewer_items_or_raises_fails_its_items_by_name(tmp_path):
    # generate()'s items are saved by position: one fewer used to leave an item with no outcome ("2 written,
    # 0 failed" for --count 3); an exception named neither the stage nor its plugin.
    import types

    import torch

    from transmute.hookspecs import hookimpl
    from transmute.plugins import Manager, reset_manager
    from transmute.signals import Waveform, WaveformSpec
    from transmute.stages import Stage

    class Few(Stage):
        """Makes one item fewer than asked (none of them named, which alone is fine)."""

        name, consumes, produces = "gen.few", None, Waveform

        def check(self, incoming):
            return WaveformSpec(8000, 1)

        def generate(self, count, names):
            return Waveform(torch.zeros(max(1, count - 1), 1, 80), WaveformSpec(8000, 1))

    class Boom(Few):
        """Raises."""

        name = "gen.boom"

        def generate(self, count, names):
            raise RuntimeError("kaboom")

    module = types.ModuleType("transmute_gen")
    module.register_stages = hookimpl(lambda register: [register(Few), register(Boom)])
    manager = Manager(only={"audio", "gen"})
    manager.add(module, "gen")
    manager.load_entry_points()
    reset_manager(manager)
    try:
        reasons = {}
        for kind in ("few", "boom"):
            pipeline = {"pipeline": {"batch_size": 3}, "stage": [{"use": f"gen.{kind}"}, {"use": "audio.save"}]}
            report = transmute.run(pipeline, [], tmp_path / kind, count=4)
            assert [o.job.name for o in report.outcomes] == [f"sample-{i:04d}" for i in range(4)]
            reasons[kind] = [(o.status, o.reason) for o in report.outcomes]
    finally:
        reset_manager()
    rule = "stage 'few' (gen.few, plugin gen) broke the batch rule: generate() was asked for 3 items and returned 2; " \
           "nothing was written for these items (the plugin's author can fix this)"
    assert reasons["few"] == [("failed", rule)] * 3 + [("written", "")]  # the last batch, of one, is whole
    assert reasons["boom"] == [("failed", "stage 'boom' (gen.boom, plugin gen): RuntimeError: kaboom")] * 4
    assert [p.name for p in (tmp_path / "few").iterdir()] == ["sample-0003.wav"]


def test_a_bug_in_a_loader_or_saver_names_the_stage_and_its_plugin(tmp_path, monkeypatch):
    from transmute_image.stages import SaveImages

    src = images(tmp_path / "in", [(8, 8)])
    monkeypatch.setattr(LoadImages, "load", lambda self, path: 1 / 0)
    [loaded] = transmute.run(IMAGES, [src], tmp_path / "out").outcomes
    assert loaded.reason == "stage 'load' (images.load, plugin images): ZeroDivisionError: division by zero"
    monkeypatch.undo()
    monkeypatch.setattr(SaveImages, "save", lambda self, item, path: {}["oops"])
    [saved] = transmute.run(IMAGES, [src], tmp_path / "out").outcomes
    assert saved.reason == "stage 'save' (images.save, plugin images): KeyError: 'oops'"


def test_a_file_reached_through_a_link_and_its_own_path_is_written_where_it_is(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    tone(src / "sub" / "real.wav")
    (src / "alink.wav").symlink_to(src / "sub" / "real.wav")  # sorts first
    report = transmute.run("resynthesize", [src], tmp_path / "out", overrides=FAST)
    assert [(o.job.label, o.status) for o in report.outcomes] == [(str(src / "sub" / "real.wav"), "written")]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav")) == [
        "sub/real.wav"]
