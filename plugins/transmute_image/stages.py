"""Image stages: load any Pillow-readable file, fit to a multiple of N, save PNG/JPEG/WebP.

Pixels travel as float32 (batch, channels, H, W) in the spec's value range.
`sizes` is each item's valid region inside the (padded) batch and
`original_sizes` its size when loaded, so the saver can crop or resize back.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

from transmute.errors import InputError, InputWarning, PipelineError, TransmuteError
from transmute.files import check_readable
from transmute.imaging import pad_bottom_right
from transmute.signals import File, Images, ImageSpec
from transmute.stages import Param, ParamError, Stage

MODES = ("L", "RGB", "RGBA")

# 10000x10000 fits, and so does any camera's photo short of 100+ megapixel
# medium format. A decompression bomb (a small file that decodes to billions of
# pixels) is refused before it is decoded; at the limit an RGB image takes about
# 3.5 GB from load to save. Pillow's own check (a warning at 89 million pixels,
# an error at twice that) is replaced by this one, which names what to raise.
DEFAULT_MAX_PIXELS = 100_000_000

# Formats Pillow decodes by itself. Pillow registers more suffixes (pdf, eps, h5,
# grib, ...), but those are write-only, need Ghostscript or are stubs, so in a
# folder they are better ignored than reported as failures. A file named on the
# command line is tried whatever its suffix.
EXTENSIONS = (
    "apng", "bmp", "dib", "gif", "ico", "jfif", "jpe", "jpeg", "jpg", "pbm", "pcx", "pgm",
    "png", "pnm", "ppm", "qoi", "tga", "tif", "tiff", "webp",
)

# Formats whose extra frames are content the user may expect to be processed. (A
# camera's JPEG often opens as MPO, whose second frame is a preview: not news.)
_SEQUENCES = {"GIF": "animated", "PNG": "animated", "WEBP": "animated", "TIFF": "multi-page"}

# Single-channel modes with more than 8 bits, read straight from their values
# so no precision is lost, with the value that means white. "I" is how Pillow
# before 10.x opened 16-bit PNGs; "F" follows Pillow's own 0..255 scale (what
# convert("F") produces and convert("L") expects).
_WHITE_OF = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 255}


def _unreadable(exc: BaseException, path: Path) -> str:
    """Pillow's reason in one line, without the path (the runner names the file)."""
    from PIL import UnidentifiedImageError

    text = str(exc)
    for quoted in (f"'{path}'", f'"{path}"', str(path)):
        text = text.replace(quoted, "")
    text = " ".join(text.split()).strip(" :")
    if "truncated" in text.lower():
        return "image file is truncated"
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image (cannot identify image file)"
    return f"not a readable image ({text or type(exc).__name__})"


def _pixels(img, mode: str, value_range: tuple[float, float]):
    """A Pillow image as float32 (1, channels of `mode`, H, W) torch, black and white at value_range.

    Values go from Pillow's integers straight into one float32 array that is
    scaled in place: an image costs a few times its decoded size, not float64 copies.
    """
    import numpy as np
    import torch

    channels = len(mode)
    out = np.empty((channels, img.height, img.width), dtype=np.float32)
    white = _WHITE_OF.get(img.mode)
    if white is not None:
        gray = min(channels, 3)
        out[:gray] = np.asarray(img)
        out[:gray] /= white
        np.clip(out[:gray], 0.0, 1.0, out=out[:gray])
        out[gray:] = 1.0  # opaque
        white = 1.0
    else:
        if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")  # the palette's transparency becomes alpha before any other mode
        if img.mode != mode:
            try:
                img = img.convert(mode)
            except ValueError:  # no direct conversion (e.g. LAB -> L): go through RGB(A)
                img = img.convert("RGBA" if "A" in img.mode else "RGB").convert(mode)
        values = np.asarray(img)
        out[...] = values[None] if values.ndim == 2 else values.transpose(2, 0, 1)
        white = 255.0
    low, high = value_range
    out *= (high - low) / white
    out += low
    return torch.from_numpy(out).unsqueeze(0)


_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved = None


@contextlib.contextmanager
def _own_pixel_limit():
    """Pillow's decompression-bomb check off: images.load applies max_pixels itself, with a clear message.

    The runner loads on several threads at once; Pillow's limit is one global,
    so it is switched off while any load runs and restored when the last ends.
    """
    from PIL import Image

    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _pixel_counts(pixels: int, limit: int) -> str:
    """'144 megapixels, above max_pixels (100 megapixels)', in exact pixels where megapixels would look equal."""
    def mega(n: int) -> str:
        return f"{n / 1e6:.2f}".rstrip("0").rstrip(".") + " megapixels"

    have, allowed = mega(pixels), mega(limit)
    if have == allowed:
        have, allowed = f"{pixels} pixels", f"{limit} pixels"
    return f"{have}, above max_pixels ({allowed})"


def _resize(data, size: tuple[int, int]):
    import torch.nn.functional as F

    return F.interpolate(data, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class LoadImages(Stage):
    """Load an image Pillow can read; apply its EXIF orientation; convert to L, RGB or RGBA."""

    name = "images.load"
    consumes = File
    produces = Images
    params = {
        "mode": Param(str, "RGB", "channels to convert to", choices=MODES),
        "value_range": Param(list, [0, 1], "[low, high] that black and white map to, e.g. [-1, 1]"),
        "max_pixels": Param(int, DEFAULT_MAX_PIXELS, "refuse an image with more pixels than this (about 35 bytes "
                            "of memory each from load to save); 0: no limit", min=0),
    }
    extensions = EXTENSIONS

    def __init__(self, label=None, **values):
        super().__init__(label, **values)
        bounds = self.value_range
        if (len(bounds) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bounds)
                or not bounds[0] < bounds[1]):
            raise ParamError("value_range", "parameter 'value_range': expected [low, high], two numbers "
                             f"with low < high, got {bounds!r}")
        self.value_range = (float(bounds[0]), float(bounds[1]))

    def check(self, incoming):
        return ImageSpec(self.mode, self.value_range)

    def setup(self, device) -> None:
        super().setup(device)
        import numpy  # noqa: F401 - imported once here, not half-way through a file when Ctrl-C lands
        import PIL.Image  # noqa: F401
        import torch  # noqa: F401

    def load(self, path: Path) -> Images:
        from PIL import Image, ImageOps

        check_readable(path)
        try:
            with _own_pixel_limit(), Image.open(path) as img:
                width, height = img.size
                if self.max_pixels and width * height > self.max_pixels:
                    raise InputError(f"image is {width}x{height} = {_pixel_counts(width * height, self.max_pixels)}; "
                                     f"raise it with --set {self.label}.max_pixels={width * height}")
                kind = _SEQUENCES.get(img.format)
                frames = getattr(img, "n_frames", 1) if kind else 1
                img.load()  # decode now: a truncated file fails here, not halfway through a batch
                if frames > 1:
                    warnings.warn(f"{kind} image with {frames} frames; only the first is used", InputWarning,
                                  stacklevel=2)
                ImageOps.exif_transpose(img, in_place=True)
                data = _pixels(img, self.mode, self.value_range)
        except TransmuteError:
            raise
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
            raise InputError(_unreadable(exc, path)) from None
        size = (int(data.shape[2]), int(data.shape[3]))
        return Images(data, self.check(None), [path.stem], [size], [size])


class FitImages(Stage):
    """Make every image's height and width a multiple of N (what most networks need), reversibly."""

    name = "images.fit"
    consumes = Images
    produces = Images
    params = {
        "multiple_of": Param(int, 8, "height and width become multiples of this", min=1),
        "method": Param(str, "pad", "'pad' adds pixels at the bottom/right that the saver crops off; "
                        "'resize' scales to the nearest multiple and the saver scales back", choices=("pad", "resize")),
        "pad_mode": Param(str, "reflect", "how 'pad' fills: mirror the edge, repeat the edge pixel, or zeros "
                          "(black in [0, 1], mid-grey in [-1, 1])", choices=("reflect", "replicate", "constant")),
    }

    def process(self, signal: Images) -> Images:
        n = self.multiple_of
        items = []
        for item in signal.items():
            h, w = item.sizes[0]
            if self.method == "pad":
                data = pad_bottom_right(item.data, -h % n, -w % n, self.pad_mode)
                items.append(item.replace(data=data))  # sizes stay the content's: the saver crops back
            else:
                size = (max(n, (h + n // 2) // n * n), max(n, (w + n // 2) // n * n))
                data = item.data if size == (h, w) else _resize(item.data, size)
                items.append(item.replace(data=data, sizes=[size]))
        return Images.collate(items)


FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}


class SaveImages(Stage):
    """Save images as PNG (8 or 16 bits), JPEG or WebP, back at the size they were loaded."""

    name = "images.save"
    consumes = Images
    produces = File
    params = {
        "format": Param(str, "png", "file format", choices=tuple(FORMATS)),
        "quality": Param(int, 95, "JPEG/WebP quality, 1 (smallest) to 100 (best); PNG is lossless", min=1, max=100),
        "restore_size": Param(bool, True, "scale an image a stage resized back to its size when loaded"),
        "bit_depth": Param(int, 8, "bits per channel; 16 only for single-channel (L) PNG", choices=(8, 16)),
        "alpha": Param(str, "auto", "'auto' writes an alpha channel only where an image has a pixel that is not "
                       "fully opaque; 'keep' always writes the alpha it has", choices=("auto", "keep")),
    }

    def __init__(self, label=None, **values):
        super().__init__(label, **values)
        if self.bit_depth == 16 and self.format != "png":
            raise ParamError("bit_depth", f"parameter 'bit_depth': 16 bits needs format \"png\"; "
                             f"{self.format} stores 8 bits per channel")

    def check(self, incoming: ImageSpec) -> ImageSpec:
        if self.bit_depth == 16 and incoming.mode not in (None, "L"):
            raise PipelineError(f"bit_depth 16 needs single-channel images, got mode {incoming.mode}; "
                                "set mode = \"L\" on the load stage, or bit_depth = 8")
        return incoming

    def suffix(self) -> str:
        return FORMATS[self.format][1]

    def save(self, item: Images, path: Path) -> None:
        import numpy as np
        import torch
        from PIL import Image

        h, w = item.sizes[0]
        data = item.data[:1, :, :h, :w].detach().cpu().float()
        if self.restore_size and tuple(item.original_sizes[0]) != (h, w):
            data = _resize(data, item.original_sizes[0])
        channels = data.shape[1]
        if channels not in (1, 2, 3, 4):
            raise TransmuteError(f"cannot save an image with {channels} channels; expected 1, 2, 3 or 4")
        # In float32, one array at a time and in place: 8-bit and 16-bit values are
        # exact in float32, and float64 copies cost more memory than the image.
        low, high = item.spec.value_range
        unit = data[0].sub(low).div_(high - low).clamp_(0, 1)
        if self.alpha == "auto" and channels in (2, 4) and bool((unit[-1] >= 1 - 0.5 / 255).all()):
            unit, channels = unit[:-1], channels - 1  # opaque throughout: the alpha says nothing
        if self.format == "jpeg" and channels in (2, 4):  # JPEG has no alpha: composite on white
            alpha = unit[-1:]
            unit = unit[:-1].mul_(alpha).add_(1.0).sub_(alpha)
            channels -= 1
        if self.bit_depth == 16:
            if channels != 1:
                raise TransmuteError(f"bit_depth 16 needs a single-channel image, got {channels} channels")
            image = Image.fromarray(unit[0].mul_(65535).round_().to(torch.int32).numpy().astype(np.uint16))
        else:
            pixels = unit.mul_(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        options = {} if self.format == "png" else {"quality": self.quality}
        image.save(path, format=FORMATS[self.format][0], **options)


STAGES = (LoadImages, FitImages, SaveImages)
