"""Image translation: pix2pix's U-Net over a folder of PNGs, against the reference test loop; memory over many files.

1. Throughput. The paper's generator, UNet(3, 3, width=64, depth=8) (54.4M
   parameters), randomly initialised with a fixed seed and saved as a pix2pix
   checkpoint, over N 256x256 RGB PNGs (smooth random colour fields).
   transmute: `transmute.run("image-translation", ...)` folder to folder,
   default I/O workers, at several batch sizes; the pipeline's default is the
   headline figure. Peer: the reference implementation's test loop, written
   out here: for each file, Pillow open -> tensor in [-1, 1] -> net(x) at
   batch 1 in fp32 -> 8-bit (scaled and truncated, as the reference converts)
   -> Pillow save PNG; same files, same network and weights, same process and
   thread count. The two outputs are compared level by level. Beside the
   images/s: the GFLOP/s our run achieves (the U-Net's forward FLOPs per image,
   counted by torch's FlopCounterMode, times images / seconds) and a plain
   2048x2048 fp32 matmul's, to show how close to the hardware both are.
   Target: >= 2x the reference loop's images/s on CPU; >= 5x on a GPU (batch 16).
2. Memory. Peak resident memory of `transmute run image-translation` over
   1,000 and 10,000 small PNGs (64x64, a tiny generator: width 8, depth 6),
   each run in a process of its own (the 10,000 take about a minute on two
   cores). Target: the larger run within 1.2x of the smaller ("memory flat").

Usage: benchmarks/bench_image_translation.py [--images N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from bench_cli_startup import transmute_command

SIDE = 256
WIDTH, DEPTH = 64, 8  # the paper's generator at 256 px
SEED = 0
CPU_IMAGES, GPU_IMAGES = 64, 256
CPU_BATCHES = (1, 4, 8, 16)  # 8: image-translation.toml's batch_size
GPU_BATCH = 16
MIN_RATIO = {"cpu": 2.0, "cuda": 5.0}
REPEATS = 3
# Agreement: at least this share of the 8-bit values within one level of the peer's (the peer truncates, we round).
AGREE_SHARE = 0.999
MATMUL_N = 2048

MEMORY_SIDE, MEMORY_WIDTH, MEMORY_DEPTH = 64, 8, 6
MEMORY_SMALL, MEMORY_LARGE = 1000, 10_000
MAX_MEMORY_RATIO = 1.2


# --------------------------------------------------------------------------- inputs and the model


def save_generator(path: Path, width: int, depth: int, crop: int, seed: int = SEED) -> tuple[int, int]:
    """A randomly initialised U-Net saved as pix2pix's export() saves one; (parameters, forward FLOPs per image)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from transmute.checkpoint import Checkpoint, save_checkpoint
    from transmute.gan import init_weights
    from transmute.signals import ImageSpec
    from transmute_pix2pix.networks import UNet, count_parameters

    torch.manual_seed(seed)
    net = UNet(3, 3, width, depth, dropout=0.0)
    init_weights(net)
    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, crop, crop))
    tensors = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}  # as export() stores them
    save_checkpoint(path, Checkpoint(
        tensors=tensors, plugin="pix2pix", model="generator", version="1.0",
        hparams={"width": width, "depth": depth, "crop_size": crop, "preset": "bench", "dropout": 0.5},
        feature_spec=ImageSpec("RGB", (-1.0, 1.0)), extra={"direction": "AtoB"},
    ))
    return count_parameters(net), int(counter.get_total_flops())


def colour_field(rng: np.random.Generator, side: int) -> np.ndarray:
    """A smooth random RGB image: a 4x4 grid of random colours, scaled up bicubically."""
    from PIL import Image

    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC))


def write_images(folder: Path, count: int, side: int, distinct: int | None = None) -> list[Path]:
    """count PNGs; with `distinct`, that many images written as copies under different names (fast)."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    blobs = []
    for _ in range(distinct or count):
        buffer = io.BytesIO()
        Image.fromarray(colour_field(rng, side)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    paths = [folder / f"im{i:05d}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(blobs[i % len(blobs)])
    return paths


# --------------------------------------------------------------------------- the two sides


def reference_loop(files: list[Path], out: Path, net, device) -> None:
    """The reference test loop: one image at a time, fp32, batch 1, Pillow in and out."""
    import torch
    from PIL import Image

    out.mkdir(parents=True)
    with torch.no_grad():
        for path in files:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
            x = torch.from_numpy(rgb).permute(2, 0, 1).div(255).sub(0.5).div(0.5)[None]  # [0, 255] -> [-1, 1]
            y = net(x.to(device))[0].float().cpu()
            pixels = ((y.permute(1, 2, 0).numpy() + 1) / 2 * 255).astype(np.uint8)  # truncated, as the reference
            Image.fromarray(pixels).save(out / path.name)


def transmute_run(src: Path, out: Path, checkpoint: Path, device: str, batch_size: int | None, count: int):
    import transmute

    report = transmute.run("image-translation", [src], out, overrides=[("translate", "model", str(checkpoint))],
                           device=device, batch_size=batch_size)
    if len(report.written) != count:
        raise RuntimeError(f"transmute.run: {report.summary()}; " + "; ".join(o.reason for o in report.failed[:3]))
    return report


def agreement(ours: Path, peer: Path) -> tuple[int, float]:
    """(largest difference in 8-bit levels, share of values within one level) over the RGB of every output."""
    from PIL import Image

    largest, close, total = 0, 0, 0
    for path in sorted(peer.iterdir()):
        a = np.asarray(Image.open(ours / path.name).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        diff = np.abs(a - b)
        largest = max(largest, int(diff.max()))
        close += int((diff <= 1).sum())
        total += diff.size
    return largest, close / total


def per_image_ms(report, stage: str) -> float:
    return 1000 * float(np.mean([o.timings.get(stage, 0.0) for o in report.written]))


def network_ms(net, batch_size: int, device, bf16: bool = False):
    """The network's forward alone: (ms per image at batch_size, the output). bf16: under bfloat16 autocast."""
    import torch

    x = torch.rand(batch_size, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(SEED)).to(device) * 2 - 1

    def once(_run):
        with torch.inference_mode(), torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
            y = net(x).float()
        if y.is_cuda:
            torch.cuda.synchronize()
        return y

    timing = common.best_of(once)
    return 1000 * timing.best_s / batch_size, timing.results[-1]


def matmul_gflops(device) -> float:
    """A plain fp32 matmul's GFLOP/s on this machine and thread count: best of 3 after a warm-up."""
    import torch

    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)

    def once(_run):
        c = a @ b
        if c.is_cuda:
            torch.cuda.synchronize()

    return 2 * MATMUL_N**3 / common.best_of(once).best_s / 1e9


def throughput(count: int | None) -> common.Row:
    import torch

    from transmute.pipeline import read_pipeline
    from transmute.runner import _set_tf32, default_workers
    from transmute_pix2pix.stages import load_generator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    count = count or (GPU_IMAGES if device == "cuda" else CPU_IMAGES)
    batches = (GPU_BATCH,) if device == "cuda" else CPU_BATCHES
    headline = GPU_BATCH if device == "cuda" else None  # None: the pipeline's own batch_size
    common.header(f"Image translation: pix2pix U-Net at {SIDE}x{SIDE}, transmute.run vs the reference test loop")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        checkpoint = scratch / "generator.safetensors"
        params, flops = save_generator(checkpoint, WIDTH, DEPTH, SIDE)
        files = write_images(scratch / "in", count, SIDE)
        print(f"{count} {SIDE}x{SIDE} RGB PNGs; UNet(3, 3, width={WIDTH}, depth={DEPTH}), {params / 1e6:.1f}M "
              f"parameters, {flops / 1e9:.2f} GFLOP per image (FlopCounterMode: convolutions, 2 per multiply-add); "
              f"{device}, torch threads={torch.get_num_threads()}, default workers={default_workers()}")
        if device == "cuda":
            _set_tf32(False)  # both sides in plain fp32, as transmute.run's default; torch's own allows TF32 convs

        def ours(batch_size):
            def once(_run):
                out = scratch / f"ours-{batch_size}-{time.monotonic_ns()}"
                return out, transmute_run(scratch / "in", out, checkpoint, device, batch_size, count)
            return once

        net, _ = load_generator(str(checkpoint), device)

        def peer(_run):
            out = scratch / f"peer-{time.monotonic_ns()}"
            reference_loop(files, out, net, device)
            return out

        main_timing = common.best_of(ours(headline), repeats=REPEATS)
        peer_timing = common.best_of(peer, repeats=REPEATS)
        ours_rate, peer_rate = count / main_timing.best_s, count / peer_timing.best_s
        ours_out, report = main_timing.results[-1]
        largest, share = agreement(ours_out, peer_timing.results[-1])
        default_batch = headline or read_pipeline("image-translation")[0]["pipeline"]["batch_size"]
        print(f"{'transmute.run, batch %d%s' % (default_batch, ' (default)' if headline is None else ''):32}: "
              f"{ours_rate:6.2f} images/s  ({main_timing.label})")
        for batch_size in batches:
            if batch_size == default_batch:
                continue
            start = time.perf_counter()
            ours(batch_size)(0)
            print(f"{'transmute.run, batch %d' % batch_size:32}: {count / (time.perf_counter() - start):6.2f} "
                  "images/s  (1 run)")
        print(f"{'reference loop, batch 1':32}: {peer_rate:6.2f} images/s  ({peer_timing.label})")
        print(f"where our time goes, per image: load {per_image_ms(report, 'load'):.1f} ms and save "
              f"{per_image_ms(report, 'save'):.1f} ms (on the worker threads, beside the compute), compute "
              f"{per_image_ms(report, 'compute'):.1f} ms (its share of a batch)")
        alone = {n: network_ms(net, n, device) for n in sorted({1, default_batch})}
        print("the network alone, no files: " + ", ".join(f"batch {n} {ms:.1f} ms per image"
                                                          for n, (ms, _) in alone.items()))
        # Not what transmute runs: how much lower precision would buy, and what it costs in 8-bit levels.
        net_ms, fp32 = alone[default_batch]
        bf16_ms, bf16 = network_ms(net, default_batch, device, bf16=True)
        levels = ((fp32 + 1) * 127.5).round().sub_(((bf16 + 1) * 127.5).round()).abs_()
        print(f"  in bfloat16 autocast (not used): batch {default_batch} {bf16_ms:.1f} ms per image, "
              f"{net_ms / bf16_ms:.2f}x fp32's; against fp32 up to {levels.max():.0f} levels, "
              f"{(levels > 1).float().mean():.3%} of values more than 1")
        peak = matmul_gflops(device)
        ours_gflops, peer_gflops = flops * ours_rate / 1e9, flops * peer_rate / 1e9
        print(f"achieved: transmute {ours_gflops:.1f} GFLOP/s, reference loop {peer_gflops:.1f} GFLOP/s, the "
              f"network alone at batch {default_batch} {flops / net_ms / 1e6:.1f} GFLOP/s; "
              f"{MATMUL_N}x{MATMUL_N} fp32 matmul {peak:.1f} GFLOP/s -> {ours_gflops / peak:.0%}, "
              f"{peer_gflops / peak:.0%} and {flops / net_ms / 1e6 / peak:.0%} of it")
        agree = share >= AGREE_SHARE
        print(f"outputs: largest difference {largest} levels; {share:.4%} of values within 1 level "
              f"(need {AGREE_SHARE:.1%})")
    ratio = ours_rate / peer_rate
    target = MIN_RATIO[device]
    met = ratio >= target and agree
    print(f"speed ratio (transmute / reference): {ratio:.2f}x")
    print(f"target: >= {target:g}x the reference loop's images/s on {device}, outputs within 1 level "
          f"-> {common.verdict(met)}")
    return common.Row(f"image translation {SIDE}px ({device})", f"{ours_rate:.2f} img/s, {ours_gflops:.0f} GFLOP/s",
                      f"{peer_rate:.2f} img/s (reference loop)", f"{ratio:.2f}x",
                      f">= {target:g}x, within 1 level", common.verdict(met))


# --------------------------------------------------------------------------- memory over many files

# Runs a command and prints its peak resident memory: a process of its own per measurement, since
# RUSAGE_CHILDREN is a maximum over all of a process's children and cannot tell a smaller later run.
_MEASURE = ("import resource, subprocess, sys\n"
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def peak_rss(command: list[str]) -> int:
    """Peak resident bytes of a command run alone (Linux reports ru_maxrss in KiB)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) * 1024


def memory() -> common.Row:
    large = MEMORY_LARGE
    common.header(f"Image translation memory: {MEMORY_SMALL} vs {large} {MEMORY_SIDE}x{MEMORY_SIDE} PNGs "
                  f"through image-translation")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        checkpoint = scratch / "tiny.safetensors"
        save_generator(checkpoint, MEMORY_WIDTH, MEMORY_DEPTH, MEMORY_SIDE)
        figures = {}
        for count in (MEMORY_SMALL, large):
            src = scratch / f"in{count}"
            write_images(src, count, MEMORY_SIDE, distinct=8)
            start = time.perf_counter()
            figures[count] = peak_rss(transmute_command() + [
                "run", "image-translation", str(src), "-o", str(scratch / f"out{count}"), "--device", "cpu", "-q",
                "--set", f'translate.model="{checkpoint}"'])
            written = len(list((scratch / f"out{count}").iterdir()))
            if written != count:
                raise RuntimeError(f"{count} inputs but {written} outputs")
            print(f"{count:6d} images: peak {figures[count] / 2**20:.0f} MiB  ({time.perf_counter() - start:.0f} s)")
    small_rss, large_rss = figures[MEMORY_SMALL], figures[large]
    ratio = large_rss / small_rss
    met = ratio <= MAX_MEMORY_RATIO
    per_image = (large_rss - small_rss) / (large - MEMORY_SMALL)
    print(f"ratio {large} / {MEMORY_SMALL}: {ratio:.3f}x ({per_image / 1024:.1f} KiB more per extra image)")
    print(f"target: {large} images within {MAX_MEMORY_RATIO:g}x the peak of {MEMORY_SMALL} -> {common.verdict(met)}")
    return common.Row(f"image translation memory {MEMORY_SMALL}->{large}",
                      f"{small_rss / 2**20:.0f} -> {large_rss / 2**20:.0f} MiB", "-", f"{ratio:.3f}x",
                      f"<= {MAX_MEMORY_RATIO:g}x", common.verdict(met))


def main(images: int | None = None) -> list[common.Row]:
    return [throughput(images), memory()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None,
                        help=f"256x256 images to translate (default {CPU_IMAGES} on CPU, {GPU_IMAGES} on a GPU)")
    main(parser.parse_args().images)
