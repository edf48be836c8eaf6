"""The engine's training loop, with a toy task: exact resume, interruption, refusals, DDP."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from transmute.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from transmute.errors import CheckpointError, TransmuteError
from transmute.training import StepSampler, Task, TrainConfig, TrainingData, read_sample_weights, train


class Points(TrainingData):
    """64 points on y = 3x - 1; each draw adds noise from the generator it is handed."""

    def items(self):
        return [f"p{i}" for i in range(64)]

    def load(self, index, rng):
        x = (index - 32) / 16
        return torch.tensor([x], dtype=torch.float32), torch.tensor([3 * x - 1 + 0.1 * rng.normal()],
                                                                    dtype=torch.float32)


class Regression(Task):
    """Fit y = 3x - 1 with noisy batches that the loop draws."""

    plugin, model, version = "toy", "line", "1.0"

    def __init__(self, fail_at=None):
        self.fail_at = fail_at

    def setup(self, ctx):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(1, 1)
        self.wrapped = ctx.wrap(self.net)
        self.opt = {"sgd": torch.optim.Adam(self.net.parameters(), lr=0.05)}
        self.sched = {"sgd": torch.optim.lr_scheduler.LambdaLR(self.opt["sgd"], lambda s: 1 / (1 + 0.001 * s))}

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return self.opt

    def schedulers(self):
        return self.sched

    def data(self):
        return Points()

    def train_step(self, batch, step, ctx):
        if step == self.fail_at:
            raise KeyboardInterrupt
        x, y = batch
        self.opt["sgd"].zero_grad()
        noise = torch.randn(1) * 1e-3  # global RNG use, restored on resume too
        loss = ((self.wrapped(x) + noise - y) ** 2).mean()
        loss.backward()
        self.opt["sgd"].step()
        return {"loss": loss.detach()}

    def export(self):
        return Checkpoint(tensors=dict(self.net.state_dict()), plugin="toy", model="line", version="1.0")


def config(out, steps, **kw):
    return TrainConfig(out=out, steps=steps, checkpoint_every=kw.pop("checkpoint_every", 5), sample_every=0,
                       log_every=kw.pop("log_every", 1), progress=False, batch_size=kw.pop("batch_size", 8), **kw)


def weights(path):
    return load_checkpoint(path, plugin="toy", model="line").tensors


def test_it_learns_and_writes_model_state_and_log(tmp_path):
    model = train(Regression(), config(tmp_path / "run", 200, checkpoint_every=50))
    w = weights(model)
    assert abs(float(w["weight"]) - 3) < 0.1 and abs(float(w["bias"]) + 1) < 0.1
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 200 and log[-1]["loss"] < log[0]["loss"]


def test_resume_gives_exactly_the_uninterrupted_result(tmp_path):
    straight = weights(train(Regression(), config(tmp_path / "a", 30)))
    with pytest.raises(TransmuteError, match=r"interrupted at step 17; the last checkpoint \(step 15\) is in .*last"):
        train(Regression(fail_at=17), config(tmp_path / "b", 30))
    resumed = weights(train(Regression(), config(tmp_path / "b", 30, resume=True)))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # 16 and 17 were done again after the resume; their old lines dropped


def test_an_existing_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    train(Regression(), config(tmp_path / "run", 5))
    with pytest.raises(TransmuteError, match=r"already holds a training run; add --resume"):
        train(Regression(), config(tmp_path / "run", 5))
    with pytest.raises(TransmuteError, match=r"nothing to resume"):
        train(Regression(), config(tmp_path / "other", 5, resume=True))


def test_resume_refuses_other_settings(tmp_path):
    class Wider(Regression):
        def hparams(self):
            return {"width": 2}

    train(Regression(), config(tmp_path / "run", 5))
    with pytest.raises(TransmuteError, match=r"trained with other settings \(width: None then, 2 now\)"):
        train(Wider(), config(tmp_path / "run", 10, resume=True))


def test_bf16_is_refused_on_cpu(tmp_path):
    with pytest.raises(TransmuteError, match=r"bf16 needs a GPU"):
        train(Regression(), config(tmp_path / "run", 5, device="cpu", precision="bf16"))


def test_two_processes_with_torchrun_and_gloo(tmp_path):
    script = tmp_path / "ddp_toy.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        import torch.distributed as dist
        from test_training import Regression, config
        from transmute.training import train

        import os
        task = Regression()
        train(task, config(Path({str(tmp_path / "run")!r}), 20))
        # One file per rank: two ranks printing to one stdout interleave their lines.
        Path({str(tmp_path)!r}, "rank-" + os.environ["RANK"]).write_text(
            f"{{task.wrapped.__class__.__name__}} {{float(task.net.weight.detach())}}")
        # Leave as a program should: the DDP wrapper first, then the group. A gloo group left to
        # interpreter shutdown can abort a rank ("terminate called without an active exception").
        del task
        import gc
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSMUTE_")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        # --standalone: a rendezvous on a free local port, so two suites at once do not collide.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script)], capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    done = [(tmp_path / f"rank-{rank}").read_text().split() for rank in (0, 1)]
    assert all(d[0] == "DistributedDataParallel" for d in done)
    assert done[0][1] == done[1][1], "gradients are averaged, so both ranks hold the same weights"
    assert (tmp_path / "run" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- the contract


def test_a_task_that_lacks_a_method_cannot_be_made():
    class Forgetful(Task):
        def setup(self, ctx):
            pass

        def modules(self):
            return {}

        def optimizers(self):
            return {}

    with pytest.raises(TypeError, match=r"abstract class Forgetful .*data.*export.*train_step"):
        Forgetful()


def test_workers_draw_the_same_batches_as_the_main_process(tmp_path):
    inline = weights(train(Regression(), config(tmp_path / "a", 12)))
    with pytest.raises(TransmuteError, match=r"interrupted at step 7"):
        train(Regression(fail_at=7), config(tmp_path / "b", 12, workers=2))
    resumed = weights(train(Regression(), config(tmp_path / "b", 12, workers=2, resume=True)))
    assert all(torch.equal(inline[k], resumed[k]) for k in inline)


def test_ranks_take_slices_of_one_global_batch():
    domains = {None: [f"p{i}" for i in range(50)]}
    whole = list(StepSampler(domains, batch_size=4, seed=3, start=5, stop=8))
    ranks = [list(StepSampler(domains, batch_size=2, seed=3, start=5, stop=8, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == whole
    assert whole[1] == list(StepSampler(domains, batch_size=4, seed=3, start=6, stop=7))[0]  # resume at step 6
    assert len({index for batch in whole for index, _ in batch}) > 4
    assert list(StepSampler(domains, batch_size=4, seed=-1, start=0, stop=1)) != whole[:1]  # any --seed works


def test_sample_weights_choose_what_is_drawn_and_bad_files_are_one_line(tmp_path):
    domains = {"a": ["a/x.wav", "a/y.wav", "a/z.wav"], "b": ["b/x.wav", "b/w.wav"]}
    good = tmp_path / "weights.csv"
    good.write_text("name,weight\na/x.wav,0\na/y.wav,3\n\"b/w.wav\",0\n")
    weights_ = read_sample_weights(good, domains)
    drawn = [item for batch in StepSampler(domains, 8, 0, 0, 20, weights=weights_) for item, _ in batch]
    assert {d["a"] for d in drawn} == {1, 2} and {d["b"] for d in drawn} == {0}
    assert sum(d["a"] == 1 for d in drawn) > 2 * sum(d["a"] == 2 for d in drawn)  # y weighs 3, z 1
    for text, message in (("a/x.wav,1\na/nope.wav,2\n", r"weights.csv, line 2: no training item is named "
                                                        r"'a/nope.wav' \(names look like 'a/x.wav'\)"),
                          ("a/x.wav,-1\n", r"line 1: weight of 'a/x.wav' must be a number >= 0, got '-1'"),
                          ("a/x.wav,1\na/y.wav,heavy\n", r"line 2: weight of 'a/y.wav' must be a number >= 0"),
                          ("a/x.wav,1,2\n", r"line 1: expected 'name,weight'"),
                          ("b/x.wav,0\nb/w.wav,0\n", r"weights.csv: every item of b has weight 0")):
        good.write_text(text)
        with pytest.raises(TransmuteError, match=message):
            read_sample_weights(good, domains)
    with pytest.raises(TransmuteError, match=r"missing.csv: cannot read the sample weights"):
        read_sample_weights(tmp_path / "missing.csv", domains)


def test_the_loop_uses_sample_weights(tmp_path):
    class Recorder(Regression):
        def train_step(self, batch, step, ctx):
            self.seen.extend(batch[0].flatten().tolist())
            return super().train_step(batch, step, ctx)

    (tmp_path / "w.csv").write_text("".join(f"p{i},{int(i == 40)}\n" for i in range(64)))
    task = Recorder()
    task.seen = []
    train(task, config(tmp_path / "run", 3, sample_weights=tmp_path / "w.csv"))
    assert set(task.seen) == {(40 - 32) / 16}


def test_an_item_that_cannot_be_read_is_one_line(tmp_path):
    class Broken(Points):
        def load(self, index, rng):
            raise TransmuteError(f"p{index}.png: not an image")

    class Failing(Regression):
        def data(self):
            return Broken()

    for workers in (0, 1):
        with pytest.raises(TransmuteError, match=r"^p\d+\.png: not an image$"):
            train(Failing(), config(tmp_path / f"run{workers}", 3, workers=workers))


def test_a_longer_run_follows_its_schedule_from_the_resumed_step(tmp_path):
    class Decaying(Regression):
        def __init__(self, steps):
            super().__init__()
            self.steps = steps

        def setup(self, ctx):
            super().setup(ctx)
            total = self.steps
            self.sched = {"sgd": torch.optim.lr_scheduler.LambdaLR(self.opt["sgd"], lambda s: 1 - s / total)}

    train(Decaying(10), config(tmp_path / "run", 10))
    train(Decaying(20), config(tmp_path / "run", 20, resume=True))
    log = {line["step"]: line for line in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())}
    assert log[10]["lr/sgd"] == pytest.approx(0.05 * (1 - 9 / 10))  # the step that index 9 ran at
    assert log[11]["lr/sgd"] == pytest.approx(0.05 * (1 - 10 / 20))  # the longer schedule from there on
    assert log[20]["lr/sgd"] == pytest.approx(0.05 * (1 - 19 / 20))


def test_losses_are_read_at_log_steps_and_divergence_stops_before_a_checkpoint(tmp_path):
    class Diverging(Regression):
        def train_step(self, batch, step, ctx):
            losses = super().train_step(batch, step, ctx)
            return {"loss": losses["loss"] * (float("nan") if step == 6 else 1)}

    with pytest.raises(TransmuteError, match=r"training diverged between steps 5 and 8 \(mean losses \{'loss': nan\}"):
        train(Diverging(), config(tmp_path / "run", 20, log_every=4, checkpoint_every=4))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert state.extra["step"] == 4  # no checkpoint of step 8: it would hold NaN weights
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [4]


def test_profile_reports_where_the_time_went(tmp_path):
    profile = {}
    train(Regression(), config(tmp_path / "run", 6), profile=profile)
    assert profile["steps"] == 6
    assert {"start", "data", "step", "schedule", "log", "checkpoint"} <= set(profile)
    assert all(v >= 0 for v in profile.values())


# --------------------------------------------------------------------------- faults


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    real = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # step 5: state, model; step 10: state -> the disk is full
            Path(filename).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(TransmuteError) as caught:
        train(Regression(), config(run, 15))
    message = str(caught.value)
    assert message == (f"{run / 'checkpoints' / 'last.safetensors'}: cannot write the checkpoint of step 10 (no "
                       "space left on device); the checkpoint of step 5 is intact; free space or fix the folder, then "
                       "add --resume")
    assert load_checkpoint(run / "checkpoints" / "last.safetensors").extra["step"] == 5
    assert not list(run.rglob("*.part"))
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    resumed = weights(train(Regression(), config(run, 15, resume=True)))
    straight = weights(train(Regression(), config(tmp_path / "straight", 15)))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_an_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(TransmuteError, match=r"file/run: cannot write to the run folder \(not a directory\); "
                                             r"choose another --out$"):
        train(Regression(), config(tmp_path / "file" / "run", 5))


def test_stale_temporaries_are_removed_when_the_next_run_starts(tmp_path):
    run = tmp_path / "run"
    train(Regression(), config(run, 5))
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = [run / "checkpoints" / f".last.safetensors.{dead}.part", run / f".model.safetensors.{dead}.part"]
    live = run / "checkpoints" / f".last.safetensors.{os.getppid()}.part"  # a writer that is still running
    for path in stale + [live]:
        path.write_bytes(b"\0" * 1000)
    train(Regression(), config(run, 10, resume=True))
    assert not any(p.exists() for p in stale) and live.exists()


def test_a_fresh_start_after_a_kill_before_the_first_checkpoint_starts_a_fresh_log(tmp_path):
    # Not "add --resume": with no checkpoint, --resume only answers "nothing to resume".
    with pytest.raises(TransmuteError, match=r"step 3; no checkpoint was written yet \(run the same command again"):
        train(Regression(fail_at=3), config(tmp_path / "run", 10))
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 3
    train(Regression(), config(tmp_path / "run", 10))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_like_ctrl_c(tmp_path, workers):
    import signal

    class Terminated(Regression):
        def train_step(self, batch, step, ctx):
            if step == 7:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().train_step(batch, step, ctx)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TransmuteError, match=r"^terminated \(SIGTERM\) at step 7; the last checkpoint \(step 5\) "
                                             r"is in .*last.safetensors \(add --resume to continue\)$") as caught:
        train(Terminated(), config(tmp_path / "run", 20, workers=workers))
    assert caught.value.exit_code == 143  # the CLI exits as `transmute run` does when stopped
    assert signal.getsignal(signal.SIGTERM) == before
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").extra["step"] == 5


def test_a_killed_data_worker_is_one_line(tmp_path):
    import signal

    class Doomed(Points):
        def load(self, index, rng):
            if torch.utils.data.get_worker_info() is not None and index == 0:
                os.kill(os.getpid(), signal.SIGKILL)  # the out-of-memory killer, say
            return super().load(index, rng)

    class Failing(Regression):
        def data(self):
            return Doomed()

    # The reason depends on when it dies: the DataLoader's report ('DataLoader worker (pid N) is killed by
    # signal: Killed', '... exited unexpectedly') or the broken hand-over of a batch (a reset connection, EOF).
    with pytest.raises(TransmuteError, match=r"^a data worker died \(.+\) at step \d+; .*\(add --resume to "
                                             r"continue\)$"):
        train(Failing(), config(tmp_path / "run", 200, workers=1))


def test_a_checkpoint_of_another_shape_or_lacking_fields_is_one_line(tmp_path):
    class Wider(Regression):
        def setup(self, ctx):
            super().setup(ctx)
            self.net = torch.nn.Linear(1, 2)
            self.opt = {"sgd": torch.optim.Adam(self.net.parameters(), lr=0.05)}
            self.sched = {}

    run = tmp_path / "run"
    train(Regression(), config(run, 5))
    state = run / "checkpoints" / "last.safetensors"
    with pytest.raises(CheckpointError, match=r"last.safetensors: tensor 'model/net/weight' has shape \[1, 1\], the "
                                              r"model expects \[2, 1\] \(and 1 more\); the checkpoint was made for "
                                              r"other model settings$"):
        train(Wider(), config(run, 10, resume=True))
    ckpt = load_checkpoint(state)
    del ckpt.tensors["model/net/bias"]
    ckpt.extra["optimizers"].pop("sgd")
    save_checkpoint(state, ckpt)
    with pytest.raises(CheckpointError, match=r"tensor 'model/net/bias' is missing; the checkpoint was made for "
                                              r"another model or is damaged"):
        train(Regression(), config(run, 10, resume=True))
    ckpt.tensors["model/net/bias"] = torch.zeros(1)
    save_checkpoint(state, ckpt)
    with pytest.raises(CheckpointError, match=r"metadata field 'extra.optimizers.sgd' is missing"):
        train(Regression(), config(run, 10, resume=True))


def test_a_state_saved_before_schedulers_were_resumes_on_its_schedule(tmp_path):
    straight = weights(train(Regression(), config(tmp_path / "a", 10)))
    train(Regression(), config(tmp_path / "b", 5))
    state = tmp_path / "b" / "checkpoints" / "last.safetensors"
    ckpt = load_checkpoint(state)
    ckpt.extra.pop("schedulers")
    save_checkpoint(state, ckpt)
    resumed = weights(train(Regression(), config(tmp_path / "b", 10, resume=True)))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
