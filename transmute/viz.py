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
