"""Pictures of a latent space: sheets of small images, enlarged so a person can see them."""

from __future__ import annotations

from pathlib import Path


def pictures(batch, scale: int = 3) -> list:
    """(n, C, S, S) in [-1, 1] -> n uint8 (S*scale, S*scale, 3) arrays (grayscale repeated), nearest-neighbour
    enlarged: a 28 px digit is too small to judge at its own size."""
    import numpy as np

    from transmute.imagedata import to_uint8

    arrays = to_uint8(batch if batch.shape[1] == 3 else batch.repeat(1, 3, 1, 1))
    return [np.ascontiguousarray(a.repeat(scale, 0).repeat(scale, 1)) for a in arrays]


def grid(rows, path: Path, row_titles=None, column_titles=None, scale: int = 3) -> Path:
    """A sheet of rows of images (each row a list or batch of (C, S, S) tensors in [-1, 1]); a row title,
    when given, is drawn in a first column of its own."""
    import numpy as np
    from PIL import Image, ImageDraw

    from transmute.viz import image_grid_png

    import torch

    sheet = [pictures(torch.stack(list(row)), scale) for row in rows]
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
