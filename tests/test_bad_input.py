"""Bad input and faults: each is one line naming the file and the problem, and the rest of a batch goes on.

Permission problems are real ones: as root (where chmod stops nothing) the
test drops its effective user id to nobody for the duration of the run.
"""

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from transmute.audio import is_audio_file
from transmute.cli import cli
from transmute.errors import TransmuteError, one_line
from transmute.files import atomic_path, discover

FAST = ["--set", "griffinlim.n_iter=2"]
NOBODY = 65534


def tone(seconds=0.2, sr=16000, freq=440.0, offset=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return 0.4 * np.sin(2 * np.pi * freq * t) + offset


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def failed(result) -> dict[str, str]:
    """{path: reason} of the FAILED lines."""
    lines = [line.removeprefix("FAILED ") for line in result.output.splitlines() if line.startswith("FAILED ")]
    return dict(line.split(": ", 1) for line in lines)


@contextlib.contextmanager
def as_nobody():
    """Run the block without root's power to ignore permissions (a no-op for a normal user)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def world_dir():
    """A folder that the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="transmute-test-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(path)


def write_tree(root: Path, names) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, tone(), 16000)


# --------------------------------------------------------------------------- folders and links


def test_unreadable_and_unenterable_folders_are_reported_and_the_rest_is_found(world_dir):
    write_tree(world_dir, ["a.wav", "locked/b.wav", "closed/c.wav", "open/d.wav"])
    (world_dir / "locked").chmod(0o000)  # cannot be listed
    (world_dir / "closed").chmod(0o644)  # can be listed, cannot be entered
    with as_nobody():
        files, _, problems = discover([str(world_dir)], is_audio_file)
    assert [f.relative.as_posix() for f in files] == ["a.wav", "open/d.wav"]
    assert problems == [
        (str(world_dir / "closed"), "cannot enter folder: permission denied"),
        (str(world_dir / "locked"), "cannot read folder: permission denied"),
    ]


def test_a_folder_that_fails_is_reported_by_run_and_the_rest_is_written(tmp_path, monkeypatch):
    src = tmp_path / "in"
    write_tree(src, ["a.wav", "bad/b.wav", "good/c.wav"])
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "bad":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "out"
    result = run("run", "resynthesize", src, "-o", out, *FAST)
    assert result.exit_code == 1
    assert failed(result) == {str(src / "bad"): "cannot read folder: input/output error"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == ["a.wav", "good/c.wav"]


def test_links_to_folders_are_followed_and_loops_and_broken_links_reported(tmp_path):
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    write_tree(src, ["a.wav", "sub/b.wav"])
    write_tree(elsewhere, ["c.wav"])
    (src / "linked").symlink_to(elsewhere)
    (src / "sub" / "up").symlink_to(src)  # back to an ancestor: would never end
    (src / "gone.wav").symlink_to(tmp_path / "nothing.wav")
    (src / "file-link.wav").symlink_to(elsewhere / "c.wav")
    files, _, problems = discover([str(src)], is_audio_file)
    assert [f.relative.as_posix() for f in files] == ["a.wav", "file-link.wav", "linked/c.wav", "sub/b.wav"]
    assert problems == [
        (str(src / "gone.wav"), f"broken symbolic link (to {tmp_path / 'nothing.wav'})"),
        (str(src / "sub" / "up"), "symbolic link loop, skipped"),
    ]
    (tmp_path / "top.wav").symlink_to(tmp_path / "nothing.wav")
    assert discover([str(tmp_path / "top.wav")], is_audio_file)[2] == [
        (str(tmp_path / "top.wav"), f"broken symbolic link (to {tmp_path / 'nothing.wav'})")]


def test_output_folder_inside_the_input_is_not_walked(tmp_path):
    write_tree(tmp_path, ["a.wav", "out/old.wav"])
    files, _, _ = discover([str(tmp_path)], is_audio_file, exclude=tmp_path / "out")
    assert [f.relative.as_posix() for f in files] == ["a.wav"]


# --------------------------------------------------------------------------- write failures


def mounted_tmpfs(folder: Path, options: str) -> Path:
    """A tmpfs mounted on folder, where that is allowed (root, and a kernel that lets us); else skip."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return folder


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB disk."""
    yield mounted_tmpfs(tmp_path / "tiny", "size=64k")
    subprocess.run(["umount", str(tmp_path / "tiny")], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    yield mounted_tmpfs(tmp_path / "ro", "ro,size=64k")
    subprocess.run(["umount", str(tmp_path / "ro")], check=True)


def test_full_disk_is_named_and_no_temporary_is_left(tmp_path, tiny_disk):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "long.wav", tone(3.0), 16000)  # about 130 KB at 22.05 kHz: twice the disk
    sf.write(src / "short.wav", tone(0.05), 16000)
    result = run("run", "resynthesize", src, "-o", tiny_disk / "out", *FAST)
    assert result.exit_code == 1
    assert failed(result) == {str(src / "long.wav"): f"cannot write {tiny_disk / 'out' / 'long.wav'}: "
                                                     "no space left on device"}
    assert [p.name for p in (tiny_disk / "out").iterdir()] == ["short.wav"]


def test_write_permission_is_named_with_the_users_file_name(world_dir):
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    image.save(world_dir / "warm-up.png")  # Pillow imports its PNG writer on first use
    writers = {"x.wav": lambda tmp: sf.write(tmp, tone(0.01), 16000, format="WAV"),  # libsndfile: "System error."
               "x.png": lambda tmp: image.save(tmp, format="PNG")}  # Pillow: PermissionError on the temporary
    out = world_dir / "out"
    out.mkdir(mode=0o755)
    for name, write in writers.items():
        with as_nobody(), pytest.raises(TransmuteError) as caught:
            with atomic_path(out / name) as tmp:
                write(tmp)
        assert str(caught.value) == f"cannot write {out / name}: permission denied"
        assert one_line(caught.value) == str(caught.value)  # what the runner prints: no ".part" name
    assert list(out.iterdir()) == []


def test_read_only_disk_is_named(read_only_disk):
    with pytest.raises(TransmuteError, match=f"^cannot write {read_only_disk / 'x.wav'}: read-only file system$"):
        with atomic_path(read_only_disk / "x.wav") as tmp:
            sf.write(tmp, tone(0.01), 16000, format="WAV")


def test_an_input_that_cannot_be_opened_is_named(world_dir):
    from PIL import Image

    from transmute.audio import read_audio
    from transmute.errors import InputError
    from transmute_image.stages import LoadImages

    sf.write(world_dir / "a.wav", tone(0.01), 16000)
    Image.new("RGB", (4, 4)).save(world_dir / "a.png")
    for name in ("a.wav", "a.png"):
        (world_dir / name).chmod(0o000)
    with as_nobody():
        with pytest.raises(InputError, match="^cannot read: permission denied$"):
            read_audio(world_dir / "a.wav")
        with pytest.raises(InputError, match="^cannot read: permission denied$"):
            LoadImages().load(world_dir / "a.png")


def test_opaque_writer_errors_are_explained_by_the_folder(tmp_path, monkeypatch):
    """libsndfile says only "System error."; the folder says why."""
    target = tmp_path / "x.wav"

    def fails(tmp):
        sf.write(tmp, tone(0.01), 16000, format="WAV")  # a real partial file, then libsndfile's own error
        raise sf.LibsndfileError(2)

    statvfs = os.statvfs(tmp_path)
    full = os.statvfs_result((statvfs.f_bsize, statvfs.f_frsize, statvfs.f_blocks, 0, 0, *statvfs[5:]))
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(TransmuteError, match=f"^cannot write {target}: no space left on device$"):
        with atomic_path(target) as tmp:
            fails(tmp)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(sf.LibsndfileError):  # nothing wrong with the folder: the writer's error stands
        with atomic_path(target) as tmp:
            fails(tmp)


def test_a_full_disk_under_safetensors_is_named(tmp_path):
    """safetensors (Rust) raises SafetensorError, not OSError, removes its partial file, and keeps only the
    errno in its text: the disk still has room for small files, so only that text says why."""
    import torch
    from safetensors.torch import save_file

    disk = mounted_tmpfs(tmp_path / "two", "size=2m")
    try:
        target = disk / "last.safetensors"
        with pytest.raises(TransmuteError, match=f"^cannot write {target}: no space left on device$") as caught:
            with atomic_path(target) as tmp:
                save_file({"x": torch.zeros(1_000_000)}, str(tmp))  # 4 MB
        assert isinstance(caught.value, OSError)  # what the training loop catches to keep its last checkpoint
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_errors_about_the_data_pass_through(tmp_path):
    with pytest.raises(ValueError, match="bad data"):
        with atomic_path(tmp_path / "x.wav"):
            raise ValueError("bad data")


def test_one_line_os_errors_are_words_and_the_path():
    assert one_line(PermissionError(errno.EACCES, "Permission denied", "/o/a.wav")) == "permission denied: /o/a.wav"
    assert one_line(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert one_line(OSError("image file is truncated")) == "OSError: image file is truncated"


# --------------------------------------------------------------------------- audio content


def test_wav_cut_short_warns_with_frames_and_seconds(tmp_path):
    from transmute.audio import read_audio
    from transmute.errors import InputWarning

    sf.write(tmp_path / "full.wav", tone(1.0, 8000), 8000, subtype="PCM_24")  # 8000 frames of 3 bytes
    whole = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) - 3 * 2000])
    expected = (r"^the file is cut short: its header promises 8000 frames \(1\.00 s\), it holds 6000; "
                r"2000 frames \(0\.25 s\) are missing, what is there was used$")
    with pytest.warns(InputWarning, match=expected):
        audio, _ = read_audio(tmp_path / "cut.wav")
    assert audio.shape == (6000, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file, and a stream-written one of unknown length, are quiet
        read_audio(tmp_path / "full.wav")
        unknown = bytearray(whole)
        data_size_at = whole.index(b"data") + 4
        unknown[data_size_at : data_size_at + 4] = b"\xff\xff\xff\xff"
        (tmp_path / "stream.wav").write_bytes(bytes(unknown))
        read_audio(tmp_path / "stream.wav")


def test_dc_offset_is_removed_and_the_tone_is_unchanged(tmp_path):
    sr = 22050
    for folder, offset in (("clean", 0.0), ("offset", 0.3)):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "a.wav", tone(1.0, sr, 441.0, offset), sr, subtype="FLOAT")
    for folder, remove in (("clean", "true"), ("offset", "true"), ("offset", "false")):
        result = run("run", "resynthesize", tmp_path / folder, "-o", tmp_path / f"out-{folder}-{remove}",
                     "--set", "griffinlim.n_iter=8", "--set", f"load.remove_dc={remove}")
        assert result.exit_code == 0, result.output

    def low_share(path):  # the share of the output's energy below 60 Hz: rumble
        y, rate = sf.read(path)
        spectrum = np.abs(np.fft.rfft(y)) ** 2
        return spectrum[np.fft.rfftfreq(len(y), 1 / rate) < 60].sum() / spectrum.sum()

    clean = sf.read(tmp_path / "out-clean-true" / "a.wav")[0]
    removed = sf.read(tmp_path / "out-offset-true" / "a.wav")[0]
    assert np.abs(clean - removed).max() <= 2 / 32768  # the same output as without the offset
    assert low_share(tmp_path / "out-offset-true" / "a.wav") < 0.02
    assert low_share(tmp_path / "out-offset-false" / "a.wav") > 0.05 # what the offset did when it was kept


def test_readers_share_the_dc_removal():
    """Trainers read through read_audio: its default is the stage's, so both see the same samples."""
    import inspect

    from transmute.audio import read_audio
    from transmute_audio.stages import LoadAudio

    assert inspect.signature(read_audio).parameters["remove_dc"].default is True
    assert LoadAudio.params["remove_dc"].default is True


# --------------------------------------------------------------------------- images


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height RGB and holds no pixels: a decompression bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    from transmute.errors import InputError
    from transmute_image.stages import LoadImages

    _png_header_only(tmp_path / "bomb.png", 12000, 12000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        with pytest.raises(InputError) as caught:
            LoadImages().load(tmp_path / "bomb.png")
    assert str(caught.value) == ("image is 12000x12000 = 144 megapixels, above max_pixels (100 megapixels); "
                                 "raise it with --set load.max_pixels=144000000")
    from PIL import Image

    Image.new("RGB", (100, 60)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match=r"^image is 100x60 = 6000 pixels, above max_pixels \(5000 pixels\); "):
        LoadImages(max_pixels=5000).load(tmp_path / "small.png")
    assert LoadImages(max_pixels=6000).load(tmp_path / "small.png").data.shape == (1, 3, 60, 100)


def test_pillows_own_limit_is_replaced_not_printed(tmp_path, monkeypatch):
    from PIL import Image

    from transmute_image.stages import LoadImages

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would warn at 1000 and refuse at 2000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = LoadImages().load(tmp_path / "a.png").data
    assert data.dtype == torch_float32() and data.shape == (1, 3, 64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back for everyone else


def torch_float32():
    import torch

    return torch.float32


@pytest.mark.parametrize("name, kind", [("anim.gif", "animated"), ("anim.png", "animated"),
                                        ("anim.webp", "animated"), ("pages.tif", "multi-page")])
def test_animated_image_warns_and_uses_the_first_frame(tmp_path, name, kind):
    from PIL import Image

    from transmute.errors import InputWarning
    from transmute_image.stages import LoadImages

    frames = [Image.new("RGB", (16, 8), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    with pytest.warns(InputWarning, match=f"^{kind} image with 3 frames; only the first is used$"):
        data = LoadImages().load(tmp_path / name).data
    assert data[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    frames[0].save(tmp_path / f"still-{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoadImages().load(tmp_path / f"still-{name}")


def test_a_camera_jpeg_with_a_preview_frame_is_not_news(tmp_path):
    from PIL import Image

    from transmute_image.stages import LoadImages

    photo, preview = Image.new("RGB", (32, 16), (200, 100, 50)), Image.new("RGB", (8, 4))
    photo.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[preview])
    with Image.open(tmp_path / "camera.jpg") as opened:
        assert (opened.format, opened.n_frames) == ("MPO", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LoadImages().load(tmp_path / "camera.jpg").data.shape == (1, 3, 16, 32)


# --------------------------------------------------------------------------- pipeline settings


@pytest.mark.parametrize("overrides, message", [
    (["mel.hop_length=2048"], "hop_length 2048 is larger than n_fft 1024, so audio between frames would be lost; "
                              "use a hop_length of at most 1024 (usually a quarter: 256)"),
    (["mel.win_length=400", "mel.hop_length=401"], "hop_length 401 is larger than win_length 400, so audio between "
                                                   "frames would be lost; use a hop_length of at most 400"),
])
def test_hop_longer_than_the_window_is_refused_at_check_time(overrides, message):
    from transmute.errors import PipelineError
    from transmute.pipeline import build_pipeline
    from transmute.plugins import get_manager

    with pytest.raises(PipelineError) as caught:
        build_pipeline("resynthesize", get_manager().registry, overrides)
    assert "stage 'mel' (audio.logmel)" in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)
    build_pipeline("resynthesize", get_manager().registry, ["mel.win_length=400", "mel.hop_length=400"])


def test_unknown_plugin_names_are_warned_with_the_names_that_exist(monkeypatch):
    from transmute import plugins

    monkeypatch.setattr(plugins, "_cli_disabled", set())  # the flag's callback records names process-wide
    monkeypatch.setenv("TRANSMUTE_DISABLE_PLUGINS", "xyz")
    monkeypatch.setenv("TRANSMUTE_PLUGINS", "audio,pipeline,images,cyclegan_vc")
    result = CliRunner().invoke(cli, ["--disable-plugin", "audo", "--disable-plugin", "images", "--help"])
    assert result.exit_code == 0
    installed = ("installed plugins: audio, cyclegan, cyclegan_vc, images, pipelines, pix2pix, pixelcnn, vae, vocoder, "
                 "vqvae")
    assert result.stderr.splitlines() == [
        f"warning: --disable-plugin: no plugin named 'audo' (did you mean 'audio'?); {installed}",
        f"warning: TRANSMUTE_DISABLE_PLUGINS: no plugin named 'xyz'; {installed}",
        f"warning: TRANSMUTE_PLUGINS: no plugin named 'pipeline' (did you mean 'pipelines'?); {installed}",
    ]
    monkeypatch.setenv("TRANSMUTE_PLUGINS", "audio,pipelines")
    monkeypatch.delenv("TRANSMUTE_DISABLE_PLUGINS")
    assert CliRunner().invoke(cli, ["--disable-plugin", "images", "--help"]).stderr == ""


def test_training_reads_the_rest_of_a_folder_and_names_what_it_skipped(tmp_path):
    from transmute_cyclegan_vc.task import FEATURES, speaker_features

    sf.write(tmp_path / "a.wav", tone(4.0, 22050), 22050)
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nothing.wav")
    feats, _, skipped = speaker_features(tmp_path, FEATURES, "a")
    assert len(feats) == 1
    assert skipped == [f"{tmp_path / 'gone.wav'}: broken symbolic link (to {tmp_path / 'nothing.wav'})"]
    (tmp_path / "a.wav").unlink()
    with pytest.raises(TransmuteError, match=r": no audio files found \(.*gone.wav: broken symbolic link"):
        speaker_features(tmp_path, FEATURES, "a")
