#!/usr/bin/env python3
"""Build two image-translation data sets locally from emoji npm packages (npm fetches them once).

    python scripts/emoji_datasets.py OUT_ROOT [--only openmoji|emoji] [--cache DIR]
                                     [--size-openmoji 128] [--size-emoji 64] [--force]
    python scripts/emoji_datasets.py --examples examples/images

Needs npm (the packages are installed once into a cache outside the repository,
default ${XDG_CACHE_HOME:-~/.cache}/transmute/npm) and, for OpenMoji's SVGs,
cairosvg (`pip install 'transmute[data]'`).

    OUT_ROOT/openmoji/{train,test}/HEX.png
        pix2pix's aligned layout: one RGB image 2W x W per emoji, A on the left
        (OpenMoji black line art), B on the right (OpenMoji colour), on white.
    OUT_ROOT/emoji-google-twitter/{trainA,trainB,testA,testB}/CODEPOINT.png
        CycleGAN's unaligned layout: A = Google (Noto Emoji), B = Twitter
        (Twemoji), only code points both have, RGB on white. A and B share file
        names, so an evaluation has paired ground truth.
    OUT_ROOT/<set>/SOURCE.txt
        packages, versions, licences and counts.

Skin-tone variants are dropped (they share one design with the base emoji).
10% of the emoji are held out for test, chosen by a hash of the code point, so
the split is the same on every machine and a given emoji is in the same split
in both sets. Existing outputs are kept unless --force; every file is written
under a temporary name and renamed, so an interrupted run leaves no half PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

# package -> required major version
PACKAGES = {"openmoji": 17, "emoji-datasource-google": 16, "emoji-datasource-twitter": 16}

# The licences, as checked in each package (OpenMoji's LICENSE.txt; the
# emoji-datasource README: the package's code is MIT, the images are not).
LICENCES = {
    "openmoji": "CC-BY-SA 4.0 (https://openmoji.org, LICENSE.txt in the package)",
    "emoji-datasource-google": "images: Google Noto Emoji, Apache-2.0 "
                               "(https://github.com/googlefonts/noto-emoji); package code: MIT",
    "emoji-datasource-twitter": "images: Twemoji, CC-BY 4.0 "
                                "(https://github.com/jdecked/twemoji); package code: MIT",
}

SKIN_TONES = frozenset(f"1F3F{c}" for c in "BCDEF")  # Fitzpatrick modifiers 1F3FB..1F3FF
TEST_MODULUS = 10  # one emoji in ten is held out

# Shipped examples (examples/images/): recognisable emoji from the *test* split.
EXAMPLES = {
    "1F60E": "smiling-face-with-sunglasses",
    "1F405": "tiger",
    "1F348": "melon",
    "1F68F": "bus-stop",  # no vehicle emoji falls in the test split; a bus stop is the nearest
    "1F3ED": "factory",
    "1F499": "blue-heart",
}


# ---------------------------------------------------------------------------
# pure helpers (tested in tests/test_emoji_data.py)

def is_skin_tone_variant(hexcode: str) -> bool:
    """True if any code point of `hexcode` ("1F44B-1F3FD", "1f44b-1f3fd") is a skin-tone modifier."""
    return any(part.upper() in SKIN_TONES for part in hexcode.replace("_", "-").split("-"))


def is_test(hexcode: str) -> bool:
    """The hold-out rule: deterministic, case-insensitive, about one code point in ten."""
    digest = hashlib.sha1(hexcode.upper().encode("ascii")).hexdigest()
    return int(digest, 16) % TEST_MODULUS == 0


def on_white(img: Image.Image) -> Image.Image:
    """`img` as RGB, with any transparency composited onto white."""
    img = img.convert("RGBA")
    canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, img).convert("RGB")


def fit(img: Image.Image, size: int) -> Image.Image:
    """On white, resized to size x size if it is not already."""
    img = on_white(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    return img


def side_by_side(a: Image.Image, b: Image.Image) -> Image.Image:
    """pix2pix's aligned pair: A left, B right, one RGB image 2W x W on white."""
    a, b = on_white(a), on_white(b)
    if a.size != b.size:
        raise ValueError(f"A is {a.size} but B is {b.size}")
    w, h = a.size
    out = Image.new("RGB", (2 * w, h), (255, 255, 255))
    out.paste(a, (0, 0))
    out.paste(b, (w, 0))
    return out


def is_blank(img: Image.Image, threshold: int = 250) -> bool:
    """True if every pixel is (nearly) white once composited on white."""
    return on_white(img).convert("L").getextrema()[0] >= threshold


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_save(img: Image.Image, path: Path) -> None:
    """Write `img` as PNG under a temporary name in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG", optimize=True)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


def render_svg(path: Path, size: int) -> Image.Image:
    import cairosvg  # checked by require_cairosvg() before any worker starts

    png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size)
    return Image.open(io.BytesIO(png))


# ---------------------------------------------------------------------------
# packages

def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "transmute" / "npm"


def installed_version(cache: Path, package: str) -> str | None:
    try:
        meta = json.loads((cache / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("version")


def ensure_packages(cache: Path, packages: list[str]) -> dict[str, str]:
    """Install `packages` into `cache` with npm unless the right major versions are there."""
    def ok(p):
        v = installed_version(cache, p)
        return v is not None and v.split(".")[0] == str(PACKAGES[p])

    missing = [p for p in packages if not ok(p)]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            sys.exit(f"error: npm not found on PATH; it installs {', '.join(missing)} (install Node.js/npm)")
        cache.mkdir(parents=True, exist_ok=True)
        specs = [f"{p}@{PACKAGES[p]}" for p in missing]
        print(f"npm install {' '.join(specs)} into {cache}", flush=True)
        r = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(cache), *specs],
                           capture_output=True, text=True)
        if r.returncode != 0 or not all(ok(p) for p in missing):
            last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
            sys.exit(f"error: npm install {' '.join(specs)} failed: {last[0]}")
    return {p: installed_version(cache, p) for p in packages}


def require_cairosvg() -> None:
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: the cairo C library is missing
        sys.exit(f"error: cairosvg is needed to render OpenMoji's SVGs ({e}); "
                 "run: pip install 'transmute[data]'")


# ---------------------------------------------------------------------------
# workers (module level so multiprocessing can pickle them)

def _openmoji_job(job):
    black, color, out, size = job
    try:
        a, b = render_svg(black, size), render_svg(color, size)
    except Exception:
        return "render-failed"
    if is_blank(a):
        return "blank"
    atomic_save(side_by_side(a, b), out)
    return "written"


def _emoji_job(job):
    src_a, src_b, out_a, out_b, size = job
    try:
        with Image.open(src_a) as a, Image.open(src_b) as b:
            a, b = fit(a, size), fit(b, size)
    except Exception:
        return "read-failed"
    atomic_save(a, out_a)
    atomic_save(b, out_b)
    return "written"


def _run(fn, jobs, processes):
    counts: dict[str, int] = {}
    if not jobs:
        return counts
    with Pool(processes) as pool:
        for i, status in enumerate(pool.imap_unordered(fn, jobs, chunksize=16), 1):
            counts[status] = counts.get(status, 0) + 1
            if i % 500 == 0:
                print(f"  {i}/{len(jobs)}", flush=True)
    return counts


def _count_pngs(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0


# ---------------------------------------------------------------------------
# the two sets

def build_openmoji(root: Path, modules: Path, versions: dict, size: int, force: bool, processes: int) -> dict:
    pkg = modules / "openmoji"
    black = {p.stem.upper(): p for p in (pkg / "black" / "svg").glob("*.svg")}
    color = {p.stem.upper(): p for p in (pkg / "color" / "svg").glob("*.svg")}
    out = root / "openmoji"
    stats = {"only-in-one-folder": len(black.keys() ^ color.keys()), "skin-tone-dropped": 0, "existing": 0}
    jobs = []
    for hexcode in sorted(black.keys() & color.keys()):
        if is_skin_tone_variant(hexcode):
            stats["skin-tone-dropped"] += 1
            continue
        dest = out / ("test" if is_test(hexcode) else "train") / f"{hexcode}.png"
        if dest.exists() and not force:
            stats["existing"] += 1
            continue
        jobs.append((black[hexcode], color[hexcode], dest, size))
    print(f"openmoji: {len(jobs)} pairs to render at {size} px", flush=True)
    stats.update(_run(_openmoji_job, jobs, processes))
    stats["train"] = _count_pngs(out / "train")
    stats["test"] = _count_pngs(out / "test")
    _write_source(out, ["openmoji"], versions, stats, [
        f"pix2pix aligned layout: {{train,test}}/HEX.png, each 2W x W RGB on white, W = {size};",
        "A (left) = openmoji/black/svg/HEX.svg (line art), B (right) = openmoji/color/svg/HEX.svg,",
        "rendered with cairosvg. Skin-tone variants dropped; pairs whose line art renders blank skipped.",
    ])
    return stats


def build_emoji(root: Path, modules: Path, versions: dict, size: int, force: bool, processes: int) -> dict:
    google = {p.stem.lower(): p for p in
              (modules / "emoji-datasource-google" / "img" / "google" / "64").glob("*.png")}
    twitter = {p.stem.lower(): p for p in
               (modules / "emoji-datasource-twitter" / "img" / "twitter" / "64").glob("*.png")}
    out = root / "emoji-google-twitter"
    stats = {"only-in-one-set": len(google.keys() ^ twitter.keys()), "skin-tone-dropped": 0, "existing": 0}
    jobs = []
    for code in sorted(google.keys() & twitter.keys()):
        if is_skin_tone_variant(code):
            stats["skin-tone-dropped"] += 1
            continue
        split = "test" if is_test(code) else "train"
        dest_a, dest_b = out / f"{split}A" / f"{code}.png", out / f"{split}B" / f"{code}.png"
        if dest_a.exists() and dest_b.exists() and not force:
            stats["existing"] += 1
            continue
        jobs.append((google[code], twitter[code], dest_a, dest_b, size))
    print(f"emoji-google-twitter: {len(jobs)} pairs to write at {size} px", flush=True)
    stats.update(_run(_emoji_job, jobs, processes))
    for d in ("trainA", "trainB", "testA", "testB"):
        stats[d] = _count_pngs(out / d)
    _write_source(out, ["emoji-datasource-google", "emoji-datasource-twitter"], versions, stats, [
        f"CycleGAN unaligned layout: {{train,test}}{{A,B}}/CODEPOINT.png, RGB on white, {size} x {size}.",
        "A = emoji-datasource-google/img/google/64 (Noto Emoji), B = emoji-datasource-twitter/img/twitter/64",
        "(Twemoji); only code points present in both; A and B share file names (paired ground truth).",
        "Skin-tone variants dropped.",
    ])
    return stats


def _write_source(out: Path, packages: list[str], versions: dict, stats: dict, layout: list[str]) -> None:
    lines = ["Built by scripts/emoji_datasets.py (transmute) from npm packages:", ""]
    for p in packages:
        lines.append(f"  {p}@{versions.get(p)}  licence: {LICENCES[p]}")
    lines += ["", *layout,
              f"Hold-out: test if int(sha1(HEXCODE upper-case).hexdigest(), 16) % {TEST_MODULUS} == 0.", "",
              "Counts:"]
    lines += [f"  {k}: {v}" for k, v in stats.items()]
    atomic_write_text("\n".join(lines) + "\n", out / "SOURCE.txt")


def write_examples(dest: Path, modules: Path, size_openmoji: int, size_emoji: int) -> None:
    """examples/images/{line-art,google}/: a few test-split emoji for the demo."""
    for hexcode, name in EXAMPLES.items():
        assert is_test(hexcode) and not is_skin_tone_variant(hexcode), hexcode
        svg = modules / "openmoji" / "black" / "svg" / f"{hexcode}.svg"
        atomic_save(on_white(render_svg(svg, size_openmoji)), dest / "line-art" / f"{name}.png")
        with Image.open(modules / "emoji-datasource-google" / "img" / "google" / "64" /
                        f"{hexcode.lower()}.png") as img:
            atomic_save(fit(img, size_emoji), dest / "google" / f"{name}.png")
    print(f"examples: {len(EXAMPLES)} line-art and {len(EXAMPLES)} google PNGs in {dest}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_root", nargs="?", type=Path, help="where the data sets go (e.g. data)")
    ap.add_argument("--only", choices=["openmoji", "emoji"], help="build only one of the two sets")
    ap.add_argument("--cache", type=Path, default=None,
                    help="npm install folder (default ${XDG_CACHE_HOME:-~/.cache}/transmute/npm)")
    ap.add_argument("--size-openmoji", type=int, default=128, help="side of each OpenMoji half (px)")
    ap.add_argument("--size-emoji", type=int, default=64, help="side of each Google/Twitter image (px)")
    ap.add_argument("--force", action="store_true", help="rewrite existing outputs")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--examples", type=Path, metavar="DIR",
                    help="also write the shipped demo examples (line-art/, google/) into DIR")
    args = ap.parse_args(argv)
    if args.out_root is None and args.examples is None:
        ap.error("give OUT_ROOT, --examples DIR, or both")

    sets = ["openmoji", "emoji"] if args.only is None else [args.only]
    if args.out_root is None:
        sets = []
    needed = []
    if "openmoji" in sets or args.examples:
        needed.append("openmoji")
    if "emoji" in sets or args.examples:
        needed.append("emoji-datasource-google")
    if "emoji" in sets:
        needed.append("emoji-datasource-twitter")
    if "openmoji" in needed:
        require_cairosvg()
    cache = args.cache or default_cache()
    versions = ensure_packages(cache, needed)
    modules = cache / "node_modules"

    if "openmoji" in sets:
        s = build_openmoji(args.out_root, modules, versions, args.size_openmoji, args.force, args.processes)
        print("openmoji: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if "emoji" in sets:
        s = build_emoji(args.out_root, modules, versions, args.size_emoji, args.force, args.processes)
        print("emoji-google-twitter: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if args.examples:
        write_examples(args.examples, modules, args.size_openmoji, args.size_emoji)
    return 0


if __name__ == "__main__":
    sys.exit(main())
