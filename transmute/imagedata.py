"""Training data for image translation: the folder layouts users already have, and augmentation.

Layouts (those of the widely used pix2pix/CycleGAN reference implementation, plus one):

- aligned pairs: DATA/train/*.png, each image A and B side by side (A left);
  DATA/val/ and DATA/test/ alike;
- unaligned domains: DATA/trainA/ and DATA/trainB/ (testA/, testB/ for
  evaluation); as paired data, files with the same name are one pair;
- two plain folders (--a DIR --b DIR) whose files match by relative path.

Items are read from disk in the loop's worker processes (decoding a small PNG
takes about a millisecond), with all randomness from the generator the loop
hands `load`: the pix2pix paper's random jitter (scale to `load_size`, crop
`crop_size` at a random place), a horizontal flip with probability 1/2, the
same for both images of a pair. An image smaller than the crop is padded with
white, never a crash. Pixels come out as float32 (3, crop, crop) in [-1, 1];
transparency is composited on white, the background of the shipped data sets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from transmute.errors import TransmuteError
from transmute.training import TrainingData

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: Path) -> dict[str, Path]:
    """{relative path without suffix: path} of the images under a folder, recursively, in sorted order."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in SUFFIXES and path.is_file():
            found[path.relative_to(folder).with_suffix("").as_posix()] = path
    return found


def read_rgb(path: Path):
    """An image file as uint8 (H, W, 3), transparency composited on white; TransmuteError naming the file."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise TransmuteError(f"{path}: not a readable image ({' '.join(str(exc).split()) or type(exc).__name__})") \
            from None


@dataclass(frozen=True)
class Pair:
    """One training pair: two files, or one aligned file (b is None: A is its left half, B its right)."""

    name: str
    a: Path
    b: Path | None = None


def _describe(data: Path, split: str) -> str:
    return (f"{data}: no {split} images found; expected {split}/ with A|B side-by-side images, "
            f"{split}A/ and {split}B/, or --a DIR --b DIR")


def paired_split(data: Path | None, split: str = "train", a_dir: Path | None = None,
                 b_dir: Path | None = None) -> list[Pair]:
    """The pairs of one split, from whichever layout `data` has (or from two plain folders)."""
    if a_dir is not None or b_dir is not None:
        if a_dir is None or b_dir is None:
            raise TransmuteError("--a and --b go together: two folders whose files match by name")
        return _matched(Path(a_dir), Path(b_dir))
    data = Path(data)
    if not data.is_dir():
        raise TransmuteError(f"{data}: not a folder")
    aligned = data / split
    if aligned.is_dir():
        files = list_images(aligned)
        if files:
            return [Pair(name, path) for name, path in files.items()]
    if (data / f"{split}A").is_dir() and (data / f"{split}B").is_dir():
        return _matched(data / f"{split}A", data / f"{split}B")
    files = list_images(data) if split == "train" else {}
    if files and not any((data / s).is_dir() for s in ("train", "trainA", "test", "testA")):
        return [Pair(name, path) for name, path in files.items()]  # a bare folder of aligned images
    raise TransmuteError(_describe(data, split))


def aligned_only(pairs: list[Pair], where) -> tuple[list[Pair], list[str]]:
    """The pairs less the aligned files whose width is not twice their height (from their headers), and a
    note naming those; TransmuteError when no aligned file is left (a folder of plain images, say)."""
    from PIL import Image

    kept, odd = [], []
    for pair in pairs:
        if pair.b is not None:
            kept.append(pair)
            continue
        try:
            with Image.open(pair.a) as img:
                w, h = img.size
                if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF-rotated a quarter turn, as read_rgb reads it
                    w, h = h, w
        except (OSError, ValueError, SyntaxError):
            kept.append(pair)  # read_rgb names the file and the reason when it is read
            continue
        (kept if w == 2 * h else odd).append(pair if w == 2 * h else f"{pair.a.name} ({w}x{h})")
    if not kept:
        raise TransmuteError(f"{where}: none of its {len(odd)} images is an aligned A|B pair (A and B side "
                             "by side, width twice the height); for matching files in two folders use "
                             "DATA/trainA + DATA/trainB or --a DIR --b DIR")
    notes = [f"left out {len(odd)} file(s) that are not aligned A|B pairs (width twice the height): "
             + ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")] if odd else []
    return kept, notes


def _matched(a_dir: Path, b_dir: Path) -> list[Pair]:
    for folder in (a_dir, b_dir):
        if not folder.is_dir():
            raise TransmuteError(f"{folder}: not a folder")
    a, b = list_images(a_dir), list_images(b_dir)
    pairs = [Pair(name, a[name], b[name]) for name in a if name in b]
    if not pairs:
        raise TransmuteError(f"{a_dir} and {b_dir}: no file names in common ({len(a)} and {len(b)} images); "
                             "paired data needs the same name for both halves of a pair")
    return pairs


def unpaired_split(data: Path, split: str = "train") -> dict[str, list[Path]]:
    """{'a': files, 'b': files} of DATA/{split}A and DATA/{split}B."""
    data = Path(data)
    out = {}
    for key, side in (("a", "A"), ("b", "B")):
        folder = data / f"{split}{side}"
        files = list(list_images(folder).values()) if folder.is_dir() else []
        if not files:
            raise TransmuteError(f"{folder}: no images; unpaired data needs {data}/{split}A/ and {data}/{split}B/")
        out[key] = files
    return out


def holdout(name: str, percent: int = 10) -> bool:
    """Whether a name falls in the held-out share: a hash, so the split never depends on order or count."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < percent


@dataclass
class Augment:
    """Scale to load_size x load_size, crop crop_size at random, flip half the time; the same for all images
    handed in one call. load_size 0 keeps the size (the crop alone then jitters)."""

    crop_size: int
    load_size: int = 0
    flip: bool = True

    def centred(self, images: list) -> list:
        """The same crop every time: the middle, unflipped (what sample grids show)."""
        return Augment(self.crop_size, self.load_size, flip=False)(images, _Middle())

    def __call__(self, images: list, rng) -> list:
        import numpy as np
        import torch
        from PIL import Image

        out = []
        if self.load_size:
            images = [img if img.shape[:2] == (self.load_size,) * 2 else
                      np.asarray(Image.fromarray(img).resize((self.load_size,) * 2, Image.BICUBIC)) for img in images]
        h, w = images[0].shape[:2]
        top = int(rng.integers(max(h - self.crop_size, 0) + 1))
        left = int(rng.integers(max(w - self.crop_size, 0) + 1))
        flip = self.flip and bool(rng.integers(2))
        for img in images:
            patch = img[top : top + self.crop_size, left : left + self.crop_size]
            if patch.shape[:2] != (self.crop_size, self.crop_size):  # smaller than the crop: white around it
                canvas = np.full((self.crop_size, self.crop_size, 3), 255, dtype=np.uint8)
                canvas[: patch.shape[0], : patch.shape[1]] = patch
                patch = canvas
            if flip:
                patch = patch[:, ::-1]
            tensor = torch.from_numpy(np.array(patch)).permute(2, 0, 1).float()  # a writable copy
            out.append(tensor.div_(127.5).sub_(1.0))
        return out


class _Middle:
    """Stands in for a numpy Generator: every draw is the middle of its range."""

    def integers(self, high):
        return (high - 1) // 2


def split_aligned(img):
    """An aligned A|B array -> (A, B), the left and right halves."""
    half = img.shape[1] // 2
    return img[:, :half], img[:, half : 2 * half]


class PairedImages(TrainingData):
    """Paired data (pix2pix): an item is {'a': input, 'b': target}, cropped and flipped alike.

    direction "BtoA" swaps the halves. Items are named by their file name
    relative to the split folder, without suffix (what --sample-weights lists).
    """

    def __init__(self, pairs: list[Pair], augment: Augment, direction: str = "AtoB"):
        self.pairs, self.augment, self.swap = pairs, augment, direction == "BtoA"

    def items(self):
        return [p.name for p in self.pairs]

    def read(self, index: int):
        """The (input, target) arrays of one pair, before augmentation."""
        pair = self.pairs[index]
        if pair.b is None:
            a, b = split_aligned(read_rgb(pair.a))
        else:
            a, b = read_rgb(pair.a), read_rgb(pair.b)
            if a.shape != b.shape:
                import numpy as np
                from PIL import Image

                b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BICUBIC))
        return (b, a) if self.swap else (a, b)

    def load(self, index, rng):
        a, b = self.augment(list(self.read(index)), rng)
        return {"a": a, "b": b}


class UnpairedImages(TrainingData):
    """Unpaired domains (CycleGAN): each batch element is one image of A and one of B, drawn independently.

    Items are named 'a/NAME' and 'b/NAME'.
    """

    def __init__(self, files: dict[str, list[Path]], augment: Augment, roots: dict[str, Path] | None = None):
        self.files, self.augment = files, augment
        self.names = {}
        for key, paths in files.items():
            root = (roots or {}).get(key)
            self.names[key] = [f"{key}/{(p.relative_to(root) if root else Path(p.name)).with_suffix('').as_posix()}"
                               for p in paths]

    def items(self):
        return self.names

    def load(self, index, rng):
        a = self.augment([read_rgb(self.files["a"][index["a"]])], rng)[0]
        b = self.augment([read_rgb(self.files["b"][index["b"]])], rng)[0]
        return {"a": a, "b": b}


def spread(count: int, wanted: int) -> list[int]:
    """Up to `wanted` indices spread evenly over range(count): which items a sample grid shows."""
    return sorted({i * count // wanted for i in range(min(count, wanted))})


def to_uint8(batch):
    """(n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3) numpy."""
    import torch

    return batch.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1) \
        .numpy()


# --------------------------------------------------------------------------- small images held in memory


def read_pixels(path: Path, channels: int, size: int, background: int = 255):
    """An image file as uint8 (channels, size, size): 1 (luminance) or 3 (RGB) channels, transparency
    composited onto `background` (0-255), resized to size x size (area-averaged when shrinking) if it is not
    that size already; TransmuteError naming the file."""
    import numpy as np
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (background,) * 3 + (255,)), rgba)
            img = resize_square(img.convert("L" if channels == 1 else "RGB"), size)
            array = np.array(img, dtype=np.uint8)  # a copy: torch wants writable arrays
    except (OSError, ValueError, SyntaxError) as exc:
        raise TransmuteError(f"{path}: not a readable image ({' '.join(str(exc).split()) or type(exc).__name__})") \
            from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def resize_square(img, size: int):
    """A Pillow image at size x size: area-averaged when shrinking, bicubic when enlarging; unchanged when it
    is that size. The one resize of small-image models, for training, evaluation and their stages alike."""
    from PIL import Image

    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BOX if min(img.size) >= size else Image.BICUBIC)


def fit_levels(images, channels: int, size: int):
    """A batch of images in [-1, 1] (n, C, H, W) as a small-image model takes it: `channels` channels (the mean
    of RGB, or grayscale repeated), size x size (resized as training images are, by resize_square), on the
    256 levels: uint8 (n, channels, size, size)."""
    import numpy as np
    import torch
    from PIL import Image

    x = images.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255)
    if x.shape[1] != channels:  # a pass-through stage sees what images.load gave
        x = x.mean(1, keepdim=True).round() if channels == 1 else x.expand(-1, 3, -1, -1)
    x = x.to(torch.uint8)
    if tuple(x.shape[-2:]) == (size, size):
        return x
    resized = [np.asarray(resize_square(Image.fromarray(p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0)), size))
               for p in x.numpy()]
    return torch.from_numpy(np.stack([r[None] if r.ndim == 2 else r.transpose(2, 0, 1) for r in resized]))


def shift_edge(pixels, dy: int, dx: int):
    """(..., H, W) numpy images moved by dy rows and dx columns, the edge pixels filling in (same shape)."""
    import numpy as np

    s = max(abs(int(dy)), abs(int(dx)))
    if not s:
        return pixels
    pads = [(0, 0)] * (pixels.ndim - 2) + [(s, s), (s, s)]
    padded = np.pad(pixels, pads, mode="edge")
    return padded[..., s - dy : s - dy + pixels.shape[-2], s - dx : s - dx + pixels.shape[-1]]


class ImageSet(TrainingData):
    """Small images (digits, emoji) decoded once and held in memory as uint8 (n, C, S, S).

    An item is float32 (C, S, S) on the 256 levels of [-1, 1] (k / 127.5 - 1),
    so likelihood models can score the 8-bit values exactly. Names are the
    files' paths relative to their folder, without suffix (what a
    --sample-weights CSV names).
    """

    def __init__(self, names: list[str], pixels, shift: int = 0):
        self.names, self.pixels, self.shift = list(names), pixels, shift

    def __len__(self) -> int:
        return len(self.names)

    def items(self):
        return self.names

    def tensor(self, indices=None):
        """float32 (n, C, S, S) in [-1, 1] of the given items (all by default)."""
        import torch

        chosen = self.pixels if indices is None else self.pixels[list(indices)]
        return torch.from_numpy(chosen).float().div_(127.5).sub_(1.0)

    def load(self, index, rng):
        """The item, moved by up to `shift` pixels each way at random (the edge pixels fill in): small
        training sets of small images are memorised without it."""
        import numpy as np
        import torch

        item = self.pixels[index]
        if self.shift:
            item = shift_edge(item, *rng.integers(-self.shift, self.shift + 1, size=2))
        return torch.from_numpy(np.ascontiguousarray(item)).float().div_(127.5).sub_(1.0)


def read_image_set(folders, channels: int, size: int, background: int = 255) -> tuple[ImageSet, list[str]]:
    """Every image under the folders (recursively) as an ImageSet, and one line per file that could not be
    read (those are left out); TransmuteError when a folder holds no readable image."""
    import numpy as np

    names, arrays, problems = [], [], []
    several = len(folders) > 1
    for folder in folders:
        found = list_images(Path(folder))
        if not found:
            raise TransmuteError(f"{folder}: no images ({', '.join(SUFFIXES)}) in this folder or below")
        for name, path in found.items():
            try:
                arrays.append(read_pixels(path, channels, size, background))
            except TransmuteError as exc:
                problems.append(str(exc))
                continue
            names.append(f"{Path(folder).name}/{name}" if several else name)
    if not arrays:
        raise TransmuteError(f"{', '.join(map(str, folders))}: none of the images could be read ({problems[0]})")
    return ImageSet(names, np.stack(arrays)), problems
