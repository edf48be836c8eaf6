"""The engine's training loop, with a toy task: exact resume, interruption, refusals, DDP."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from transmute.checkpoint import Checkpoint, load_checkpoint
from transmute.errors import TransmuteError
from transmute.training import Task, TrainConfig, TrainingData, train


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
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSMUTE_")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
         str(script)], capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    done = [(tmp_path / f"rank-{rank}").read_text().split() for rank in (0, 1)]
    assert all(d[0] == "DistributedDataParallel" for d in done)
    assert done[0][1] == done[1][1], "gradients are averaged, so both ranks hold the same weights"
    assert (tmp_path / "run" / "model.safetensors").is_file()
