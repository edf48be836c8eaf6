"""Pictures a person can look at: spectrograms and image grids as PNG."""

from __future__ import annotations

from pathlib import Path

# A perceptually ordered dark-to-bright ramp (black, purple, orange, pale yellow).
_RAMP = [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
         (250, 193, 39), (252, 255, 164)]


def _colour(values):
    import numpy as np

    ramp = np.array(_RAMP, dtype=np.float64)
    pos = np.clip(values, 0, 1) * (len(ramp) - 1)
    low = np.floor(pos).astype(int).clip(0, len(ramp) - 2)
    frac = (pos - low)[..., None]
    return (ramp[low] * (1 - frac) + ramp[low + 1] * frac).astype(np.uint8)


def spectrogram_png(panels, path: Path, titles=None, floor_db: float = 80.0, scale: int = 2) -> Path:
    """Stack (bins, frames) natural-log spectrograms vertically, low frequencies at the bottom.

    All panels share one colour scale (the loudest value, down floor_db), so
    they can be compared by eye. Written atomically.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    from transmute.files import atomic_path

    arrays = [np.asarray(p.detach().cpu() if hasattr(p, "detach") else p, dtype=np.float64) for p in panels]
    top = max(a.max() for a in arrays)
    span = floor_db / (20 / np.log(10))  # dB -> natural-log units of magnitude
    width = max(a.shape[1] for a in arrays) * scale
    label_h = 14 if titles else 0
    images = []
    for i, a in enumerate(arrays):
        rgb = _colour((a[::-1] - (top - span)) / span)
        img = Image.fromarray(rgb).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (width, img.height + label_h), (255, 255, 255))
        canvas.paste(img, (0, label_h))
        if titles:
            ImageDraw.Draw(canvas).text((2, 1), str(titles[i]), fill=(0, 0, 0))
        images.append(canvas)
    sheet = Image.new("RGB", (width, sum(im.height + 4 for im in images)), (255, 255, 255))
    y = 0
    for im in images:
        sheet.paste(im, (0, y))
        y += im.height + 4
    with atomic_path(Path(path)) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def image_grid_png(rows, path: Path, titles=None, gap: int = 4) -> Path:
    """uint8 (H, W, 3) arrays as a grid, one list per row (e.g. input | output | target), column titles on top.

    Written atomically; images of different sizes are placed top-left in their cells.
    """
    from PIL import Image, ImageDraw

    from transmute.files import atomic_path

    cell_h = max(a.shape[0] for row in rows for a in row)
    cell_w = max(a.shape[1] for row in rows for a in row)
    columns = max(len(row) for row in rows)
    label_h = 14 if titles else 0
    sheet = Image.new("RGB", (columns * (cell_w + gap) - gap, label_h + len(rows) * (cell_h + gap) - gap),
                      (255, 255, 255))
    if titles:
        draw = ImageDraw.Draw(sheet)
        for c, title in enumerate(titles):
            draw.text((c * (cell_w + gap) + 2, 1), str(title), fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, array in enumerate(row):
            sheet.paste(Image.fromarray(array), (c * (cell_w + gap), label_h + r * (cell_h + gap)))
    with atomic_path(Path(path)) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------- sheets of small images


def enlarged(batch, scale: int = 3) -> list:
    """(n, C, S, S) in [-1, 1] -> n uint8 (S*scale, S*scale, 3) arrays (grayscale repeated), nearest-neighbour
    enlarged: a 28 px digit is too small to judge at its own size."""
    import numpy as np

    from transmute.imagedata import to_uint8

    arrays = to_uint8(batch if batch.shape[1] == 3 else batch.repeat(1, 3, 1, 1))
    return [np.ascontiguousarray(a.repeat(scale, 0).repeat(scale, 1)) for a in arrays]


def sheet_png(rows, path: Path, row_titles=None, column_titles=None, scale: int = 3) -> Path:
    """A sheet of rows of images (each row a list or batch of (C, S, S) tensors in [-1, 1]); a row title,
    when given, is drawn in a first column of its own."""
    import numpy as np
    from PIL import Image, ImageDraw

    import torch

    sheet = [enlarged(torch.stack(list(row)), scale) for row in rows]
    if row_titles:
        h, w = sheet[0][0].shape[:2]
        labels = []
        for title in row_titles:
            label = Image.new("RGB", (max(w, 6 * len(title) + 4), h), (255, 255, 255))
            ImageDraw.Draw(label).text((2, h // 2 - 6), str(title), fill=(0, 0, 0))
            labels.append(np.asarray(label))
        width = max(label.shape[1] for label in labels)
        labels = [np.pad(label, ((0, 0), (0, width - label.shape[1]), (0, 0)), constant_values=255)
                  for label in labels]
        sheet = [[label] + row for label, row in zip(labels, sheet)]
        if column_titles:
            column_titles = [""] + list(column_titles)
    return image_grid_png(sheet, path, titles=column_titles)
