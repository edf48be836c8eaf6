"""Batch runs: decoding/encoding on worker threads, and batches formed from mixed sizes.

1. Files per second through `resynthesize` for a folder of short WAVs, with one
   I/O worker thread and with the default number (transmute.runner.default_workers),
   same inputs, fresh output folder each time (best of REPEATS after a warm-up).
   Outputs are checked to be byte-identical between the two.
2. The batch sizes transmute.run forms for a folder of images of alternating
   sizes, against what flushing at every change of size (the runner before
   grouping by key) formed.

Usage: benchmarks/bench_batch_io.py [--files N]   (default 500)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import common

FILES = 500
SECONDS = 0.5  # each WAV: short utterance-length files, where per-file I/O matters most
FILE_RATE = 44100  # stereo CD-rate files, as recorded: the loader mixes down and resamples to 22050 Hz
REPEATS = 3
MIN_RATIO = 1.2
IMAGE_SIZES = [(48, 64), (64, 48), (32, 32)]
IMAGE_BATCH = 8
IMAGE_FILES = 200
IMAGE_PIPELINE = {
    "pipeline": {"device": "cpu", "batch_size": IMAGE_BATCH, "description": "bench: load, fit, save"},
    "stage": [{"use": "images.load"}, {"use": "images.fit", "multiple_of": 16}, {"use": "images.save"}],
}


def make_wavs(folder: Path, count: int) -> None:
    import soundfile as sf

    speech = common.speech(seconds=SECONDS * min(count, 40), sample_rate=FILE_RATE)
    n = int(SECONDS * FILE_RATE)
    for i in range(count):
        start = (i % 40) * n
        clip = speech[start : start + n]
        sf.write(folder / f"u{i:04d}.wav", np.stack([clip, 0.8 * clip], axis=1), FILE_RATE, subtype="PCM_16")


def files_per_second(src: Path, scratch: Path, workers: int, count: int, pipeline="resynthesize"):
    import transmute

    def once(run: int):
        out = scratch / f"out-w{workers}-{run}-{time.monotonic_ns()}"
        report = transmute.run(pipeline, [src], out, device="cpu", workers=workers)
        assert len(report.written) == count, report.summary()
        return out, report

    timing = common.best_of(once, repeats=REPEATS)
    return count / timing.best_s, timing, timing.results[-1]


def per_file_ms(report, stage: str) -> float:
    return 1000 * float(np.mean([o.timings.get(stage, 0.0) for o in report.written]))


def old_batch_sizes(keys: list, batch_size: int) -> list[int]:
    """What flushing whenever the key changed (or the batch was full) formed."""
    sizes, run, previous = [], 0, None
    for key in keys:
        if run and (key != previous or run == batch_size):
            sizes.append(run)
            run = 0
        run, previous = run + 1, key
    return sizes + [run] if run else sizes


def image_throughput(scratch: Path, default: int) -> tuple[float, float]:
    """Files/s where decoding and encoding dominate: PNG in, pad to a multiple of 16, PNG out."""
    from PIL import Image

    src = scratch / "photos"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(IMAGE_FILES):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(src / f"p{i:03d}.png")
    one, _, _ = files_per_second(src, scratch, 1, IMAGE_FILES, IMAGE_PIPELINE)
    many, _, _ = files_per_second(src, scratch, default, IMAGE_FILES, IMAGE_PIPELINE)
    return one, many


def mixed_images(scratch: Path) -> tuple[list[int], list[int]]:
    from PIL import Image

    import transmute

    src = scratch / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    keys = []
    for i in range(96):
        h, w = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"im{i:03d}.png")
        keys.append((h, w))
    report = transmute.run(IMAGE_PIPELINE, [src], scratch / "images-out")
    assert len(report.written) == 96, report.summary()
    return report.batch_sizes, old_batch_sizes(keys, IMAGE_BATCH)


def histogram(sizes: list[int]) -> str:
    return ", ".join(f"{n}x{size}" for size, n in sorted(Counter(sizes).items(), reverse=True))


def main(count: int = FILES) -> list[common.Row]:
    import torch

    from transmute.runner import default_workers

    common.header("Batch I/O: transmute.run with 1 worker thread vs the default; batches from mixed sizes")
    default = default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        src = scratch / "wavs"
        src.mkdir()
        make_wavs(src, count)
        print(f"input: {count} stereo 16-bit WAVs of {SECONDS} s speech at {FILE_RATE} Hz through resynthesize "
              f"(batch 8, Griffin-Lim 32 iterations); cpu, torch threads={torch.get_num_threads()}, "
              f"os.cpu_count()={os.cpu_count()}, default workers={default}")
        serial_rate, serial, (serial_out, serial_report) = files_per_second(src, scratch, 0, count)
        one_rate, one, (one_out, _) = files_per_second(src, scratch, 1, count)
        many_rate, many, (many_out, _) = files_per_second(src, scratch, default, count)
        identical = all((many_out / p.name).read_bytes() == p.read_bytes() == (one_out / p.name).read_bytes()
                        for p in serial_out.iterdir())
        ratio = many_rate / one_rate
        print(f"per file, all on one thread: load {per_file_ms(serial_report, 'load'):.1f} ms, compute "
              f"{per_file_ms(serial_report, 'compute'):.1f} ms (its share of a batch), save "
              f"{per_file_ms(serial_report, 'save'):.1f} ms")
        print(f"workers=0 (main thread only): {serial_rate:6.1f} files/s  ({serial.label})")
        print(f"workers=1                   : {one_rate:6.1f} files/s  ({one.label})")
        print(f"workers={default} (default)         : {many_rate:6.1f} files/s  ({many.label})")
        print(f"ratio default / 1 worker: {ratio:.2f}x; 1 worker / none: {one_rate / serial_rate:.2f}x; "
              f"outputs byte-identical: {identical}")

        image_one, image_many = image_throughput(scratch, default)
        print(f"{IMAGE_FILES} PNGs of 256x256 through images.load -> images.fit -> images.save (I/O-bound): "
              f"workers=1 {image_one:.1f} files/s, workers={default} {image_many:.1f} files/s, "
              f"ratio {image_many / image_one:.2f}x")

        formed, old = mixed_images(scratch)
        print(f"mixed images: 96 PNGs cycling through sizes {IMAGE_SIZES}, batch size {IMAGE_BATCH}")
        print(f"  batches formed now        : {len(formed):3d} ({histogram(formed)})")
        print(f"  flushing at every new size: {len(old):3d} ({histogram(old)})")
    rows = [
        common.Row(f"batch I/O {count} WAVs", f"{many_rate:.1f} files/s ({default} workers)",
                   f"{one_rate:.1f} files/s (1 worker)", f"{ratio:.2f}x", f">= {MIN_RATIO:g}x, identical output",
                   common.verdict(ratio >= MIN_RATIO and identical)),
        common.Row(f"batch I/O {IMAGE_FILES} PNGs", f"{image_many:.1f} files/s ({default} workers)",
                   f"{image_one:.1f} files/s (1 worker)", f"{image_many / image_one:.2f}x", f">= {MIN_RATIO:g}x",
                   common.verdict(image_many / image_one >= MIN_RATIO)),
        common.Row("batches, mixed image sizes", f"{len(formed)} batches", f"{len(old)} batches (old runner)",
                   f"{len(old) / len(formed):.1f}x fewer", f"all full but one per size",
                   common.verdict(sum(1 for s in formed if s < IMAGE_BATCH) <= len(IMAGE_SIZES))),
    ]
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=FILES)
    main(parser.parse_args().files)
