"""`transmute eval images`: how close translated images are to their ground truth.

Per image, then the mean over images: PSNR, SSIM (scikit-image's) and L1, in
RGB with 8-bit values scaled to [0, 1], at the target's size. Over the whole
set: FD-EfficientNet-Lite0, the Fréchet distance between Gaussian fits of the
pooled ImageNet features of the predictions and of the targets (features.py).
With the inputs given, every figure is also computed for the identity
baseline (the input taken as the prediction), which a translation must beat.

Files are paired by their path relative to their folder, extension aside
(sub/x.png with sub/x.jpg, never with other/x.png). `evaluate()` takes the
feature extractor as an argument; the command uses features.features, which
tests replace with a cheap stand-in where FD is not under test.
"""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from transmute.errors import TransmuteError
from transmute.metrics import PSNR_CAP_DB, psnr  # the cap is printed as "100.00" like any other value

FEATURE_BATCH = 32
FD_NAME = "FD-EfficientNet-Lite0"
# Below this many images the FD estimate is biased upward (the covariance of
# 1280-d features is estimated from too few samples).
FD_RELIABLE_COUNT = 2000
SHEET_CELL = 160  # height in pixels of each image on the contact sheet
TRANSLATION_PIPELINE = "image-translation"


# --------------------------------------------------------------------------- metrics


def ssim(prediction, target) -> float:
    """scikit-image's SSIM of two (H, W, 3) arrays in [0, 1]; NaN for an image under 3 pixels on a side."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise TransmuteError("SSIM needs the scikit-image package, one of transmute's dependencies; "
                             "install it with: pip install scikit-image") from None
    side = min(target.shape[:2])
    window = min(7, side if side % 2 else side - 1)  # the default 7x7 window, smaller for tiny images
    if window < 3:
        return float("nan")
    return float(structural_similarity(prediction, target, channel_axis=2, data_range=1.0, win_size=window))


def l1(prediction, target) -> float:
    """Mean absolute difference of two arrays in [0, 1]."""
    import numpy as np

    return float(np.mean(np.abs(np.asarray(prediction, dtype=np.float64) - np.asarray(target, dtype=np.float64))))


METRICS = (("psnr", "PSNR (dB)", psnr, "higher"), ("ssim", "SSIM", ssim, "higher"), ("l1", "L1", l1, "lower"))


# --------------------------------------------------------------------------- files


def images_by_relative_path(folder: Path, role: str) -> tuple[dict[str, Path], list[str]]:
    """The images below folder by relative path without extension ('sub/x'), and one-line notes.

    A folder that does not exist or holds no image is a TransmuteError naming
    the option (`role`) it was given to.
    """
    from transmute.files import discover
    from transmute_image.stages import EXTENSIONS

    if not folder.is_dir():
        raise TransmuteError(f"--{role} {folder}: " + ("not a folder" if folder.exists() else "no such folder"))
    found, _, problems = discover([str(folder)], lambda p: p.suffix.lower().lstrip(".") in EXTENSIONS)
    notes = [f"{path}: {reason}" for path, reason in problems]
    by_name: dict[str, Path] = {}
    for item in found:
        name = item.relative.with_suffix("").as_posix()
        if name in by_name:
            notes.append(f"{item.path}: left out, {by_name[name].name} beside it has the same name "
                         "(extension aside) and is used")
            continue
        by_name[name] = item.path
    if not by_name:
        raise TransmuteError(f"--{role} {folder}: no images there (looked for "
                             f"{', '.join('.' + e for e in ('png', 'jpg', 'jpeg', 'webp', 'bmp', 'tif'))}, ...)")
    return by_name, notes


@dataclass
class Pair:
    name: str
    prediction: Path
    target: Path
    input: Path | None = None


def match(pred: Path, target: Path, inputs: Path | None = None) -> tuple[list[Pair], list[str]]:
    """Predictions paired with their targets (and inputs) by relative path; notes on what has no partner."""
    predictions, notes = images_by_relative_path(pred, "pred")
    targets, more = images_by_relative_path(target, "target")
    notes += more
    sources: dict[str, Path] = {}
    if inputs is not None:
        sources, more = images_by_relative_path(inputs, "input")
        notes += more
    pairs = [Pair(name, path, targets[name], sources.get(name)) for name, path in sorted(predictions.items())
             if name in targets]
    if not pairs:
        raise TransmuteError(f"no image in {pred} has a target at the same relative path (name without "
                             f"extension) in {target}")
    lonely = [(sorted(set(predictions) - set(targets)), "prediction", "target"),
              (sorted(set(targets) - set(predictions)), "target", "prediction")]
    if inputs is not None:
        lonely.append(([p.name for p in pairs if p.input is None], "prediction",
                       "input; the identity baseline leaves it out"))
    for names, what, partner in lonely:
        if names:  # named, so that a misspelt or misplaced file can be found
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            notes.append(f"{len(names)} {what}{'s have' if len(names) > 1 else ' has'} no {partner} ({shown})")
    return pairs, notes


def read_rgb(path: Path):
    """An image file as float32 torch (1, 3, H, W) in [0, 1], through the images.load stage."""
    from transmute_image.stages import LoadImages

    return LoadImages(mode="RGB").load(Path(path)).data


def _to_size(image, size: tuple[int, int]):
    from transmute_image.stages import _resize

    return image if tuple(image.shape[-2:]) == tuple(size) else _resize(image, size)


def _eight_bit(image):
    """(1, 3, H, W) torch -> (H, W, 3) float64 numpy of 8-bit values in [0, 1], as a saved PNG would hold."""
    import numpy as np

    return np.round(image[0].clamp(0, 1).permute(1, 2, 0).double().numpy() * 255) / 255


def _compare_size(target_size: tuple[int, int], size: int | None) -> tuple[int, int]:
    """The target's size, or with --size N the target scaled so its longer side is N."""
    if not size:
        return tuple(target_size)
    h, w = target_size
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


# --------------------------------------------------------------------------- evaluation


@dataclass
class Report:
    pred: str
    target: str
    input: str | None
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    resized: dict[str, int] = field(default_factory=dict)
    fd: float | None = None
    fd_baseline: float | None = None
    fd_skipped: bool = False
    pairs: list[Pair] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        import numpy as np

        values = [row[key] for row in self.rows if row.get(key) is not None and not math.isnan(row[key])]
        return float(np.mean(values)) if values else None

    @property
    def has_baseline(self) -> bool:
        return any("psnr_baseline" in row for row in self.rows)

    def table(self) -> list[tuple[str, float | None, float | None, str]]:
        """(metric with its arrow, model, identity baseline, which is better)."""
        lines = []
        for key, label, _, better in METRICS:
            lines.append((label, self.mean(key), self.mean(f"{key}_baseline"), better))
        if not self.fd_skipped:
            lines.append((FD_NAME, self.fd, self.fd_baseline, "lower"))
        return lines

    def text(self) -> str:
        n = len(self.rows)
        head = f"image translation: {n} image{'s' if n != 1 else ''}, {self.pred} against {self.target}"
        if self.input:
            baselined = sum(1 for row in self.rows if "psnr_baseline" in row)
            head += f"; identity baseline from {self.input} ({baselined} inputs)"
        out = [head]
        header = ("metric", "model", "identity baseline", "better?")
        body = []
        for label, model, base, better in self.table():
            arrow = "↑" if better == "higher" else "↓"
            if model is None or base is None:
                verdict = "-"
            elif model == base:
                verdict = "equal"
            else:
                verdict = "model" if (model > base) == (better == "higher") else "baseline"
            body.append((f"{label} {arrow}", _number(label, model), _number(label, base), verdict))
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(4)]
        for row in (header, *body):
            out.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        out.append(f"  ↑ higher is better, ↓ lower is better; PSNR is capped at {PSNR_CAP_DB:g} dB "
                   "(identical images)")
        if self.fd is None and not self.fd_skipped:
            out.append(f"  note: {FD_NAME} needs at least 2 images")
        elif self.fd is not None and n < FD_RELIABLE_COUNT:
            out.append(f"  note: {FD_NAME} from {n} images is biased upward (below ~{FD_RELIABLE_COUNT} images); "
                       "compare it only between evaluations with the same number of images")
        return "\n".join(out)


def _number(label: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if label in ("L1", "SSIM") else f"{value:.2f}"


def evaluate(pairs: list[Pair], size: int | None = None, embed=None, fd: bool = True,
             on_problem=None) -> Report:
    """Measure each pair; `embed(list of (3, H, W) tensors) -> (n, d) array` gives FD's features.

    A file that cannot be read is reported through on_problem(line) (and in
    report.unreadable) and its pair left out; the rest go on.
    """
    import numpy as np
    import torch

    from transmute_image import features as feats

    if fd and embed is None:
        feats.weights_path()  # a missing weights package is said before any image is read, not after
    embed = embed or feats.features
    report = Report(pred="", target="", input=None, fd_skipped=not fd)
    resized = {"prediction": 0, "input": 0}
    chunks: dict[str, list] = {"prediction": [], "target": [], "input": []}
    found: dict[str, list] = {"prediction": [], "target": [], "input": []}

    def flush(final=False):
        for role, chunk in chunks.items():
            if chunk and (final or len(chunk) >= FEATURE_BATCH):
                found[role].append(np.asarray(embed(chunk), dtype=np.float64))
                chunk.clear()

    for pair in pairs:
        images = {}
        failed = False
        for role in ("prediction", "target", "input"):
            path = getattr(pair, role)
            if path is None:
                continue
            try:
                images[role] = read_rgb(path)
            except TransmuteError as exc:
                line = f"{path}: {' '.join(str(exc).split())}; pair {pair.name} left out"
                report.unreadable.append(line)
                if on_problem:
                    on_problem(line)
                failed = True
                break
        if failed:
            continue
        target_hw = tuple(images["target"].shape[-2:])
        size_hw = _compare_size(target_hw, size)
        for role in images:
            if role != "target" and tuple(images[role].shape[-2:]) != target_hw:
                resized[role] += 1
            images[role] = _to_size(images[role], size_hw)
        arrays = {role: _eight_bit(image) for role, image in images.items()}
        row = {"name": pair.name}
        for key, _, measure, _ in METRICS:
            row[key] = measure(arrays["prediction"], arrays["target"])
        if "input" in arrays:
            for key, _, measure, _ in METRICS:
                row[f"{key}_baseline"] = measure(arrays["input"], arrays["target"])
        report.rows.append(row)
        report.pairs.append(pair)
        if fd:
            for role, array in arrays.items():
                chunks[role].append(torch.from_numpy(array).permute(2, 0, 1).float())
            flush()
    if fd:
        flush(final=True)
        joined = {role: np.concatenate(parts) for role, parts in found.items() if parts}
        if len(report.rows) >= 2:
            report.fd = feats.frechet_distance(joined["prediction"], joined["target"])
            if len(joined.get("input", ())) >= 2:
                report.fd_baseline = feats.frechet_distance(joined["input"], joined["target"])
    report.resized = {role: count for role, count in resized.items() if count}
    if not report.rows:
        raise TransmuteError("no pair of images could be read; see the lines above")
    return report


# --------------------------------------------------------------------------- outputs


def write_csv(report: Report, path: Path) -> None:
    from transmute.files import atomic_path

    keys = ["name"] + [key for key, *_ in METRICS]
    if report.has_baseline:
        keys += [f"{key}_baseline" for key, *_ in METRICS]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in report.rows:
            writer.writerow([row["name"]] + [_csv_value(row.get(key)) for key in keys[1:]])


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}"


def sheet_rows(report: Report, each: int = 4) -> list[int]:
    """Indices of the `each` worst then the `each` best rows by PSNR, none twice."""
    order = sorted(range(len(report.rows)), key=lambda i: (report.rows[i]["psnr"], report.rows[i]["name"]))
    worst = order[:each]
    best = [i for i in order[-each:][::-1] if i not in worst]
    return worst + best


def write_sheet(report: Report, path: Path) -> None:
    """A PNG of the 4 worst and 4 best images by PSNR: input | prediction | target, a caption above each row."""
    from PIL import Image, ImageDraw

    from transmute.files import atomic_path

    font_height, gap = 14, 4
    chosen = sheet_rows(report)
    rows = []
    for place, index in enumerate(chosen):
        pair, row = report.pairs[index], report.rows[index]
        cells = []
        for role in ("input", "prediction", "target"):
            source = getattr(pair, role)
            if source is None:
                continue
            pixels = (_eight_bit(read_rgb(source)) * 255).round().astype("uint8")
            img = Image.fromarray(pixels)
            width = max(1, round(img.width * SHEET_CELL / img.height))
            # Enlarged small images keep their pixels visible; large ones are shrunk smoothly.
            resample = Image.Resampling.NEAREST if width >= img.width else Image.Resampling.LANCZOS
            cells.append(img.resize((width, SHEET_CELL), resample))
        rank = "worst" if place < 4 else "best"
        rows.append((f"{pair.name}   PSNR {row['psnr']:.2f} dB ({rank})", cells))
    width = max(sum(c.width for c in cells) + gap * (len(cells) + 1) for _, cells in rows)
    height = font_height + gap + sum(font_height + gap + SHEET_CELL + gap for _ in rows) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    roles = "input | prediction | target" if any(p.input for p in report.pairs) else "prediction | target"
    draw.text((gap, gap), f"each row: {roles}; the 4 worst, then the 4 best by PSNR", fill="black")
    y = gap + font_height + gap
    for caption, cells in rows:
        draw.text((gap, y), caption, fill="black")
        y += font_height
        x = gap
        for cell in cells:
            sheet.paste(cell, (x, y))
            x += cell.width + gap
        y += SHEET_CELL + gap
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


# --------------------------------------------------------------------------- a test split through a model


def split_test_set(split: Path, direction: str, scratch: Path) -> tuple[Path, Path, list[str]]:
    """(input folder, target folder, notes) of a test split, aligned (A|B files) or unaligned (testA/testB)."""
    from PIL import Image

    if not split.is_dir():
        raise TransmuteError(f"--data {split}: " + ("not a folder" if split.exists() else "no such folder"))
    a, b = split / "testA", split / "testB"
    if a.is_dir() and b.is_dir():
        return (a, b, []) if direction == "AtoB" else (b, a, [])
    if a.is_dir() or b.is_dir():
        raise TransmuteError(f"--data {split}: has {'testA' if a.is_dir() else 'testB'} but not "
                             f"{'testB' if a.is_dir() else 'testA'}; an unaligned split needs both")
    # A data set's root (train/ and test/ side by side): its files, found recursively, would mix the training
    # pairs into the evaluation without a word.
    splits = [name for name in ("train", "trainA", "trainB", "test", "val") if (split / name).is_dir()]
    if splits:
        held_out = next((split / name for name in ("test", "val") if name in splits), None)
        raise TransmuteError(f"--data {split}: holds the split folder(s) {', '.join(s + '/' for s in splits)} "
                             "(a data set's root, training data included); give "
                             + (f"--data {held_out}" if held_out else "a folder of held-out A|B files, or the "
                                "parent of testA/ and testB/"))
    files, _ = images_by_relative_path(split, "data")
    inputs, targets, notes = scratch / "input", scratch / "target", []
    for name, path in files.items():
        try:
            image = read_rgb(path)
        except TransmuteError as exc:
            notes.append(f"{path}: {' '.join(str(exc).split())}; left out")
            continue
        h, w = image.shape[-2:]
        if w != 2 * h:
            notes.append(f"{path}: {w}x{h} is not an aligned A|B pair (width twice the height); left out")
            continue
        left, right = image[..., : w // 2], image[..., w // 2:]
        source, truth = (left, right) if direction == "AtoB" else (right, left)
        for folder, half in ((inputs, source), (targets, truth)):
            out = folder / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((_eight_bit(half) * 255).round().astype("uint8")).save(out)
    if not inputs.is_dir():
        raise TransmuteError(f"--data {split}: no aligned A|B image there (each file's width twice its height), "
                             "and no testA/testB folders")
    return inputs, targets, notes


def translate(model: str, inputs: Path, out: Path, direction: str) -> list[str]:
    """Translate `inputs` into `out` with the image-translation pipeline; one line per file that failed."""
    from transmute import run
    from transmute_image.commands import translation_pipeline

    # The model's family (its checkpoint says which) chooses the translate stage, as in translate-images.
    result = run(translation_pipeline(model, direction), [inputs], out)
    if result.interrupted:
        raise click.Abort()
    return [f"{o.job.label}: {o.reason}; not translated" for o in result.failed]


# --------------------------------------------------------------------------- the command

_DEFAULT_SHEET = "\0default"  # what a bare --sheet gives: not a name a user can type


@click.command("images")
@click.option("--pred", metavar="DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Predicted images. With --model: where the translations go (default: a temporary folder); "
                   "ones already there are reused.")
@click.option("--target", metavar="DIR", type=click.Path(path_type=Path), default=None,
              help="Ground-truth images, at the same relative paths as the predictions (extension aside).")
@click.option("--input", "inputs", metavar="DIR", type=click.Path(path_type=Path), default=None,
              help="The inputs the predictions were made from: adds the identity baseline beside every figure.")
@click.option("--model", metavar="NAME|CKPT", default=None, help="Translate a test split with this model (name or checkpoint) first.")
@click.option("--data", metavar="SPLIT", type=click.Path(path_type=Path), default=None,
              help="With --model: the test split, an aligned folder (each file A|B side by side) or the parent "
                   "of testA/ and testB/.")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), default="AtoB", show_default=True,
              help="With --model: which side is the input.")
@click.option("--sheet", metavar="FILE.png", default=None, is_flag=False, flag_value=_DEFAULT_SHEET, help="Write a contact sheet PNG of the 4 worst and 4 best images by PSNR "
                                        "(bare --sheet: PRED-sheet.png beside the predictions folder).")
@click.option("--csv", "csv_path", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one row per image (name, psnr, ssim, l1 and their baseline values).")
@click.option("--size", metavar="N", type=click.IntRange(min=8), default=None,
              help="Compare at this size (the target's longer side scaled to N) instead of the target's own.")
@click.option("--no-fd", "no_fd", is_flag=True, help=f"Skip {FD_NAME}: an ImageNet network over every image, "
                                                      "then two 1280x1280 matrix square roots (seconds).")
def eval_images_command(pred, target, inputs, model, data, direction, sheet, csv_path, size, no_fd):
    """Measure translated images against their ground truth: PSNR, SSIM, L1, FD-EfficientNet-Lite0.

    \b
    transmute eval images --pred out/ --target truth/ [--input in/]
    transmute eval images --model NAME|CKPT --data SPLIT [--direction BtoA]
    """
    warn = lambda line: click.echo(f"warning: {line}", err=True)  # noqa: E731
    if model is not None:
        if data is None:
            raise click.UsageError("--model needs --data SPLIT (the test split to translate)")
        if target is not None or inputs is not None:
            raise click.UsageError("--model --data finds the inputs and targets in the split; "
                                   "leave out --target and --input")
        default_sheet = (pred.parent / f"{pred.name}-sheet.png") if pred else Path("eval-images-sheet.png")
        sheet = _sheet_path(sheet, default_sheet)  # checked before minutes of translation
        with tempfile.TemporaryDirectory(prefix="transmute-eval-") as scratch:
            scratch = Path(scratch)
            inputs, target, notes = split_test_set(data, direction, scratch)
            for line in notes:
                warn(line)
            out = pred or scratch / "pred"
            for line in translate(model, inputs, out, direction):
                warn(line)
            if not out.is_dir():
                raise TransmuteError(f"model {model} translated no image of {data}")
            # The report names what the user gave, not scratch folders that are gone when it is read.
            labels = {} if pred else {out: f"the translations of {model}"}
            if scratch in Path(target).parents:  # an aligned split, cut in two
                left, right = ("left", "right") if direction == "AtoB" else ("right", "left")
                labels.update({inputs: f"{data} ({left} halves)", target: f"{data} ({right} halves)"})
            _evaluate_and_print(out, target, inputs, sheet, csv_path, size, no_fd, warn, labels)
        return
    if data is not None:
        raise click.UsageError("--data is for --model; to compare folders give --pred and --target")
    if pred is None or target is None:
        raise click.UsageError("give --pred DIR and --target DIR (or --model NAME --data SPLIT)")
    sheet = _sheet_path(sheet, pred.resolve().parent / f"{pred.resolve().name}-sheet.png")
    _evaluate_and_print(pred, target, inputs, sheet, csv_path, size, no_fd, warn)


def _sheet_path(sheet, default_sheet: Path) -> Path | None:
    """Where --sheet writes (None: no sheet); a folder is refused now, not after the evaluation."""
    if sheet is None:
        return None
    path = default_sheet if sheet == _DEFAULT_SHEET else Path(sheet)
    if path.is_dir() or str(sheet).endswith("/"):  # "out/sheets/" means a folder even before it exists
        raise TransmuteError(f"--sheet {path}: is a folder; give a file name such as {path / 'sheet.png'}")
    return path


def _evaluate_and_print(pred, target, inputs, sheet_path, csv_path, size, no_fd, warn, labels=None):
    pairs, notes = match(pred, target, inputs)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    report = evaluate(pairs, size=size, fd=not no_fd, on_problem=warn)
    labels = labels or {}
    report.pred, report.target = str(labels.get(pred, pred)), str(labels.get(target, target))
    report.input = str(labels.get(inputs, inputs)) if inputs else None
    for role, count in report.resized.items():
        warn(f"{count} {role}{'s' if count > 1 else ''} resized (bilinear) to {'their' if count > 1 else 'its'} "
             "target's size before comparing")
    click.echo(report.text())
    if csv_path is not None:
        write_csv(report, csv_path)
        click.echo(f"wrote {csv_path}")
    if sheet_path is not None:
        write_sheet(report, sheet_path)
        click.echo(f"wrote {sheet_path}")
