"""Running a pipeline over files (or a generator) in batches: `transmute.run`.

Inputs are decoded by worker threads while the model computes on the calling
thread; loaded items wait in groups of equal collate key (same image size, same
spectrogram spec) until a group fills a batch, so mixed inputs still form full
batches. Each batch runs through the transforms on the chosen device, is split
back into items, and the items are encoded and saved atomically by the workers.
Outputs that already exist are skipped unless overwrite is set, so an
interrupted run continues where it stopped. A batch that fails is retried item
by item, so one bad item never takes its neighbours down.

Nothing here prints or exits: `run` returns a Report (one Outcome per input:
status, reason, warnings, timings); setup problems raise TransmuteError.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import threading
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from transmute.devices import resolve_device
from transmute.errors import InputError, TransmuteError, one_line, os_reason
from transmute.files import atomic_path, check_readable, discover, remove_stale_temporaries
from transmute.pipeline import Pipeline
from transmute.signals import Signal, batch_mismatch, generated_mismatch

# A batch is cut short past this many input elements (about 6 minutes of 22 kHz
# audio), so a folder of long files never needs many times one file's memory.
MAX_BATCH_ELEMENTS = 1 << 23
# Items waiting for their group to fill a batch are bounded too: past these, the
# oldest group is run as it is (a partial batch) so memory and latency stay bounded.
MAX_PENDING_ELEMENTS = 4 * MAX_BATCH_ELEMENTS
PENDING_BATCHES = 4  # items pending in all groups together: at most this many batches' worth

def default_workers() -> int:
    """Decode/encode threads beside the compute thread: one per core, at least 2, at most 8."""
    return max(2, min(8, os.cpu_count() or 1))


@dataclass
class Job:
    label: str  # what messages call it: the input path, or the generated name
    name: str  # the item's name inside signals (relative path without suffix)
    output: Path
    source: Path | None = None


@dataclass
class Outcome:
    job: Job
    status: str  # written | skipped | failed
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, compute (its share of the batch), save


@dataclass
class Report:
    """What a run did. outcomes are in input order, whatever the worker count."""

    pipeline: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    interrupted: int = 0  # the signal that stopped the run (signal.SIGINT, signal.SIGTERM), 0 if it finished
    device: str = ""
    workers: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # every batch formed, in the order it ran
    removed_temporaries: list[Path] = field(default_factory=list)  # stale .part files of killed runs
    seconds: float = 0.0
    # Under torchrun: this process's rank and how many share the inputs. Rank 0's report holds every
    # rank's outcomes (in input order) and device(s); another rank's holds only its own share's.
    rank: int = 0
    world_size: int = 1

    def _with(self, status):
        return [o for o in self.outcomes if o.status == status]

    @property
    def written(self):
        return self._with("written")

    @property
    def skipped(self):
        return self._with("skipped")

    @property
    def failed(self):
        return self._with("failed")

    @property
    def warnings(self) -> list[tuple[Outcome, str]]:
        return [(o, w) for o in self.outcomes for w in o.warnings]

    def summary(self) -> str:
        parts = [f"{len(self.written)} written", f"{len(self.skipped)} skipped (already there)",
                 f"{len(self.failed)} failed"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored (not for this pipeline)")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning(s)")
        return ", ".join(parts)


class Interrupted(KeyboardInterrupt):
    """A stop request by signal (SIGTERM from a scheduler or `timeout`), handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- the API


def run(
    pipeline,
    inputs: Iterable[str | os.PathLike] = (),
    output: str | os.PathLike = "",
    *,
    overrides: Iterable = (),
    device: str | None = None,
    batch_size: int | None = None,
    count: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    tf32: bool | None = None,
    on_start: Callable[[int], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    distributed: bool | None = None,
) -> Report:
    """Run `pipeline` over `inputs` (files and folders) into the folder `output`; return a Report.

    pipeline: a registered name, a .toml path, a dict in pipeline-file form, or
    a built Pipeline. inputs: a list of files and folders, or one. overrides: "stage.param=value" strings or (stage, param,
    value) tuples. count: how many items a generating pipeline makes. workers:
    decode/encode threads (0: everything on the calling thread; default
    default_workers()). tf32: allow TensorFloat-32 on CUDA (default off, or
    TRANSMUTE_TF32=1). on_start(total) is called once the inputs are known;
    on_outcome(outcome) for each input, in input order.

    Under torchrun (WORLD_SIZE > 1; distributed=None or True), each rank takes
    its share of the inputs, input i going to rank i % WORLD_SIZE in the sorted
    order they are found in, and computes on its own GPU (cuda:LOCAL_RANK) when
    the device is auto or cuda; on_start and on_outcome see that share. Rank 0's
    Report then holds the outcomes of every rank, gathered through
    torch.distributed; the other ranks' hold their own. The output folder must
    be one that every rank sees. distributed=False: this process runs every
    input, whatever torchrun says.

    Never prints or exits. Setup problems (unknown pipeline, bad parameter, no
    inputs, a device that is not there) raise TransmuteError; a bad input is a
    failed Outcome and the rest go on. Ctrl-C or SIGTERM stops the run cleanly
    (no half-written outputs) and returns the Report with `interrupted` set to
    the signal number.
    """
    # One file or folder, or one override, may be given bare: iterating a string would take each character
    # as an input ("in/" -> "i", "n" and "/": the whole disk).
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(overrides, str):
        overrides = [overrides]
    built = _build(pipeline, list(overrides))
    inputs = [str(p) for p in inputs]
    if built.is_generator:
        if inputs:
            raise TransmuteError(f"pipeline '{built.name}' generates its items; give --count N instead of inputs")
    elif not inputs:
        raise TransmuteError(f"pipeline '{built.name}' needs input files or folders")
    elif count is not None:
        raise TransmuteError("--count is for generating pipelines; this one reads inputs")
    if not str(output):
        raise TransmuteError("no output folder given")
    shard = torchrun_shard() if distributed is not False else _Shard()
    runner = Runner(built, Path(output), overwrite=overwrite, device=device, batch_size=batch_size,
                    workers=workers, tf32=tf32, on_outcome=on_outcome, shard=shard)
    jobs = runner.plan_generated(count or 1) if built.is_generator else runner.plan_files(inputs)
    if not jobs and not runner.planned_failures:
        raise TransmuteError(_nothing_found(inputs, runner.report.ignored, built.name))
    group = shard.join() if shard.world > 1 else None  # before any compute: a rank that cannot connect fails now
    positions = list(range(len(jobs)))[shard.rank :: shard.world]
    jobs = [jobs[i] for i in positions]
    if on_start is not None:
        on_start(len(jobs) + len(runner.report.outcomes))
    with _stop_on_sigterm():
        report = runner.run_generator(jobs) if built.is_generator else runner.run_files(jobs)
    if shard.world > 1:
        report = shard.gather(report, dict(zip(map(id, jobs), positions)), group)
    return report


def _build(pipeline, overrides: list) -> Pipeline:
    if isinstance(pipeline, Pipeline):
        if overrides:
            raise TransmuteError("overrides apply while a pipeline is built; pass its name, path or dict instead")
        return pipeline
    from transmute.pipeline import build_from_dict, build_pipeline
    from transmute.plugins import get_manager

    registry = get_manager().registry
    if isinstance(pipeline, dict):
        return build_from_dict(pipeline, registry, overrides=overrides)
    return build_pipeline(str(pipeline), registry, overrides)


def _nothing_found(inputs: list[str], ignored: list[Path], pipeline: str) -> str:
    where = ", ".join(inputs)
    if ignored:
        shown = ", ".join(p.name for p in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        return (f"no input files for pipeline '{pipeline}' in {where}: {len(ignored)} file(s) there are "
                f"not for it ({shown})")
    return f"no input files found in {where} for pipeline '{pipeline}'"


@contextlib.contextmanager
def _stop_on_sigterm():
    """While running, SIGTERM stops the run the way Ctrl-C does (summary, no partial files)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- torchrun


@dataclass
class _Shard:
    """Which share of the inputs this process runs: rank of world (torchrun's RANK and WORLD_SIZE)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    one_machine: bool = True  # every rank on this machine (LOCAL_WORLD_SIZE == WORLD_SIZE)

    def join(self):
        """The process group to gather outcomes through: gloo, whatever the default group's backend.

        Outcomes are Python objects gathered once at the end, so gloo (CPU) is
        right for them even between GPUs, and its timeout is long: a rank that
        finishes early waits there for the slowest one.
        """
        import datetime

        import torch.distributed as dist

        wait = datetime.timedelta(hours=24)
        try:
            if not dist.is_initialized():
                dist.init_process_group(backend="gloo", timeout=wait)
                return None
            return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=wait)
        except Exception as exc:
            raise TransmuteError(f"rank {self.rank} of {self.world}: cannot join the other torchrun processes "
                                 f"({one_line(exc)})") from None

    def gather(self, report: Report, position_of: dict[int, int], group) -> Report:
        """Rank 0: a Report of every rank's outcomes in input order; other ranks: their own, unchanged.

        Outcomes decided while planning (a missing input, an output clash) are
        rank 0's alone and come first, as they do in a run of one process.
        """
        import torch.distributed as dist

        mine = [(position_of.get(id(o.job), -1), o) for o in report.outcomes]
        if self.rank != 0:
            mine = [(p, o) for p, o in mine if p >= 0]
        shared = (mine, report.device, report.batch_sizes, report.seconds, report.interrupted)
        everyone = [None] * self.world
        try:
            dist.all_gather_object(everyone, shared, group=group)
        except Exception as exc:
            raise TransmuteError(f"rank {self.rank} of {self.world}: the outputs are written, but the other "
                                 f"ranks' outcomes could not be gathered ({one_line(exc)})") from None
        if self.rank != 0:
            return report
        outcomes = sorted((entry for rank_ in everyone for entry in rank_[0]), key=lambda entry: entry[0])
        report.outcomes = [o for _, o in outcomes]  # sorted() is stable: planning outcomes keep their order
        report.device = ", ".join(dict.fromkeys(rank_[1] for rank_ in everyone))
        report.batch_sizes = [n for rank_ in everyone for n in rank_[2]]
        report.seconds = max(rank_[3] for rank_ in everyone)
        report.interrupted = next((rank_[4] for rank_ in everyone if rank_[4]), 0)
        return report


def torchrun_shard() -> _Shard:
    """This process's share under torchrun (from RANK, WORLD_SIZE, LOCAL_RANK); rank 0 of 1 otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Shard()
    return _Shard(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                  int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) == world)


# --------------------------------------------------------------------------- workers and warnings


class _Inline(concurrent.futures.Executor):
    """workers=0: each task runs at once on the calling thread."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class _WarningRouter:
    """Sends warnings raised while a job's file is decoded or encoded to that job, on any thread.

    warnings.catch_warnings changes process-wide state, so it is entered once,
    around the whole run, and each worker thread names its current job in a
    thread-local; warnings raised outside a job go where they always went.
    """

    def __init__(self):
        self.local = threading.local()

    @contextlib.contextmanager
    def installed(self):
        from transmute.errors import InputWarning

        with warnings.catch_warnings():
            warnings.simplefilter("always", InputWarning)  # every file's warning, not only the first
            original = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                sink = getattr(self.local, "sink", None)
                if sink is None:
                    return original(message, category, filename, lineno, file, line)
                text = " ".join(str(message).split())
                text = text if issubclass(category, InputWarning) else f"{category.__name__}: {text}"
                sink.append(_ItemNote(text, getattr(message, "item", None)))

            warnings.showwarning = show
            yield

    @contextlib.contextmanager
    def collect(self, sink: list[str]):
        self.local.sink = sink
        try:
            yield
        finally:
            self.local.sink = None


class _ItemNote(str):
    """A warning's text, and the item of a batch it names (None: every item of the batch)."""

    def __new__(cls, text: str, item: str | None = None):
        note = super().__new__(cls, text)
        note.item = item
        return note


@dataclass
class _Done:
    """What a worker returns for one job: a loaded item or an error, its warnings and its time."""

    value: object = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Pending:
    index: int
    job: Job
    item: object
    warnings: list[str]
    timings: dict[str, float]


class _Groups:
    """Loaded items waiting for a batch, one group per collate key, oldest group first."""

    def __init__(self, batch_size: int, max_items: int, max_elements: int):
        self.batch_size, self.max_items, self.max_elements = batch_size, max_items, max_elements
        self.groups: dict[object, list[_Pending]] = {}
        self.items = self.elements = 0

    def add(self, entry: _Pending) -> list[list[_Pending]]:
        """Add one item; return the batches that are ready to run."""
        ready = []
        key, size = entry.item.collate_key(), entry.item.data.numel()
        group = self.groups.get(key)
        if group and sum(p.item.data.numel() for p in group) + size > MAX_BATCH_ELEMENTS:
            ready.append(self._pop(key))
        self.groups.setdefault(key, []).append(entry)
        self.items, self.elements = self.items + 1, self.elements + size
        if len(self.groups[key]) >= self.batch_size:
            ready.append(self._pop(key))
        while self.groups and (self.items > self.max_items or self.elements > self.max_elements):
            ready.append(self._pop(next(iter(self.groups))))  # dicts keep insertion order: the oldest group
        return ready

    def drain(self) -> list[list[_Pending]]:
        return [self._pop(key) for key in list(self.groups)]

    def _pop(self, key) -> list[_Pending]:
        group = self.groups.pop(key)
        self.items -= len(group)
        self.elements -= sum(p.item.data.numel() for p in group)
        return group


# --------------------------------------------------------------------------- the runner


class Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        outdir: Path,
        *,
        overwrite: bool = False,
        device: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        tf32: bool | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        shard: _Shard | None = None,
    ):
        self.pipeline = pipeline
        self.outdir = Path(outdir)
        self.overwrite = overwrite
        self.shard = shard or _Shard()
        self.device = str(resolve_device(device or pipeline.device, self.shard.local_rank))
        self.batch_size = batch_size or pipeline.batch_size
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise TransmuteError(f"--workers {self.workers}: expected 0 or more")
        self.tf32 = os.environ.get("TRANSMUTE_TF32", "") not in ("", "0") if tf32 is None else tf32
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.report = Report(pipeline.name, device=self.device, workers=self.workers, rank=self.shard.rank,
                             world_size=self.shard.world)
        self.planned_failures = 0  # inputs that failed while planning (on every rank; reported by rank 0)
        self._router = _WarningRouter()
        self._finished: dict[int, Outcome] = {}  # outcomes waiting for earlier inputs', to keep input order
        self._next = 0
        self._ready = False

    # ---------------------------------------------------------------- planning
    def plan_files(self, inputs: list[str]) -> list[Job]:
        for raw in inputs:
            if Path(raw).is_dir() and Path(raw).resolve() == self.outdir.resolve():
                raise TransmuteError(f"{raw}: the output folder is also an input folder; choose another -o folder")
        files, ignored, missing = discover(inputs, self.pipeline.first.accepts, exclude=self.outdir)
        self.report.ignored = ignored
        suffix = self.pipeline.saver.suffix()
        jobs: list[Job] = []
        for raw, reason in missing:
            self._planned(Outcome(Job(raw, raw, Path()), "failed", reason))
        # A file named twice, named and inside a folder also named, or reached through a symbolic link
        # and by its own path is processed once: where it is reached without a link if it is, else first.
        chosen: dict[Path, object] = {}
        for f in files:
            resolved = f.path.resolve()
            if resolved not in chosen or (_through_link(chosen[resolved].path) and not _through_link(f.path)):
                chosen[resolved] = f
        claimed: dict[Path, str] = {}
        for f in files:
            resolved = f.path.resolve()
            if chosen.get(resolved) is not f:
                continue
            output = self.outdir / f.relative.with_suffix(suffix)
            job = Job(str(f.path), f.relative.with_suffix("").as_posix(), output, f.path)
            if output.resolve() == resolved:
                self._planned(Outcome(job, "failed", "the output would overwrite the input; choose another output folder"))
            elif output in claimed:
                self._planned(Outcome(job, "failed", f"output {output} is also the output of {claimed[output]}; "
                                                     "rename one"))
            else:
                claimed[output] = job.label
                jobs.append(job)
        return jobs

    def _planned(self, outcome: Outcome) -> None:
        """An input that failed before running: under torchrun, rank 0 reports it, once."""
        self.planned_failures += 1
        if self.shard.rank == 0:
            self._emit(outcome)

    def plan_generated(self, count: int) -> list[Job]:
        suffix = self.pipeline.saver.suffix()
        width = max(4, len(str(count - 1)))
        return [Job(f"sample-{i:0{width}d}", f"sample-{i:0{width}d}",
                    self.outdir / f"sample-{i:0{width}d}{suffix}") for i in range(count)]

    # ---------------------------------------------------------------- setting up
    def _setup(self) -> None:
        if self._ready:
            return
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = os_reason(exc) if exc.errno else exc
            raise TransmuteError(f"{self.outdir}: cannot create the output folder ({reason})") from None
        # Under torchrun, rank 0 removes what killed runs left, and only when every rank is on this machine:
        # a temporary file's PID says nothing about a process on another machine sharing the folder.
        if self.shard.rank == 0 and self.shard.one_machine:
            self.report.removed_temporaries = remove_stale_temporaries(self.outdir)
        if self.device.startswith("cuda"):
            _set_tf32(self.tf32)
        for stage in self.pipeline.stages:
            stage.output_dir = self.outdir
            try:
                stage.setup(self.device)
            except TransmuteError as exc:
                raise TransmuteError(f"{self.pipeline.source}: stage '{stage.label}' ({stage.name}): {exc}") from None
            except Exception as exc:
                if os.environ.get("TRANSMUTE_DEBUG"):
                    traceback.print_exception(exc)
                raise TransmuteError(
                    f"{self.pipeline.source}: stage '{stage.label}' ({stage.name}) failed to set up: {one_line(exc)}"
                ) from None
        self._ready = True

    def _executor(self) -> concurrent.futures.Executor:
        # Threads, not processes: the decoders and encoders (libsndfile, soxr,
        # Pillow, numpy) release the GIL while they work, a thread shares the
        # loaded stages and their parameters for free, and items come back as
        # tensors without pickling. Worker processes would pay a spawn plus a
        # plugin import each (about a second) and copy every tensor twice, which
        # costs more than it saves on the short files a batch job is made of;
        # benchmarks/bench_batch_io.py measures the gain.
        if self.workers == 0:
            return _Inline()
        return concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="transmute-io")

    # ---------------------------------------------------------------- running
    def run_files(self, jobs: list[Job]) -> Report:
        return self._run(jobs, self._load_ahead)

    def run_generator(self, jobs: list[Job]) -> Report:
        return self._run(jobs, self._generate)

    def _run(self, jobs: list[Job], produce) -> Report:
        started = time.perf_counter()
        self._setup()
        todo = []
        for index, job in enumerate(jobs):
            if job.output.exists() and not self.overwrite:
                self._finish(index, Outcome(job, "skipped"))
            else:
                todo.append((index, job))
        executor = self._executor()
        self._loads: deque = deque()  # (index, job, future) decoding ahead of the compute
        self._saves: deque = deque()  # (pending entry, future) encoding behind it
        try:
            with self._router.installed():
                try:
                    for batch in produce(todo, executor):
                        self._compute(batch, executor)
                        self._collect_saves(block=len(self._saves) > 2 * max(self.workers, 1) + self.batch_size)
                    self._collect_saves(block=True, everything=True)
                except KeyboardInterrupt as exc:
                    self.report.interrupted = getattr(exc, "signum", signal.SIGINT)
                    # Inputs not yet decoded are dropped; outputs already computed are still
                    # written (atomically), so the work done is kept and nothing is half-written.
                    for _, _, future in self._loads:
                        future.cancel()
                    executor.shutdown(wait=True)
                    self._collect_saves(block=False, everything=True, draining=True)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self._flush_outcomes(force=True)
            self.report.seconds += time.perf_counter() - started
        return self.report

    def _load_ahead(self, todo, executor):
        """Decode inputs on the workers a window ahead of the compute; yield full batches in input order."""
        groups = _Groups(self.batch_size, PENDING_BATCHES * self.batch_size, MAX_PENDING_ELEMENTS)
        window = self.batch_size + 2 * self.workers
        queue = self._loads
        todo = iter(todo)
        while True:
            for index, job in todo:
                queue.append((index, job, executor.submit(self._load, job)))
                if len(queue) >= window:
                    break
            if not queue:
                break
            index, job, future = queue.popleft()
            done = future.result()
            if done.error is not None:
                self._fail(index, job, done.error, done.warnings, {"load": done.seconds})
                continue
            yield from groups.add(_Pending(index, job, done.value, done.warnings, {"load": done.seconds}))
        yield from groups.drain()

    def _generate(self, todo, executor):
        import torch

        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            began = time.perf_counter()
            stage, names = self.pipeline.first, [job.name for _, job in chunk]
            try:
                with torch.inference_mode():
                    batch = stage.generate(len(chunk), names)
                if isinstance(batch, Signal) and not batch.names and len(batch) == len(names):
                    batch.names = list(names)  # unnamed but complete: the items are the ones asked for
                # Items are saved by position, as a transform's are: a generator that makes fewer
                # items than asked would leave some without an outcome (and the run "succeeded").
                wrong = generated_mismatch(names, batch)
                if wrong is not None:
                    raise BatchRuleBroken(f"{_stage_ref(stage)} broke the batch rule: {wrong}; nothing was "
                                          "written for these items (the plugin's author can fix this)")
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                if not isinstance(exc, StageFailure):
                    if os.environ.get("TRANSMUTE_DEBUG") and not isinstance(exc, TransmuteError):
                        traceback.print_exception(exc)
                    exc = StageFailure(f"{_stage_ref(stage)}: {one_line(exc)}")
                for index, job in chunk:
                    self._fail(index, job, exc)
                continue
            share = (time.perf_counter() - began) / len(chunk)
            yield [_Pending(index, job, item, [], {"load": share}) for (index, job), item in zip(chunk, batch.items())]

    def _load(self, job: Job) -> _Done:
        """On a worker: read one input (a bad one becomes an error, not an exception)."""
        began = time.perf_counter()
        done = _Done()
        with self._router.collect(done.warnings):
            try:
                check_readable(job.source)  # here, not on the command line: one unreadable file fails alone
                item = self.pipeline.first.load(job.source)
                item.names = [job.name]
                _check_finite(item, "the input contains NaN or infinite values")
                done.value = item
            except Exception as exc:
                done.error = _named(exc, self.pipeline.first)
        done.seconds = time.perf_counter() - began
        return done

    def _compute(self, batch: list[_Pending], executor, retry: bool = False) -> None:
        """Run one batch through the transforms and queue its items' saves."""
        if not retry:
            self.report.batch_sizes.append(len(batch))
        began = time.perf_counter()
        notes: list[_ItemNote] = []
        try:
            signal_type = type(batch[0].item)
            with self._router.collect(notes):
                results = self._transform(signal_type.collate([p.item for p in batch])).items()
        except KeyboardInterrupt:
            raise
        except BatchRuleBroken as exc:
            # The stage's bug, not an item's: retried alone, a stage that only miscounts in batches
            # would pass and hide it. Every item of the batch fails with what the stage did to it.
            for entry in batch:
                self._fail(entry.index, entry.job, exc, entry.warnings, entry.timings)
            return
        except Exception as exc:
            if len(batch) > 1:  # find the item that fails; the others go on
                for entry in batch:
                    self._compute([entry], executor, retry=True)
            else:
                entry = batch[0]
                self._fail(entry.index, entry.job, exc, entry.warnings, entry.timings)
            return
        share = (time.perf_counter() - began) / len(batch)
        for entry, item in zip(batch, results):
            entry.timings["compute"] = share
            entry.warnings += [str(n) for n in notes if getattr(n, "item", None) in (None, entry.job.name)]
            self._saves.append((entry, executor.submit(self._save, entry.job, item)))

    def _transform(self, batch):
        import torch

        signal_ = _to_device(batch, self.device)
        finite = []
        with torch.inference_mode():
            for stage in self.pipeline.transforms:
                given = signal_
                try:
                    signal_ = stage.process(given)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    if os.environ.get("TRANSMUTE_DEBUG") and not isinstance(exc, TransmuteError):
                        traceback.print_exception(exc)
                    raise StageFailure(f"{_stage_ref(stage)}: {one_line(exc)}") from None
                # Results are paired with inputs by position: a stage that drops, adds or reorders
                # items would write one file's output under another's name.
                wrong = batch_mismatch(given, signal_)
                if wrong is not None:
                    raise BatchRuleBroken(f"{_stage_ref(stage)} broke the batch rule: {wrong}; nothing was written "
                                       "for these items (the plugin's author can fix this)")
                if signal_.data.is_floating_point():
                    finite.append((stage, torch.isfinite(signal_.data).all()))
            # One host sync per batch for the NaN checks of every stage, not one per stage.
            if finite:
                flags = torch.stack([flag for _, flag in finite]).cpu().tolist()
                for (stage, _), ok in zip(finite, flags):
                    if not ok:
                        raise InputError(f"{_stage_ref(stage)} produced NaN or infinite values")
        return signal_.to("cpu")

    def _save(self, job: Job, item) -> _Done:
        """On a worker: write one output atomically."""
        began = time.perf_counter()
        done = _Done()
        with self._router.collect(done.warnings):
            try:
                with atomic_path(job.output) as tmp:
                    self.pipeline.saver.save(item, tmp)
            except Exception as exc:
                done.error = _named(exc, self.pipeline.saver)
        done.seconds = time.perf_counter() - began
        return done

    def _collect_saves(self, block: bool, everything: bool = False, draining: bool = False) -> None:
        """Record finished saves in order; wait for the oldest if block (once, or for all if everything).

        draining: after an interrupt, drop the saves it cancelled or stopped.
        """
        while self._saves:
            entry, future = self._saves[0]
            if not future.done() and not block:
                return
            if future.cancelled() or (draining and isinstance(future.exception(), KeyboardInterrupt)):
                self._saves.popleft()
                continue
            done = future.result()  # a KeyboardInterrupt raised on a worker comes out here
            self._saves.popleft()
            warnings_ = entry.warnings + done.warnings
            timings = dict(entry.timings, save=done.seconds)
            if done.error is not None:
                self._fail(entry.index, entry.job, done.error, warnings_, timings)
            else:
                self._finish(entry.index, Outcome(entry.job, "written", "", warnings_, timings))
            if not everything:
                block = False

    # ---------------------------------------------------------------- reporting
    def _fail(self, index: int, job: Job, exc: BaseException, warnings_=(), timings=None) -> None:
        if os.environ.get("TRANSMUTE_DEBUG") and not isinstance(exc, TransmuteError):
            traceback.print_exception(exc)
        self._finish(index, Outcome(job, "failed", one_line(exc), list(warnings_), dict(timings or {})))

    def _finish(self, index: int, outcome: Outcome) -> None:
        self._finished[index] = outcome
        self._flush_outcomes()

    def _flush_outcomes(self, force: bool = False) -> None:
        """Pass on outcomes in input order; at the end (force), also those after a gap an interrupt left."""
        while self._finished:
            if self._next not in self._finished:
                if not force:
                    return
                self._next = min(self._finished)
            self._emit(self._finished.pop(self._next))
            self._next += 1

    def _emit(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        self.on_outcome(outcome)


def _to_device(batch, device: str):
    """Move a batch to the device once; from pinned memory, so the copy does not stall the host."""
    if not device.startswith("cuda"):
        return batch
    return batch.replace(data=batch.data.pin_memory().to(device, non_blocking=True))


def _set_tf32(enabled: bool) -> None:
    """TensorFloat-32 only when asked: it rounds fp32 matmuls and convolutions to 10-bit mantissas,
    which made the converter's CUDA output differ from the CPU's by up to 32%."""
    import torch

    precision = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = precision  # torch >= 2.9; never mix with the legacy flags
        torch.backends.cudnn.conv.fp32_precision = precision
        torch.backends.cudnn.rnn.fp32_precision = precision
    else:  # pragma: no cover - older torch
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def _through_link(path: Path) -> bool:
    return Path(os.path.abspath(path)) != path.resolve()


class StageFailure(TransmuteError):
    """A transform that raised, or returned other items than it was given; names the stage and its plugin."""


class BatchRuleBroken(StageFailure):
    """A transform returned other items than it was given (count, names, sizes): fails the whole batch, no retry."""


def _named(exc: Exception, stage) -> Exception:
    """A bug in a loader or saver (not a TransmuteError such as InputError, nor an OSError such as a full
    disk) names the stage and its plugin, as an exception in process() does."""
    if isinstance(exc, (TransmuteError, OSError)):
        return exc
    if os.environ.get("TRANSMUTE_DEBUG"):
        traceback.print_exception(exc)
    return StageFailure(f"{_stage_ref(stage)}: {one_line(exc)}")


def _stage_ref(stage) -> str:
    """"stage 'mel' (audio.logmel, plugin audio)": which step of the pipeline, which stage type, whose."""
    from transmute.plugins import get_manager

    plugin = get_manager().registry.stage_plugin.get(stage.name)
    return f"stage '{stage.label}' ({stage.name}{f', plugin {plugin}' if plugin else ''})"


def _check_finite(signal_, message: str) -> None:
    import torch

    data = signal_.data
    if data.is_floating_point() and not bool(torch.isfinite(data).all()):
        raise InputError(message)
