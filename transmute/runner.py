"""Running a pipeline over files (or a generator) in batches.

Inputs are loaded one by one (a bad file is reported and skipped), gathered
into batches of equal spec, run through the transforms on the chosen device,
split back into items and saved atomically. Outputs that already exist are
skipped unless overwrite is set, so an interrupted run continues where it
stopped. A batch that fails is retried item by item, so one bad item never
takes its neighbours down.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transmute.devices import resolve_device
from transmute.errors import InputError, TransmuteError, one_line
from transmute.files import atomic_path, discover
from transmute.pipeline import Pipeline


# A batch is cut short past this many input elements (about 6 minutes of 22 kHz
# audio), so a folder of long files never needs many times one file's memory.
MAX_BATCH_ELEMENTS = 1 << 23


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


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    interrupted: bool = False

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

    def summary(self) -> str:
        parts = [f"{len(self.written)} written", f"{len(self.skipped)} skipped (already there)",
                 f"{len(self.failed)} failed"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored (not for this pipeline)")
        return ", ".join(parts)


class Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        outdir: Path,
        *,
        overwrite: bool = False,
        device: str | None = None,
        batch_size: int | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ):
        self.pipeline = pipeline
        self.outdir = Path(outdir)
        self.overwrite = overwrite
        self.device = str(resolve_device(device or pipeline.device))
        self.batch_size = batch_size or pipeline.batch_size
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.report = Report()
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
            self._record(Job(raw, raw, Path()), "failed", reason)
        claimed: dict[Path, str] = {}
        for f in files:
            resolved = f.path.resolve()
            output = self.outdir / f.relative.with_suffix(suffix)
            job = Job(str(f.path), f.relative.with_suffix("").as_posix(), output, f.path)
            if output.resolve() == resolved:
                self._record(job, "failed", "the output would overwrite the input; choose another output folder")
            elif output in claimed:
                self._record(job, "failed", f"output {output} is also the output of {claimed[output]}; rename one")
            else:
                claimed[output] = job.label
                jobs.append(job)
        return jobs

    def plan_generated(self, count: int) -> list[Job]:
        suffix = self.pipeline.saver.suffix()
        width = max(4, len(str(count - 1)))
        return [Job(f"sample-{i:0{width}d}", f"sample-{i:0{width}d}",
                    self.outdir / f"sample-{i:0{width}d}{suffix}") for i in range(count)]

    # ---------------------------------------------------------------- running
    def _setup(self) -> None:
        if not self._ready:
            try:
                self.outdir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TransmuteError(f"{self.outdir}: cannot create the output folder ({exc.strerror or exc})") from None
            for stage in self.pipeline.stages:
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

    def run_files(self, jobs: list[Job]) -> Report:
        self._setup()
        loader = self.pipeline.first
        pending: list[tuple[Job, object]] = []
        try:
            for job in jobs:
                if self._exists(job):
                    continue
                try:
                    item = loader.load(job.source)
                    item.names = [job.name]
                    _check_finite(item, "the input contains NaN or infinite values")
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    self._fail(job, exc)
                    continue
                size = sum(p[1].data.numel() for p in pending) + item.data.numel()
                if pending and (len(pending) >= self.batch_size or size > MAX_BATCH_ELEMENTS
                                or pending[0][1].collate_key() != item.collate_key()):
                    self._flush(pending)
                    pending = []
                pending.append((job, item))
            self._flush(pending)
        except KeyboardInterrupt:
            self.report.interrupted = True
        return self.report

    def run_generator(self, jobs: list[Job]) -> Report:
        self._setup()
        generator = self.pipeline.first
        todo = [job for job in jobs if not self._exists(job)]
        try:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                try:
                    import torch

                    with torch.inference_mode():
                        batch = generator.generate(len(chunk), [job.name for job in chunk])
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    for job in chunk:
                        self._fail(job, exc)
                    continue
                self._flush(list(zip(chunk, batch.items())))
        except KeyboardInterrupt:
            self.report.interrupted = True
        return self.report

    def _exists(self, job: Job) -> bool:
        if job.output.exists() and not self.overwrite:
            self._record(job, "skipped")
            return True
        return False

    def _transform(self, batch):
        import torch

        signal = batch.to(self.device)
        with torch.inference_mode():
            for stage in self.pipeline.transforms:
                signal = stage.process(signal)
                _check_finite(signal, f"stage '{stage.label}' ({stage.name}) produced NaN or infinite values")
        return signal.to("cpu")

    def _flush(self, pending: list[tuple[Job, object]]) -> None:
        if not pending:
            return
        try:
            batch = type(pending[0][1]).collate([item for _, item in pending])
            results = self._transform(batch).items()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if len(pending) > 1:  # find the item that fails; the others go on
                for entry in pending:
                    self._flush([entry])
            else:
                self._fail(pending[0][0], exc)
            return
        saver = self.pipeline.saver
        for (job, _), item in zip(pending, results):
            try:
                with atomic_path(job.output) as tmp:
                    saver.save(item, tmp)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                self._fail(job, exc)
                continue
            self._record(job, "written")

    # ---------------------------------------------------------------- reporting
    def _fail(self, job: Job, exc: BaseException) -> None:
        if os.environ.get("TRANSMUTE_DEBUG") and not isinstance(exc, TransmuteError):
            traceback.print_exception(exc)
        self._record(job, "failed", one_line(exc))

    def _record(self, job: Job, status: str, reason: str = "") -> None:
        outcome = Outcome(job, status, reason)
        self.report.outcomes.append(outcome)
        self.on_outcome(outcome)


def _check_finite(signal, message: str) -> None:
    import torch

    data = signal.data
    if data.is_floating_point() and not bool(torch.isfinite(data).all()):
        raise InputError(message)
