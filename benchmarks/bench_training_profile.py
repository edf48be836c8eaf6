"""Training profile: where a cyclegan-vc run's time goes on CPU, and what its checkpoints weigh.

Runs the engine's training loop (transmute.training.train) on the small
preset over the example speech and prints, per step: waiting for data,
forward and backward, the optimizer, LR schedules, logging (the one host read
of the losses), checkpoints, and steps/s; then the time before the first step
(reading features, building networks). Last, the size of the training
checkpoint (exact resume: fp32 weights and both Adam moments) and of the
exported model, per preset. Nothing is asserted.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common

PROFILE_STEPS = 20
PRESET = "small"


def _speaker_folders(root: Path) -> tuple[Path, Path]:
    """examples/speech holds both festival voices; one folder per speaker, by file-name prefix."""
    folders = []
    for voice in ("kal", "slt"):
        folder = root / voice
        folder.mkdir(parents=True)
        for wav in sorted(common.SPEECH_DIR.glob(f"{voice}-*.wav")):
            os.symlink(wav, folder / wav.name)
        folders.append(folder)
    return folders[0], folders[1]


def profile_run(workers: int, scratch: Path) -> tuple[dict, float]:
    """Per-part seconds of a short run of the engine's loop, and the seconds spent before its first step."""
    from transmute.training import TrainConfig, train
    from transmute_cyclegan_vc.networks import PRESETS
    from transmute_cyclegan_vc.task import CycleGANVCTask

    profile: dict = {}

    class TimedTask(CycleGANVCTask):
        """The real task; its optimizers' steps are timed apart from forward and backward."""

        def setup(self, ctx):
            began = time.perf_counter()
            super().setup(ctx)
            profile["setup"] = time.perf_counter() - began
            for optimizer in self.opt.values():
                optimizer.register_step_pre_hook(lambda *_: profile.__setitem__("_opt", time.perf_counter()))
                optimizer.register_step_post_hook(lambda *_: profile.__setitem__(
                    "optimizer", profile.get("optimizer", 0.0) + time.perf_counter() - profile["_opt"]))

    a, b = _speaker_folders(scratch / f"speakers-{workers}")
    h = dict(PRESETS[PRESET], steps=PROFILE_STEPS)
    began = time.perf_counter()
    task = TimedTask.from_folders(a, b, PRESET, h)
    profile["features"] = time.perf_counter() - began
    config = TrainConfig(out=scratch / f"run-{workers}", steps=PROFILE_STEPS, batch_size=h["batch_size"],
                         checkpoint_every=PROFILE_STEPS // 2, sample_every=0, log_every=10, progress=False,
                         device="cpu", workers=workers)
    train(task, config, profile)
    profile.pop("_opt", None)
    return profile, profile["features"] + profile["start"]


def print_profile(profile: dict, workers: int) -> float:
    steps = profile["steps"]
    step_total = profile["step"] - profile.get("optimizer", 0.0)
    parts = [("data (waiting for the batch)", profile["data"]),
             ("forward + backward", step_total),
             ("optimizer (Adam)", profile.get("optimizer", 0.0)),
             ("LR schedules", profile["schedule"]),
             ("logging (one host read of the losses)", profile.get("log", 0.0)),
             ("checkpoints (2 of them: state + model)", profile.get("checkpoint", 0.0))]
    looped = sum(seconds for _, seconds in parts)
    rate = steps / looped
    print(f"{PRESET} preset, batch 4, {steps} steps, --workers {workers}: {rate:.2f} steps/s")
    for name, seconds in parts:
        print(f"  {name:<42} {1000 * seconds / steps:8.1f} ms/step  {100 * seconds / looped:5.1f}%")
    return rate


def checkpoint_sizes(scratch: Path) -> list[tuple[str, int, int, int]]:
    """(preset, training-checkpoint bytes, of which weights+moments, exported-model bytes) per preset."""
    import torch

    from transmute.checkpoint import save_checkpoint
    from transmute.signals import Normalization
    from transmute.training import Context, TrainConfig, save_state
    from transmute_cyclegan_vc.networks import PRESETS
    from transmute_cyclegan_vc.task import CycleGANVCTask

    unit = Normalization(mean=(0.0,), std=(1.0,))
    features = {k: [torch.zeros(80, 100)] for k in ("a", "b")}
    out = []
    for preset in ("tiny", "small", "default"):
        task = CycleGANVCTask(features, {"a": unit, "b": unit}, preset)
        task.setup(Context(device=torch.device("cpu")))
        for optimizer in task.opt.values():  # Adam's moments exist after a step: take one with zero gradients
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
        state = scratch / f"state-{preset}.safetensors"
        save_state(state, task, 1, TrainConfig(out=scratch, steps=1))
        params = sum(p.numel() for net in task.nets.values() for p in net.parameters())
        model = save_checkpoint(scratch / f"model-{preset}.safetensors", task.export())
        out.append((preset, state.stat().st_size, 12 * params, model.stat().st_size))
        state.unlink()
        del task
    return out


def main() -> list[common.Row]:
    import torch

    scratch = Path(tempfile.mkdtemp(prefix="bench-training-"))
    rows = []
    try:
        common.header(f"Training profile: cyclegan-vc {PRESET} preset on CPU ({torch.get_num_threads()} torch threads)")
        for workers in (0, 2):
            profile, before_first = profile_run(workers, scratch)
            rate = print_profile(profile, workers)
            print(f"  before the first step: {before_first:.2f} s (features of {len(list(common.SPEECH_DIR.glob('*.wav')))} "
                  f"files {profile['features']:.2f} s, networks and optimizers {profile['setup']:.2f} s)")
            rows.append(common.Row(f"training profile ({PRESET}, workers {workers})", f"{rate:.2f} steps/s", "-", "-",
                                   "-", f"data {100 * profile['data'] / profile['step']:.0f}% of compute"))
        common.header("Training checkpoint per preset (exact resume: fp32 weights + 2 Adam moments)")
        for preset, state, needed, model in checkpoint_sizes(scratch):
            print(f"  {preset:<8} training checkpoint {state / 1e6:9.1f} MB (weights + moments {needed / 1e6:.1f} MB, "
                  f"rest {(state - needed) / 1e3:.0f} kB); exported model {model / 1e6:.1f} MB")
            rows.append(common.Row(f"training checkpoint ({preset})", f"{state / 1e6:.1f} MB", "-", "-",
                                   "12 bytes/parameter", f"model {model / 1e6:.1f} MB"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
