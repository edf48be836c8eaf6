"""Peak memory of a large image through images.load -> images.fit -> images.save.

transmute: `transmute run` on a 25-megapixel RGB PNG (5000x5000); peer: Pillow
alone opening and saving the same file. Each runs in its own process; the
figure is its peak resident memory above a process that has only imported
torch and Pillow, per pixel. Before the float32 rework the pipeline took
about 132 bytes per pixel (13.2 GB for 10000x10000).

Target: at most 48 bytes per pixel, four times the float32 RGB signal (12).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from bench_cli_startup import transmute_command

SIDE = 5000
MAX_BYTES_PER_PIXEL = 48
PIPELINE = '[[stage]]\nuse = "images.load"\n[[stage]]\nuse = "images.fit"\n[[stage]]\nuse = "images.save"\n'


def peak_rss(command: list[str]) -> int:
    """Peak resident bytes of a child process (Linux reports ru_maxrss in KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:  # the children's figure is a maximum over all of them: run larger ones last
        raise RuntimeError(f"cannot tell this run's peak from an earlier, larger child's ({before} KiB)")
    return after * 1024


def write_image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, SIDE, dtype=np.float32).astype(np.uint8)
    pixels = np.empty((SIDE, SIDE, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = ramp[None, :], ramp[::-1][None, :]
    pixels[..., 2] = ramp[:, None]
    Image.fromarray(pixels).save(path, compress_level=1)


def main() -> list[common.Row]:
    common.header(f"Image memory: {SIDE}x{SIDE} RGB PNG through load -> fit -> save")
    pixels = SIDE * SIDE
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_image(folder / "big.png")
        (folder / "pipe.toml").write_text(PIPELINE)
        baseline = peak_rss([sys.executable, "-c", "import torch, PIL.Image, numpy"])
        peer = peak_rss([sys.executable, "-c", "import sys, torch; from PIL import Image; "
                         "Image.open(sys.argv[1]).save(sys.argv[2])", str(folder / "big.png"),
                         str(folder / "pillow.png")])
        ours = peak_rss(transmute_command() + ["run", str(folder / "pipe.toml"), str(folder / "big.png"),
                                               "-o", str(folder / "out"), "--device", "cpu"])
    ours_px, peer_px = (ours - baseline) / pixels, (peer - baseline) / pixels
    met = ours_px <= MAX_BYTES_PER_PIXEL
    print(f"baseline (python importing torch and Pillow): {baseline / 2**20:.0f} MiB")
    print(f"transmute run: {ours / 2**20:.0f} MiB peak, {ours_px:.1f} bytes per pixel above the baseline")
    print(f"Pillow open + save: {peer / 2**20:.0f} MiB peak, {peer_px:.1f} bytes per pixel above the baseline")
    print(f"target: <= {MAX_BYTES_PER_PIXEL} bytes per pixel -> {common.verdict(met)}")
    return [common.Row("image load->save memory", f"{ours_px:.1f} B/pixel", f"{peer_px:.1f} B/pixel (Pillow)",
                       f"{ours_px / peer_px:.1f}x", f"<= {MAX_BYTES_PER_PIXEL} B/pixel", common.verdict(met))]


if __name__ == "__main__":
    main()
