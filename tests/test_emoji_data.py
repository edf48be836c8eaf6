"""scripts/emoji_datasets.py: the pure parts (no network, no npm; cairosvg only where skipped without it)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "emoji_datasets.py"


@pytest.fixture(scope="module")
def ed():
    spec = importlib.util.spec_from_file_location("emoji_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # multiprocessing pickles the workers by module name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_skin_tone_filter(ed):
    for code in ["1F44B-1F3FB", "1f44b-1f3ff", "1F9D1-1F3FD-200D-1F91D-200D-1F9D1-1F3FE", "1F3FC"]:
        assert ed.is_skin_tone_variant(code), code
    for code in ["1F44B", "1F600", "2764-FE0F", "1F3F3-FE0F-200D-1F308", "1F3FA", "1F3FBA"]:
        assert not ed.is_skin_tone_variant(code), code


def test_hold_out_is_deterministic_case_insensitive_and_about_ten_percent(ed):
    codes = [f"{cp:X}" for cp in range(0x1F300, 0x1F300 + 4000)]
    first = [ed.is_test(c) for c in codes]
    assert first == [ed.is_test(c) for c in codes]
    assert first == [ed.is_test(c.lower()) for c in codes]  # OpenMoji upper, emoji-datasource lower
    share = sum(first) / len(codes)
    assert 0.08 < share < 0.12, share
    # the rule the docstring and SOURCE.txt state, pinned
    import hashlib
    assert ed.is_test("1F405") == (int(hashlib.sha1(b"1F405").hexdigest(), 16) % 10 == 0)


def test_examples_come_from_the_test_split(ed):
    for code in ed.EXAMPLES:
        assert ed.is_test(code) and not ed.is_skin_tone_variant(code), code


def test_side_by_side_is_2w_by_w_rgb_on_white(ed):
    a = Image.new("RGBA", (4, 4), (0, 0, 0, 0))          # fully transparent
    a.putpixel((1, 2), (0, 0, 0, 255))                    # one opaque black pixel
    b = Image.new("RGBA", (4, 4), (255, 0, 0, 255))       # opaque red
    b.putpixel((0, 0), (0, 0, 255, 0))                    # transparent blue -> white
    out = ed.side_by_side(a, b)
    assert out.mode == "RGB" and out.size == (8, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 2)) == (0, 0, 0)
    assert out.getpixel((4, 0)) == (255, 255, 255)
    assert out.getpixel((5, 1)) == (255, 0, 0)
    half = ed.on_white(Image.new("RGBA", (1, 1), (0, 0, 0, 128))).getpixel((0, 0))
    assert all(126 <= v <= 128 for v in half)  # 50% black over white is mid grey
    with pytest.raises(ValueError):
        ed.side_by_side(a, Image.new("RGB", (5, 4)))


def test_blank_detection(ed):
    assert ed.is_blank(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    line = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    line.putpixel((3, 3), (0, 0, 0, 255))
    assert not ed.is_blank(line)


def test_atomic_save_leaves_no_partial_file(ed, tmp_path, monkeypatch):
    dest = tmp_path / "sub" / "x.png"
    ed.atomic_save(Image.new("RGB", (3, 2), (1, 2, 3)), dest)
    with Image.open(dest) as img:
        assert img.size == (3, 2) and img.getpixel((0, 0)) == (1, 2, 3)
    assert oct(dest.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.png"]

    # a save that dies half way leaves the old file intact and no temporary behind
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ed.atomic_save(Image.new("RGB", (5, 5)), dest)
    monkeypatch.undo()
    with Image.open(dest) as img:
        assert img.size == (3, 2)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x.png"]


def test_missing_npm_is_one_clear_line(ed, tmp_path, monkeypatch):
    monkeypatch.setattr(ed.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        ed.ensure_packages(tmp_path, ["openmoji"])
    message = str(e.value)
    assert "npm" in message and "\n" not in message


def test_installed_packages_of_the_right_major_are_not_reinstalled(ed, tmp_path, monkeypatch):
    pkg = tmp_path / "node_modules" / "openmoji"
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text('{"version": "17.0.0"}')
    monkeypatch.setattr(ed.subprocess, "run", lambda *a, **k: pytest.fail("npm should not run"))
    assert ed.ensure_packages(tmp_path, ["openmoji"]) == {"openmoji": "17.0.0"}


def _fake_emoji_packages(modules: Path, codes):
    for pkg, vendor, colour in [("emoji-datasource-google", "google", (0, 160, 0, 255)),
                                ("emoji-datasource-twitter", "twitter", (0, 0, 200, 255))]:
        folder = modules / pkg / "img" / vendor / "64"
        folder.mkdir(parents=True)
        for code in codes:
            img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            img.paste(colour, (16, 16, 48, 48))
            img.save(folder / f"{code}.png")
    Image.new("RGBA", (64, 64)).save(modules / "emoji-datasource-google" / "img" / "google" / "64" / "abcd.png")


def test_build_emoji_unaligned_layout(ed, tmp_path):
    codes = [f"{cp:x}" for cp in range(0x1F400, 0x1F400 + 40)] + ["1f44b-1f3fd"]
    modules = tmp_path / "node_modules"
    _fake_emoji_packages(modules, codes)
    out = tmp_path / "out"
    stats = ed.build_emoji(out, modules, {}, 32, force=False, processes=1)
    root = out / "emoji-google-twitter"
    assert stats["skin-tone-dropped"] == 1 and stats["only-in-one-set"] == 1
    expected_test = {c for c in codes[:-1] if ed.is_test(c)}
    assert {p.stem for p in (root / "testA").glob("*.png")} == expected_test
    assert {p.stem for p in (root / "testB").glob("*.png")} == expected_test
    train = {p.stem for p in (root / "trainA").glob("*.png")}
    assert train == {p.stem for p in (root / "trainB").glob("*.png")} == set(codes[:-1]) - expected_test
    with Image.open(root / "trainA" / f"{sorted(train)[0]}.png") as img:
        assert img.mode == "RGB" and img.size == (32, 32) and img.getpixel((0, 0)) == (255, 255, 255)
    assert "Counts:" in (root / "SOURCE.txt").read_text()
    again = ed.build_emoji(out, modules, {}, 32, force=False, processes=1)
    assert again["existing"] == len(codes) - 1 and "written" not in again


def test_render_openmoji_pair(ed, tmp_path):
    pytest.importorskip("cairosvg")
    modules = tmp_path / "node_modules"
    svg = ('<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
           '<circle cx="36" cy="36" r="23" fill="{fill}" stroke="#000" stroke-width="2"/></svg>')
    for kind, fill in [("black", "none"), ("color", "#FCEA2B")]:
        folder = modules / "openmoji" / kind / "svg"
        folder.mkdir(parents=True)
        for code in ["1F600", "1F44B-1F3FB"]:
            (folder / f"{code}.svg").write_text(svg.format(fill=fill))
    (modules / "openmoji" / "black" / "svg" / "1F601.svg").write_text(svg.format(fill="none"))
    (modules / "openmoji" / "black" / "svg" / "1F602.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"/>')
    (modules / "openmoji" / "color" / "svg" / "1F602.svg").write_text(svg.format(fill="#FCEA2B"))
    out = tmp_path / "out"
    stats = ed.build_openmoji(out, modules, {"openmoji": "17.0.0"}, 32, force=False, processes=1)
    assert stats["only-in-one-folder"] == 1 and stats["skin-tone-dropped"] == 1 and stats["blank"] == 1
    [png] = list((out / "openmoji").glob("*/1F600.png"))
    with Image.open(png) as img:
        assert img.mode == "RGB" and img.size == (64, 32)
        assert img.getpixel((0, 0)) == (255, 255, 255)
        assert img.getpixel((16, 16)) == (255, 255, 255)   # line art: hollow
        r, g, b = img.getpixel((32 + 16, 16))              # colour: filled yellow
        assert r > 200 and g > 200 and b < 100
    assert "openmoji@17.0.0" in (out / "openmoji" / "SOURCE.txt").read_text()
