"""Voice conversion speed: real-time factor, end to end from file to file, and training throughput.

- `transmute convert-voice` (the built-in kal-slt model, Griffin-Lim with 32
  iterations) on a 60 s file, as a subprocess, so start-up, loading and saving
  count; and the same voiced by the built-in vocoder (`--vocoder
  festival-vocos`). Peer in the same run: the `resynthesize` pipeline (the
  chain without the converter). Target on CPU: a real-time factor (wall time /
  audio duration) of at most 0.05.
- Training throughput (iterations per second) of a preset on this machine's
  device: the `default` preset where a GPU is available, else `small` on CPU.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_cli_startup import transmute_command

MAX_RTF = 0.05
TRAIN_STEPS = 20


def convert_speed() -> list[common.Row]:
    import soundfile as sf

    common.header(f"Voice conversion: convert-voice on {common.SECONDS:g} s of speech, file to file")
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "speech-60s.wav"
        sf.write(source, common.speech(), common.SAMPLE_RATE)
        commands = {
            "convert-voice": transmute_command() + ["convert-voice", str(source), "-o", f"{scratch}/vc", "-q",
                                                    "--overwrite"],
            "convert-voice --vocoder festival-vocos": transmute_command() + [
                "convert-voice", "--vocoder", "festival-vocos", str(source), "-o", f"{scratch}/voc", "-q",
                "--overwrite"],
            "resynthesize": transmute_command() + ["run", "resynthesize", str(source), "-o", f"{scratch}/rs",
                                                   "-q", "--overwrite"],
        }
        timings = {}
        for name, command in commands.items():
            def once(_, command=command):
                subprocess.run(command, check=True, capture_output=True, cwd=common.REPO_ROOT)

            timings[name] = common.best_of(once)
            print(f"{shlex.join(command)}: {timings[name].label}")
        converted, rate = sf.read(Path(scratch) / "vc" / "speech-60s.wav")
    rtf = timings["convert-voice"].best_s / common.SECONDS
    peer_rtf = timings["resynthesize"].best_s / common.SECONDS
    vocoder_rtf = timings["convert-voice --vocoder festival-vocos"].best_s / common.SECONDS
    print(f"output: {len(converted) / rate:.2f} s at {rate} Hz (input {common.SECONDS:g} s)")
    print(f"real-time factor: convert-voice {rtf:.4f}, with the vocoder {vocoder_rtf:.4f}, resynthesize {peer_rtf:.4f}; "
          f"conversion costs {rtf / peer_rtf:.2f}x the resynthesis chain")
    print(f"target on CPU: real-time factor <= {MAX_RTF} -> {common.verdict(rtf <= MAX_RTF)}")
    print(f"with the vocoder: real-time factor <= {MAX_RTF} -> {common.verdict(vocoder_rtf <= MAX_RTF)}")
    return [common.Row("voice conversion 60 s", f"RTF {rtf:.4f}", f"RTF {peer_rtf:.4f} (resynthesize)",
                       f"{rtf / peer_rtf:.2f}x", f"RTF <= {MAX_RTF}", common.verdict(rtf <= MAX_RTF)),
            common.Row("voice conversion 60 s, vocoder", f"RTF {vocoder_rtf:.4f}", f"RTF {peer_rtf:.4f} (resynthesize)",
                       f"{vocoder_rtf / peer_rtf:.2f}x", f"RTF <= {MAX_RTF}", common.verdict(vocoder_rtf <= MAX_RTF))]


def training_speed() -> list[common.Row]:
    import numpy as np
    import torch

    from transmute.signals import Normalization
    from transmute.training import Context, StepSampler, precision_setup
    from transmute_cyclegan_vc.networks import PRESETS, Discriminator, Generator, count_parameters
    from transmute_cyclegan_vc.task import CycleGANVCTask

    gpu = torch.cuda.is_available()
    preset = "default" if gpu else "small"
    device = torch.device("cuda" if gpu else "cpu")
    common.header(f"Voice conversion training: preset {preset} on {device.type}")
    h = PRESETS[preset]
    random = torch.Generator().manual_seed(1)  # the real task's step, on random features of the right shape
    features = {k: [torch.randn(80, 400, generator=random) for _ in range(8)] for k in ("a", "b")}
    unit = Normalization(mean=(0.0,), std=(1.0,))
    task = CycleGANVCTask(features, {"a": unit, "b": unit}, preset)
    ctx = Context(device=device, autocast=precision_setup("auto", device))  # the loop's default precision
    task.setup(ctx)
    data = task.data()
    draws = StepSampler(data.items(), h["batch_size"], seed=0, start=0, stop=3 + TRAIN_STEPS)
    loaded = (data.collate([data.load(index, np.random.default_rng(seed)) for index, seed in batch])
              for batch in draws)
    for step in range(3):  # warm-up
        task.train_step(next(loaded), step, ctx)
    if gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(TRAIN_STEPS):
        task.train_step(next(loaded), step, ctx)
    if gpu:
        torch.cuda.synchronize()
    rate = TRAIN_STEPS / (time.perf_counter() - start)
    g = count_parameters(Generator(80, h["gen_channels"], h["res_channels"], h["res_blocks"]))
    d = count_parameters(Discriminator(h["disc_channels"]))
    hours = h["steps"] / rate / 3600
    print(f"{rate:.2f} iterations/s at batch {h['batch_size']} (generators {g / 1e6:.2f}M, discriminators "
          f"{d / 1e6:.2f}M parameters each); the preset's {h['steps']} steps take {hours:.2f} h here")
    return [common.Row(f"vc training ({preset})", f"{rate:.2f} it/s", "-", "-", f"{h['steps']} steps",
                       f"{hours:.2f} h")]


def main() -> list[common.Row]:
    return convert_speed() + training_speed()


if __name__ == "__main__":
    main()
