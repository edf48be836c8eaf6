"""`transmute eval vocoder`: how close vocoded speech is to the recording its mels came from.

For every file of every --data folder (one voice per folder), the log-mel is
computed with the vocoder's own feature spec and turned back into a waveform
three ways:
- the vocoder;
- Griffin-Lim (NNLS mel inversion, then 32 iterations of fast Griffin-Lim with
  momentum 0.99: the resynthesize pipeline's defaults);
- the true-phase ceiling: the same mel-inverted magnitude with the recording's
  own STFT phase (what a perfect phase estimate from these mels would give).
Each is compared with the recording:
- PESQ-WB (ITU-T P.862.2, the `pesq` package) at 16 kHz;
- STOI (`pystoi`) at 16 kHz;
- log-spectral distance (dB) of 512-point STFT power at 16 kHz, frames more than
  60 dB under the utterance's loudest dropped;
- multi-resolution STFT distance (spectral convergence + log-magnitude L1 at
  Parallel WaveGAN's three resolutions, the training loss) at the model's rate.
Higher is better for PESQ and STOI, lower for LSD and MR-STFT.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from transmute.metrics import quality
from transmute_vocoder import DEFAULT_MODEL

METRICS = ("pesq", "stoi", "lsd", "mrstft")
METHODS = ("vocoder", "griffinlim", "true-phase")
HIGHER_IS_BETTER = {"pesq": True, "stoi": True, "lsd": False, "mrstft": False}


def resyntheses(net, spec, audio, name: str, gl_iters: int = 32):
    """{method: audio} for one recording (numpy, the vocoder's rate)."""
    import torch

    from transmute import dsp
    from transmute_vocoder.stages import synthesize

    x = torch.from_numpy(audio).unsqueeze(0)
    with torch.inference_mode():
        stft, frames = dsp.stft(x, spec)
        mel = dsp.magnitudes_to_features(stft.abs(), spec)
        out = {"vocoder": synthesize(net, mel, spec, frames, [x.shape[1]])[0]}
        magnitude = dsp.linear_magnitude(mel, spec)  # the NNLS inversion both Griffin-Lim and the ceiling start from
        out["griffinlim"] = dsp.griffin_lim(magnitude, spec, sample_lengths=[x.shape[1]], n_iter=gl_iters,
                                            momentum=0.99, names=[name])[0]
        out["true-phase"] = dsp.istft(torch.polar(magnitude, stft.angle()), spec, [x.shape[1]])[0]
    return {k: v.numpy() for k, v in out.items()}


def evaluate(model: str, folders: list[Path], limit: int = 0, gl_iters: int = 32, progress=None) -> dict:
    """{'voices': {folder name: {method: {metric: mean}}}, 'files': per-file rows, 'model': ...}."""
    import numpy as np

    from transmute.audio import is_audio_file, read_audio
    from transmute.errors import TransmuteError
    from transmute.files import discover
    from transmute_vocoder.stages import load_vocoder

    net, spec, ckpt = load_vocoder(model)
    rows, voices = [], {}
    for folder in folders:
        files, _, problems = discover([str(folder)], is_audio_file)
        for path, reason in problems:
            click.echo(f"skipped {path}: {reason}", err=True)
        files = files[:limit] if limit else files
        if not files:
            raise TransmuteError(f"{folder}: no audio files found")
        scores = {m: {k: [] for k in METRICS} for m in METHODS}
        for f in files:
            try:
                audio, _ = read_audio(f.path, spec.sample_rate)
            except TransmuteError as exc:
                click.echo(f"skipped {exc}", err=True)
                continue
            audio = audio[:, 0]
            for method, output in resyntheses(net, spec, audio, f.relative.as_posix(), gl_iters).items():
                figures = quality(audio, output, spec.sample_rate)
                rows.append({"voice": Path(folder).name, "file": f.relative.as_posix(), "method": method, **figures})
                for k, v in figures.items():
                    scores[method][k].append(v)
            if progress:
                progress()
        voices[Path(folder).name] = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in scores.items()}
    return {"model": str(ckpt.path), "griffinlim_iters": gl_iters, "voices": voices, "files": rows}


def table(result: dict) -> str:
    lines = [f"{'voice':<10} {'method':<11} " + " ".join(f"{m:>8}" for m in ("PESQ-WB", "STOI", "LSD dB", "MR-STFT"))]
    for voice, methods in result["voices"].items():
        for method, figures in methods.items():
            lines.append(f"{voice:<10} {method:<11} " + " ".join(
                f"{figures[k]:8.3f}" for k in METRICS))
        wins = [k for k in METRICS if (methods["vocoder"][k] > methods["griffinlim"][k]) == HIGHER_IS_BETTER[k]]
        lines.append(f"{'':<10} vocoder beats Griffin-Lim on {len(wins)} of {len(METRICS)} figures"
                     + (f" ({', '.join(wins)})" if 0 < len(wins) < len(METRICS) else ""))
    return "\n".join(lines)


@click.command("vocoder")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="A vocoder checkpoint (RUN/model.safetensors) or a built-in model name.")
@click.option("--data", "folders", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of held-out recordings of one voice; repeat for several voices.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many files per folder (0: all).")
@click.option("--griffinlim-iters", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure, per file, to this JSON file.")
def eval_vocoder_command(model, folders, limit, griffinlim_iters, json_path):
    """Score a vocoder against Griffin-Lim and the true-phase ceiling on held-out speech.

    Prints PESQ-WB, STOI, log-spectral distance and multi-resolution STFT
    distance for each voice (each --data folder): the vocoder, Griffin-Lim from
    the same mels, and the mels' magnitudes with the recording's own phase.
    """
    from transmute.files import atomic_path

    result = evaluate(model, list(folders), limit, griffinlim_iters)
    click.echo(table(result))
    if json_path:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        click.echo(f"per-file figures: {json_path}")
    if any(math.isnan(v) for methods in result["voices"].values() for f in methods.values() for v in f.values()):
        click.echo("note: some figures are NaN (a silent file?)", err=True)
