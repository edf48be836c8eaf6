"""Seams shared by every family: a run reads each checkpoint header once."""

from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from transmute.cli import cli


def test_a_voice_conversion_run_reads_the_model_header_once(tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch  # noqa: F401 - bound to the real safe_open before the patch: tensor loads are not header reads

    from transmute import checkpoint

    monkeypatch.setattr(checkpoint, "_headers", {})  # what earlier tests read does not count
    reads = Counter()
    real_open = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open",
                        lambda path, **kw: reads.update([str(Path(path).resolve())]) or real_open(path, **kw))
    sf.write(tmp_path / "a.wav", 0.1 * np.sin(np.arange(4000) / 10), 16000)
    result = CliRunner().invoke(cli, ["convert-voice", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"),
                                      "--griffinlim-iters", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.wav").is_file()
    assert list(reads.values()) == [1] and next(iter(reads)).endswith("kal-slt.safetensors"), reads
