"""The one training loop every trainable family plugs into.

A family plugin subclasses `Task` (its networks, optimizers, step, samples and
export) and `TrainingData` (how to read and augment one item, and how to batch
items). The loop does the rest:

- draws batches in `workers` processes while the model computes (a torch
  DataLoader over the loop's own sampler): the items of step s are a pure
  function of (seed, s), optionally weighted per item (a CSV), and rank r of a
  torchrun job takes the r-th slice of that step's global batch;
- progress bar and a JSON-lines log in RUN_DIR/log.jsonl: per line the step,
  the mean of each loss since the line before (summed on the device and read
  once per line, not once per step) and each optimizer's learning rate in that
  step ("lr/NAME"); a line is written every log_every steps and at every
  checkpoint;
- training state every N steps in RUN_DIR/checkpoints/last.safetensors (the one
  checkpoint format: safetensors + JSON, written atomically) and the exported
  model in RUN_DIR/model.safetensors;
- exact resume: weights, optimizer and LR-scheduler state, torch's RNG state
  and the step are restored, and the data stream needs no state (step s always
  draws the same items), so a resumed run on CPU gives the same result as an
  uninterrupted one, with any number of workers;
- periodic samples (PNG/WAV) in RUN_DIR/samples/;
- on GPU: fp32 weights with TF32 matmuls/convolutions and cudnn.benchmark by
  default; bf16 autocast on request (--precision bf16; see precision_setup
  for why it is not the default);
- several processes through torchrun (DistributedDataParallel; gloo on CPU,
  NCCL on GPU): gradients are averaged.

Faults end in one line, never a traceback: Ctrl-C and SIGTERM stop at the
current step; an output error (an unwritable folder, a full disk) leaves the
last good checkpoint as it was. Temporary files that a killed run left in the
run folder are removed when the next run starts there, and log.jsonl never
holds steps beyond the checkpoint a run continues from.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transmute.checkpoint import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from transmute.devices import resolve_device
from transmute.errors import CheckpointError, TransmuteError, one_line, os_reason

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
    precision: str = "auto"  # auto (fp32 with TF32 on GPU, fp32 on CPU) | fp32 | bf16
    resume: bool = False
    progress: bool = True
    workers: int = 0  # processes that read and augment items; 0: the main process
    sample_weights: Path | None = None  # CSV of name,weight
    hparams: dict = field(default_factory=dict)  # a preset with the user's --hparam overrides


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


class TrainingData(abc.ABC):
    """A family's training set: named items, how to read (and augment) one, how to batch them.

    The loop decides which items a step uses and hands `load` a random
    generator made for that one draw; `load` takes all its randomness (crops,
    flips, masks) from it. That is what makes the batches independent of the
    number of worker processes and a resumed run identical to an uninterrupted
    one. `load` runs in worker processes: keep the object cheap to copy (file
    names, or arrays already in memory), and raise TransmuteError for an item
    that cannot be read.
    """

    @abc.abstractmethod
    def items(self) -> Sequence[str] | Mapping[str, Sequence[str]]:
        """The item names (a --sample-weights CSV refers to them).

        Unpaired domains (CycleGAN) return {domain: names}: every batch element
        then gets one item of each domain, drawn independently, and `load` is
        handed {domain: index}.
        """

    @abc.abstractmethod
    def load(self, index, rng) -> Any:
        """One item, ready to batch; `rng` is a numpy Generator for this draw alone."""

    def collate(self, samples: list) -> Any:
        """A batch from loaded items (default: torch's, which stacks tensors and dicts of them)."""
        from torch.utils.data import default_collate

        return default_collate(samples)


class Task(abc.ABC):
    """A family's training recipe. A subclass must implement every abstract method below.

    The loop calls, in order: setup(ctx); data() once; then for each step
    train_step(batch, step, ctx) and every scheduler's step(); and every N
    steps export() and write_samples(). modules(), optimizers() and
    schedulers() are what a checkpoint holds; hparams() is what a resumed run
    must share with the original.
    """

    plugin: str = ""
    model: str = ""
    version: str = "1.0"

    @abc.abstractmethod
    def setup(self, ctx: Context) -> None:
        """Build networks (wrapped with ctx.wrap), optimizers and LR schedulers on ctx.device."""

    @abc.abstractmethod
    def modules(self) -> dict[str, Any]:
        """Every module whose state is saved: {name: nn.Module} (unwrapped)."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, Any]:
        """{name: torch.optim.Optimizer}."""

    def schedulers(self) -> dict[str, Any]:
        """{name: torch.optim.lr_scheduler.LRScheduler}; the loop steps them after every step.

        A LambdaLR's rate is recomputed from its function when a run resumes, so
        a schedule defined against the total steps (a linear decay to zero at
        the end) follows a longer --steps from the resumed step on.
        """
        return {}

    @abc.abstractmethod
    def data(self) -> TrainingData:
        """The training set (called once, after setup)."""

    @abc.abstractmethod
    def train_step(self, batch, step: int, ctx: Context) -> dict[str, Any]:
        """One optimisation step; return the losses as (detached) scalar tensors or floats.

        Tensors are summed on the device and read once per log step: a float()
        here would make the host wait for the GPU every step.
        """

    def write_samples(self, step: int, folder: Path) -> None:
        """Write a few PNG/WAV samples of the current model (main process only)."""

    @abc.abstractmethod
    def export(self) -> Checkpoint:
        """The inference checkpoint (weights + metadata) of the current model."""

    def hparams(self) -> dict:
        return {}


# --------------------------------------------------------------------------- data


class _Failed:
    """An item that could not be loaded (in a worker), carried to the main process as one line."""

    def __init__(self, message: str):
        self.message = message


class _Draws:
    """The Dataset the DataLoader indexes: (item index, seed) -> the family's loaded item."""

    def __init__(self, data: TrainingData):
        self.data = data

    def __getitem__(self, draw):
        import numpy as np

        index, seed = draw
        try:
            return self.data.load(index, np.random.default_rng(seed))
        except TransmuteError as exc:
            return _Failed(one_line(exc))

    def collate(self, samples):
        failed = [s for s in samples if isinstance(s, _Failed)]
        return failed[0] if failed else self.data.collate(samples)


def _domains(data: TrainingData) -> dict[str | None, list[str]]:
    names = data.items()
    return {k: list(v) for k, v in names.items()} if isinstance(names, Mapping) else {None: list(names)}


def read_sample_weights(path: Path, domains: dict) -> dict:
    """{domain: per-item probabilities} from a CSV of name,weight; unlisted items weigh 1."""
    import numpy as np

    where = {name: (domain, i) for domain, names in domains.items() for i, name in enumerate(names)}
    weights = {domain: np.ones(len(names)) for domain, names in domains.items()}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TransmuteError(f"{path}: cannot read the sample weights ({one_line(exc)})") from None
    example = next(iter(where), "")
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise TransmuteError(f"{path}, line {line}: expected 'name,weight', got {','.join(row)!r}")
        name, raw = row[0].strip(), row[1].strip()
        try:
            weight = float(raw)
        except ValueError:
            if line == 1:
                continue  # a header
            weight = float("nan")
        if not weight >= 0 or weight == float("inf"):
            raise TransmuteError(f"{path}, line {line}: weight of '{name}' must be a number >= 0, got {raw!r}")
        if name not in where:
            raise TransmuteError(f"{path}, line {line}: no training item is named '{name}' (names look like "
                                 f"'{example}')")
        domain, i = where[name]
        weights[domain][i] = weight
    for domain, w in weights.items():
        if not w.sum() > 0:
            raise TransmuteError(f"{path}: every item{f' of {domain}' if domain else ''} has weight 0")
    return {domain: w / w.sum() for domain, w in weights.items()}


class StepSampler:
    """Which items each step of a run uses: a pure function of (seed, step), sliced by rank.

    Step s draws a global batch of batch_size * world_size items (with
    replacement, by weight) from a generator seeded with (seed, s); rank r takes
    slice r. Item k of that batch is loaded with a generator seeded with
    (seed, s, k). A run resumed at step s therefore draws what an uninterrupted
    one would, and batches do not depend on the number of workers.
    """

    def __init__(self, domains: dict, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 world_size: int = 1, weights: dict | None = None):
        self.sizes = {domain: len(names) for domain, names in domains.items()}
        self.seed = seed % 2**63  # numpy's seed sequences take no negative numbers (--seed -1)
        self.batch_size, self.start, self.stop = batch_size, start, stop
        self.rank, self.world_size, self.weights = rank, world_size, weights or {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        import numpy as np

        total = self.batch_size * self.world_size
        mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, step])
            picks = {domain: rng.choice(n, size=total, p=self.weights.get(domain)) for domain, n in self.sizes.items()}
            if None in picks:  # one domain: a plain index
                yield [(int(picks[None][k]), (self.seed, step, k)) for k in mine]
            else:
                yield [({d: int(p[k]) for d, p in picks.items()}, (self.seed, step, k)) for k in mine]


def batches(data: TrainingData, config: TrainConfig, start: int, rank: int = 0, world_size: int = 1,
            pin_memory: bool = False):
    """The batches of steps start..config.steps-1, loaded in config.workers processes."""
    import torch
    from torch.utils.data import DataLoader

    domains = _domains(data)
    for domain, names in domains.items():
        if not names:
            raise TransmuteError(f"no training items{f' for {domain}' if domain else ''}")
    weights = read_sample_weights(config.sample_weights, domains) if config.sample_weights else None
    sampler = StepSampler(domains, config.batch_size, config.seed, start, config.steps, rank, world_size, weights)
    draws = _Draws(data)
    # A generator of its own: the DataLoader draws its workers' base seed from it, not from torch's global
    # RNG, whose state a checkpoint restores (items are seeded per draw; the base seed is unused).
    return DataLoader(draws, batch_sampler=sampler, num_workers=config.workers, collate_fn=draws.collate,
                      pin_memory=pin_memory, prefetch_factor=4 if config.workers else None,
                      generator=torch.Generator().manual_seed(config.seed), worker_init_fn=_worker_ignores_sigterm)


def _worker_ignores_sigterm(worker_id: int) -> None:
    """A SIGTERM sent to the whole process group (a batch scheduler stopping a job) stops the main process,
    which then shuts the workers down; a worker killed first would make the DataLoader fail with a traceback.
    A worker whose main process is gone exits by itself (the DataLoader's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def save_state(path: Path, task: Task, step: int, config: TrainConfig) -> None:
    """Weights, optimizer moments, LR schedulers, torch's RNG and the step: what exact resume needs, no more."""
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
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Noise drawn on the GPU (a VAE's z, a mask) comes from CUDA's generators, not the CPU's.
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
    schedulers = {name: s.state_dict() for name, s in task.schedulers().items()}
    extra = {"step": step, "optimizers": optim_meta, "schedulers": schedulers, "seed": config.seed,
             "batch_size": config.batch_size}
    save_checkpoint(path, Checkpoint(tensors=tensors, plugin=task.plugin, model=STATE_MODEL,
                                     version=task.version, hparams=task.hparams(), extra=extra))


def load_state(path: Path, task: Task) -> int:
    """Restore what save_state wrote into a task that has been set up; return the step."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    ckpt = load_checkpoint(path, plugin=task.plugin, model=STATE_MODEL, version=task.version)
    now = json.loads(json.dumps(task.hparams()))
    if ckpt.hparams != now:
        changed = sorted(k for k in set(now) | set(ckpt.hparams) if now.get(k) != ckpt.hparams.get(k))
        first = changed[0]
        raise TransmuteError(f"{path}: this run was trained with other settings ({first}: "
                             f"{ckpt.hparams.get(first)!r} then, {now.get(first)!r} now"
                             f"{f', and {len(changed) - 1} more' if len(changed) > 1 else ''}); resume with the "
                             "same options, or start a new run folder")
    step = int(ckpt.need("extra", "step"))
    for name, module in task.modules().items():
        load_weights(module, ckpt.tensors, path, prefix=f"model/{name}/")
    for name, optimizer in task.optimizers().items():
        state = _unflatten_optimizer(name, ckpt.tensors, ckpt.need("extra", "optimizers", name))
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: optimizer '{name}' does not fit this model ({one_line(exc)})") from None
    for name, scheduler in task.schedulers().items():
        if "schedulers" not in ckpt.extra and isinstance(scheduler, LambdaLR):
            scheduler.last_epoch = step  # a state saved before schedulers were: its function gives the rate
        else:
            scheduler.load_state_dict(dict(ckpt.need("extra", "schedulers", name)))
        if isinstance(scheduler, LambdaLR):
            # Rates from the schedule's function at this step (it may now end later: a longer --steps).
            for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * fn(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    torch.set_rng_state(ckpt.need("tensors", "rng/torch").to(torch.uint8))
    cuda_keys = sorted((k for k in ckpt.tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[-1]))
    cuda_states = [ckpt.tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.to(torch.uint8).cpu() for state in cuda_states])
    return step


# --------------------------------------------------------------------------- loop


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


class _Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C."""


class _WorkerDied(Exception):
    """A data worker process was killed (the out-of-memory killer, SIGKILL): stop like Ctrl-C."""


def _next_batch(stream, workers: int):
    try:
        return next(stream)
    except (RuntimeError, OSError, EOFError) as exc:
        # A dead worker surfaces as the DataLoader's RuntimeError, or as a broken connection (reset, EOF)
        # when it died while handing over a batch. An error raised inside a worker's load() ("Caught ...") is not this.
        if not workers or str(exc).startswith("Caught "):
            raise
        raise _WorkerDied(one_line(exc).removeprefix("RuntimeError: ").rstrip(". ")) from None


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM (kill, a scheduler's pre-emption, torchrun stopping its workers) stops the run like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Losses:
    """Loss sums between log steps, kept where they were computed (no host sync per step)."""

    def __init__(self):
        self.sums: dict = {}
        self.count = 0

    def add(self, losses: dict) -> None:
        for key, value in losses.items():
            value = value.detach().float() if hasattr(value, "detach") else float(value)
            self.sums[key] = value if key not in self.sums else self.sums[key] + value
        self.count += 1

    def read(self) -> dict[str, float]:
        """Mean of each loss since the last read (one device-to-host copy), and start again."""
        import torch

        if not self.count:
            return {}
        keys = list(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32).cpu() for k in keys]).tolist()
        means = {k: v / self.count for k, v in zip(keys, values)}
        self.sums, self.count = {}, 0
        return means


def precision_setup(precision: str, device) -> Callable[[], Any]:
    """Set up the device for a --precision choice; return the autocast context factory for steps.

    auto on GPU: fp32 weights, TF32 tensor cores for matmuls and convolutions,
    and cudnn.benchmark (training shapes are fixed, so cuDNN's pick of the
    fastest kernels is made once). bf16 autocast is opt-in: measured on an H200
    it made the cyclegan-vc default preset 1.5x slower than fp32 (9.8 against
    14.8 steps/s) -- its convolutions are small and each is followed by
    instance norm and a GLU, which autocast runs in fp32, so every layer pays
    two casts and the tensor cores have little to win.
    """
    import torch

    if precision == "bf16" and device.type != "cuda":
        raise TransmuteError("--precision bf16 needs a GPU; use fp32 on CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = precision == "auto"
        torch.backends.cudnn.allow_tf32 = precision == "auto"
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _output_error(exc: OSError, target: Path, what: str, saved: int, state_path: Path) -> TransmuteError:
    """One line for a failed write (a full disk, a read-only or vanished folder): what, where, what is safe."""
    reason = os_reason(exc) if exc.errno else (exc.strerror or one_line(exc))
    if saved:
        kept = f"the checkpoint of step {saved}{'' if target == state_path else f' ({state_path})'} is intact; " \
               "free space or fix the folder, then add --resume"
    else:
        kept = "no checkpoint was written yet"
    return TransmuteError(f"{target}: cannot write {what} ({reason}); {kept}")


def train(task: Task, config: TrainConfig, profile: dict | None = None) -> Path:
    """Run (or resume) training; return the path of the exported model.

    profile, if given, receives the seconds spent in each part of the loop
    (data, step, schedule, log, checkpoint, samples, start) and the steps run.
    """
    import torch

    timer = _Profile(profile)
    world, rank, local_rank = _distributed()
    device = resolve_device(config.device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    autocast = precision_setup(config.precision, device)

    def wrap(module):
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        return module

    run_dir = Path(config.out)
    state_path = run_dir / "checkpoints" / "last.safetensors"
    model_path = run_dir / "model.safetensors"
    log_path = run_dir / "log.jsonl"
    if rank == 0:
        _prepare_run_dir(run_dir, state_path, config.resume)
    ctx = Context(device=device, rank=rank, world_size=world, autocast=autocast, wrap=wrap, run_dir=run_dir)
    torch.manual_seed(config.seed + rank)
    task.setup(ctx)
    start = 0
    if config.resume:
        if not state_path.exists():
            raise TransmuteError(f"{state_path}: nothing to resume; run without --resume to start")
        start = load_state(state_path, task)
        if rank:  # each rank continues its own stream of torch's global RNG
            torch.manual_seed(config.seed + rank + start)
        if rank == 0 and start >= config.steps:
            print(f"{run_dir}: already at step {start} of {config.steps}; nothing to do "
                  "(raise --steps to train on)", file=sys.stderr)
    if rank == 0:
        _keep_log_to(log_path, start)
    loader = batches(task.data(), config, start, rank, world, pin_memory=device.type == "cuda")
    schedulers = list(task.schedulers().values())
    optimizers = task.optimizers()

    log = open(log_path, "a", encoding="utf-8") if rank == 0 else None
    bar = None
    if rank == 0 and config.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, unit="step", desc=f"train {task.plugin}",
                   file=sys.stderr, dynamic_ncols=True)
    losses = _Losses()
    step = saved = start
    checked = start  # losses up to here were seen to be finite
    started = time.time()
    timer.lap("start")
    stream = None
    try:
        stream = iter(loader)  # starts the workers, which keep the default SIGTERM action
        with _sigterm_stops():
            while step < config.steps:
                batch = _next_batch(stream, config.workers)
                if isinstance(batch, _Failed):
                    raise TransmuteError(batch.message)
                timer.lap("data")
                losses.add(task.train_step(batch, step, ctx))
                timer.lap("step")
                rates = {f"lr/{name}": opt.param_groups[0]["lr"] for name, opt in optimizers.items()}
                for scheduler in schedulers:
                    scheduler.step()
                step += 1
                timer.lap("schedule")
                at_log = step % config.log_every == 0 or step == config.steps
                at_checkpoint = step % config.checkpoint_every == 0 or step == config.steps
                if at_log or at_checkpoint:
                    means = losses.read()
                    if not all(v == v and abs(v) != float("inf") for v in means.values()):
                        raise TransmuteError(
                            f"training diverged between steps {checked + 1} and {step} (mean losses {means}); "
                            "lower the learning rate or resume from the last checkpoint")
                    checked = step
                    rate = (step - start) / max(time.time() - started, 1e-9)
                    if bar is not None:
                        bar.update(step - bar.n)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()}, refresh=False)
                    if log is not None:
                        try:
                            line = {"step": step, "it_per_s": round(rate, 4), **means, **rates}
                            log.write(json.dumps(line) + "\n")
                            log.flush()
                        except OSError as exc:
                            raise _output_error(exc, log_path, "the training log", saved, state_path) from None
                    if rank == 0 and bar is None and config.progress:
                        shown = " ".join(f"{k}={v:.3f}" for k, v in means.items())
                        print(f"step {step}/{config.steps} ({rate:.2f} it/s) {shown}", file=sys.stderr, flush=True)
                    timer.lap("log")
                if at_checkpoint:
                    if rank == 0:
                        # State first: if it cannot be written, the model file stays at the same step too.
                        try:
                            save_state(state_path, task, step, config)
                        except OSError as exc:
                            raise _output_error(exc, state_path, f"the checkpoint of step {step}", saved,
                                                state_path) from None
                        saved = step
                        try:
                            save_checkpoint(model_path, task.export())
                        except OSError as exc:
                            raise _output_error(exc, model_path, f"the model of step {step}", saved,
                                                state_path) from None
                    saved = step
                    _barrier(world)
                    timer.lap("checkpoint")
                if rank == 0 and config.sample_every and (step % config.sample_every == 0 or step == config.steps):
                    try:
                        task.write_samples(step, run_dir / "samples")
                    except OSError as exc:
                        raise _output_error(exc, run_dir / "samples", f"the samples of step {step}", saved,
                                            state_path) from None
                    timer.lap("samples")
    except (KeyboardInterrupt, _Terminated, _WorkerDied, RuntimeError) as stop:
        if isinstance(stop, RuntimeError):
            if not str(stop).startswith("DataLoader worker"):
                raise
            stop = _WorkerDied(str(stop).rstrip(". "))  # the DataLoader's SIGCHLD handler, between batches
        how = {_Terminated: "terminated (SIGTERM)", KeyboardInterrupt: "interrupted"}.get(
            type(stop), f"a data worker died ({stop})")
        # --resume needs a checkpoint: before the first one, it would only answer "nothing to resume".
        where = (f"the last checkpoint (step {saved}) is in {state_path} (add --resume to continue)" if saved
                 else "no checkpoint was written yet (run the same command again to start over)")
        error = TransmuteError(f"{how} at step {step}; {where}")
        error.exit_code = {_Terminated: 143, KeyboardInterrupt: 130}.get(type(stop), 1)  # what `run` exits with
        raise error from None
    finally:
        if stream is not None and hasattr(stream, "_shutdown_workers"):
            with contextlib.suppress(Exception):  # a worker may be dead already
                stream._shutdown_workers()  # now, not whenever the iterator is collected
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    timer.done(step - start)
    if world > 1:
        # Every rank leaves together. The group is not destroyed here: the task's
        # DDP wrappers still hold it, and destroying it under them makes a rank
        # abort at exit ('terminate called without an active exception').
        _barrier(world)
    return model_path


class _Profile:
    """Seconds spent in each part of the loop, for benchmarks (does nothing without a dict)."""

    def __init__(self, into: dict | None):
        self.into = into
        self.last = time.perf_counter()

    def lap(self, part: str) -> None:
        if self.into is not None:
            now = time.perf_counter()
            self.into[part] = self.into.get(part, 0.0) + now - self.last
            self.last = now

    def done(self, steps: int) -> None:
        if self.into is not None:
            self.into["steps"] = self.into.get("steps", 0) + steps


def _prepare_run_dir(run_dir: Path, state_path: Path, resume: bool) -> None:
    from transmute.files import remove_stale_temporaries

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TransmuteError(f"{run_dir}: cannot write to the run folder ({os_reason(exc) if exc.errno else one_line(exc)}); "
                             "choose another --out") from None
    if state_path.exists() and not resume:
        raise TransmuteError(f"{run_dir}: already holds a training run; add --resume to continue it "
                             "or choose a new --out folder")
    remove_stale_temporaries(run_dir)  # checkpoints/ and samples/ too


def _keep_log_to(path: Path, step: int) -> None:
    """Drop log lines past `step`, where this run starts: those steps are done (again) now.

    A fresh start (step 0) empties a log that a run killed before its first
    checkpoint left behind.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if step and json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            pass  # a line half-written when the run was killed
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- CLI helpers


def say(message: str) -> None:
    """Print a line to stderr from the main process only (one voice under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def training_options(func):
    """The options every `transmute train FAMILY` command shares (click decorator).

    config_from_options turns their values (with a preset) into a TrainConfig.
    """
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
                     help="auto: fp32 with TF32 tensor cores on GPU (the fastest measured), fp32 on CPU; "
                          "fp32: no TF32; bf16: bf16 autocast (GPU)."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Processes that read and augment training items while the model computes."),
        click.option("--sample-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="CSV of name,weight: how often each training item is drawn (unlisted items: 1)."),
        click.option("--hparam", "hparams", multiple=True, metavar="KEY=VALUE",
                     help="Override a preset value (repeatable), e.g. --hparam batch_size=2; the keys are the "
                          "preset's (an unknown key is answered with the list)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def require_hparam(ok: bool, message: str) -> None:
    """A family's check of its settings: a one-line error "--hparam MESSAGE" when `ok` is false."""
    if not ok:
        raise TransmuteError(f"--hparam {message}")


def parse_hparams(items, preset: dict) -> dict:
    """KEY=VALUE strings (TOML literals) checked against a preset's keys and types; one-line click errors."""
    import click

    from transmute.pipeline import parse_value
    from transmute.stages import suggest

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in preset:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(preset)}"
                                     f"{suggest(key, preset)}", param_hint="--hparam")
        value = parse_value(raw.strip())
        want = type(preset[key])
        if type(value) is not want and not (want is float and type(value) is int):
            raise click.BadParameter(f"{key}: expected a {want.__name__}, got {raw!r}", param_hint="--hparam")
        out[key] = float(value) if want is float else value
    return out


def config_from_options(options: dict, preset: dict) -> TrainConfig:
    """A TrainConfig from training_options' values and a preset.

    The preset holds the family's settings, including steps, batch_size,
    checkpoint_every and sample_every (the defaults of those options);
    config.hparams is the preset with the --hparam overrides and the run's
    steps and batch size.
    """
    hparams = dict(preset, **parse_hparams(options.get("hparams", ()), preset))
    keys = ("steps", "batch_size", "checkpoint_every", "sample_every")
    chosen = {k: options.get(k) if options.get(k) is not None else hparams[k] for k in keys}
    hparams.update({k: chosen[k] for k in ("steps", "batch_size")})
    config = TrainConfig(out=options["out"], seed=options["seed"], device=options["device"],
                         precision=options["precision"], resume=options["resume"], workers=options.get("workers", 0),
                         sample_weights=options.get("sample_weights"), hparams=hparams, **chosen)
    if _distributed()[1] == 0:  # before a family reads its data: an unusable --out is said at once, not an hour on
        out = Path(config.out)
        _prepare_run_dir(out, out / "checkpoints" / "last.safetensors", config.resume)
    return config
