"""The one training loop every trainable family plugs into.

A family plugin subclasses `Task`: it builds its networks and optimizers, draws
batches with the generator it is handed, takes one optimisation step, writes
samples, and exports an inference checkpoint. The loop does the rest:

- progress bar with smoothed losses, and a JSON-lines log in RUN_DIR/log.jsonl;
- training state every N steps in RUN_DIR/checkpoints/last.safetensors (the one
  checkpoint format: safetensors + JSON, written atomically, so an interrupted
  run loses at most the steps since the last checkpoint and never reads back a
  half-written file), and the exported model in RUN_DIR/model.safetensors;
- exact resume: weights, optimizer state, the data generator's and torch's RNG
  state and the step are restored, so a resumed run on CPU gives the same
  result as an uninterrupted one;
- periodic samples (PNG/WAV) in RUN_DIR/samples/;
- bf16 autocast on GPU;
- several processes through torchrun (DistributedDataParallel; gloo on CPU,
  NCCL on GPU): each rank draws its own batches, gradients are averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transmute.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from transmute.devices import resolve_device
from transmute.errors import TransmuteError

STATE_MODEL = "training-state"


@dataclass
class TrainConfig:
    out: Path
    steps: int
    batch_size: int = 1
    checkpoint_every: int = 500
    sample_every: int = 1000
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    resume: bool = False
    progress: bool = True


@dataclass
class Context:
    """What a task is handed: where it runs and how to wrap its networks."""

    device: Any
    rank: int = 0
    world_size: int = 1
    autocast: Callable[[], Any] = contextlib.nullcontext
    wrap: Callable[[Any], Any] = lambda module: module  # DDP in a distributed run
    run_dir: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Task:
    """A family's training recipe. Subclasses implement the methods below."""

    plugin: str = ""
    model: str = ""
    version: str = "1.0"

    def setup(self, ctx: Context) -> None:
        """Build networks (wrapped with ctx.wrap) and optimizers on ctx.device."""
        raise NotImplementedError

    def modules(self) -> dict[str, Any]:
        """Every module whose state is saved: {name: nn.Module} (unwrapped)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, Any]:
        raise NotImplementedError

    def next_batch(self, generator) -> Any:
        """Draw a batch using only `generator` for randomness (that is what makes resume exact)."""
        raise NotImplementedError

    def train_step(self, batch, step: int, ctx: Context) -> dict[str, float]:
        """One optimisation step; return losses as floats."""
        raise NotImplementedError

    def write_samples(self, step: int, folder: Path) -> None:
        """Write a few PNG/WAV samples of the current model (main process only)."""

    def export(self) -> Checkpoint:
        """The inference checkpoint (weights + metadata) of the current model."""
        raise NotImplementedError

    def hparams(self) -> dict:
        return {}


# --------------------------------------------------------------------------- state


def _flatten_optimizer(name: str, state: dict) -> tuple[dict, dict]:
    import torch

    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{index}/{key}"] = value
            else:
                meta["scalars"][f"{index}/{key}"] = value
    return tensors, meta


def _unflatten_optimizer(name: str, tensors: dict, meta: dict) -> dict:
    state: dict = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, entry = key[len(prefix) :].split("/", 1)
            state.setdefault(int(index), {})[entry] = value
    for key, value in meta["scalars"].items():
        index, entry = key.split("/", 1)
        state.setdefault(int(index), {})[entry] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(path: Path, task: Task, step: int, generator, config: TrainConfig) -> None:
    import torch

    tensors: dict = {}
    optim_meta: dict = {}
    for name, module in task.modules().items():
        for key, value in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = value
    for name, optimizer in task.optimizers().items():
        flat, meta = _flatten_optimizer(name, optimizer.state_dict())
        tensors.update(flat)
        optim_meta[name] = meta
    tensors["rng/data"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    extra = {"step": step, "optimizers": optim_meta, "seed": config.seed, "batch_size": config.batch_size}
    save_checkpoint(path, Checkpoint(tensors=tensors, plugin=task.plugin, model=STATE_MODEL,
                                     version=task.version, hparams=task.hparams(), extra=extra))


def load_state(path: Path, task: Task, generator, device) -> int:
    import torch

    ckpt = load_checkpoint(path, plugin=task.plugin, model=STATE_MODEL, version=task.version)
    now = json.loads(json.dumps(task.hparams()))
    if ckpt.hparams != now:
        changed = sorted(k for k in set(now) | set(ckpt.hparams) if now.get(k) != ckpt.hparams.get(k))
        first = changed[0]
        raise TransmuteError(f"{path}: this run was trained with other settings ({first}: "
                             f"{ckpt.hparams.get(first)!r} then, {now.get(first)!r} now"
                             f"{f', and {len(changed) - 1} more' if len(changed) > 1 else ''}); resume with the "
                             "same options, or start a new run folder")
    for name, module in task.modules().items():
        prefix = f"model/{name}/"
        module.load_state_dict({k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)})
    for name, optimizer in task.optimizers().items():
        optimizer.load_state_dict(_unflatten_optimizer(name, ckpt.tensors, ckpt.extra["optimizers"][name]))
    generator.set_state(ckpt.tensors["rng/data"].to(torch.uint8))
    torch.set_rng_state(ckpt.tensors["rng/torch"].to(torch.uint8))
    return int(ckpt.extra["step"])


# --------------------------------------------------------------------------- loop


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


class _Smoother:
    def __init__(self, decay: float = 0.9):
        self.decay, self.values = decay, {}

    def update(self, losses: dict) -> dict:
        for key, value in losses.items():
            old = self.values.get(key)
            self.values[key] = value if old is None else self.decay * old + (1 - self.decay) * value
        return self.values


def train(task: Task, config: TrainConfig) -> Path:
    """Run (or resume) training; return the path of the exported model."""
    import torch

    world, rank, local_rank = _distributed()
    device = resolve_device(config.device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise TransmuteError("--precision bf16 needs a GPU; use fp32 on CPU")

    def autocast():
        if precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(module):
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        return module

    run_dir = Path(config.out)
    state_path = run_dir / "checkpoints" / "last.safetensors"
    model_path = run_dir / "model.safetensors"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state_path.exists() and not config.resume:
            raise TransmuteError(f"{run_dir}: already holds a training run; add --resume to continue it "
                                 "or choose a new --out folder")
    ctx = Context(device=device, rank=rank, world_size=world, autocast=autocast, wrap=wrap, run_dir=run_dir)
    torch.manual_seed(config.seed + rank)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    task.setup(ctx)
    start = 0
    if config.resume:
        if not state_path.exists():
            raise TransmuteError(f"{state_path}: nothing to resume; run without --resume to start")
        start = load_state(state_path, task, generator, device)
        if rank:  # each rank continues its own data stream
            generator.manual_seed(config.seed * 1000 + rank + start)
        if rank == 0:
            _truncate_log(run_dir / "log.jsonl", start)
            if start >= config.steps:
                print(f"{run_dir}: already at step {start} of {config.steps}; nothing to do "
                      "(raise --steps to train on)", file=sys.stderr)

    log = open(run_dir / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None
    bar = None
    if rank == 0 and config.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, unit="step", desc=f"train {task.plugin}",
                   file=sys.stderr, dynamic_ncols=True)
    smoother = _Smoother()
    step = saved = start
    started = time.time()
    try:
        while step < config.steps:
            batch = task.next_batch(generator)
            losses = task.train_step(batch, step, ctx)
            step += 1
            if not all(math.isfinite(v) for v in losses.values()):
                raise TransmuteError(f"training diverged at step {step}: losses {losses}; "
                                     "lower the learning rate or resume from the last checkpoint")
            smooth = smoother.update(losses)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in smooth.items()}, refresh=False)
            if log is not None and (step % config.log_every == 0 or step == config.steps):
                rate = (step - start) / max(time.time() - started, 1e-9)
                log.write(json.dumps({"step": step, "it_per_s": round(rate, 4), **losses}) + "\n")
                log.flush()
                if bar is None and config.progress:
                    shown = " ".join(f"{k}={v:.3f}" for k, v in smooth.items())
                    print(f"step {step}/{config.steps} ({rate:.2f} it/s) {shown}", file=sys.stderr, flush=True)
            if step % config.checkpoint_every == 0 or step == config.steps:
                if rank == 0:
                    save_checkpoint(model_path, task.export())
                    save_state(state_path, task, step, generator, config)
                saved = step
                _barrier(world)
            if rank == 0 and config.sample_every and (step % config.sample_every == 0 or step == config.steps):
                task.write_samples(step, run_dir / "samples")
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        where = f"the last checkpoint (step {saved}) is in {state_path}" if saved else "no checkpoint was written yet"
        raise TransmuteError(f"interrupted at step {step}; {where} (add --resume to continue)") from None
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    if world > 1:
        # Every rank leaves together. The group is not destroyed here: the task's
        # DDP wrappers still hold it, and destroying it under them makes a rank
        # abort at exit ('terminate called without an active exception').
        _barrier(world)
    return model_path


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint a run resumes from: those steps are done again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- CLI helpers


def training_options(func):
    """The options every `transmute train FAMILY` command shares (click decorator)."""
    import click

    options = [
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Run folder: checkpoints, exported model, samples, log."),
        click.option("--steps", type=click.IntRange(min=1), default=None, help="Total training steps."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Items per step (per process)."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, help="Save every N steps."),
        click.option("--sample-every", type=click.IntRange(min=0), default=None, help="Write samples every N steps (0: never)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True),
        click.option("--precision", default="auto", type=click.Choice(["auto", "fp32", "bf16"]), show_default=True,
                     help="auto: bf16 autocast on GPU, fp32 on CPU."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_from_options(options: dict, defaults: dict) -> TrainConfig:
    """A TrainConfig from training_options' values, falling back to a preset's defaults."""
    keys = ("steps", "batch_size", "checkpoint_every", "sample_every")
    chosen = {k: options.get(k) if options.get(k) is not None else defaults[k] for k in keys}
    return TrainConfig(out=options["out"], seed=options["seed"], device=options["device"],
                       precision=options["precision"], resume=options["resume"], **chosen)
