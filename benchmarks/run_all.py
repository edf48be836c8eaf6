"""Run every benchmark in turn and print a summary table (`make bench`).

Each benchmark prints its own figures; timings are never asserted. Exits
non-zero only if a benchmark fails to run.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_batch_io  # noqa: E402
import bench_cli_startup  # noqa: E402
import bench_griffinlim  # noqa: E402
import bench_image_memory  # noqa: E402
import bench_image_translation  # noqa: E402
import bench_mel_inversion  # noqa: E402
import bench_pixelcnn_sampling  # noqa: E402
import bench_training_profile  # noqa: E402
import bench_vocoder  # noqa: E402
import bench_voice_conversion  # noqa: E402
import common  # noqa: E402

BENCHMARKS = (bench_griffinlim, bench_mel_inversion, bench_cli_startup, bench_voice_conversion, bench_vocoder,
              bench_image_memory, bench_training_profile, bench_batch_io, bench_image_translation,
              bench_pixelcnn_sampling)


def main() -> int:
    started = time.perf_counter()
    rows: list[common.Row] = []
    failed = []
    for module in BENCHMARKS:
        name = module.__name__
        try:
            rows.extend(module.main())
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            rows.append(common.Row(name, "-", "-", "-", "-", "ERROR"))
    common.header(f"Summary ({time.perf_counter() - started:.0f} s; ratios are peer/transmute for speed, "
                  "transmute/peer for start-up)")
    common.print_table(rows)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
