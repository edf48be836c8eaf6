"""`transmute eval vqvae`: what a VQ-VAE's codes keep, on held-out data.

Images: reconstruction PSNR (dB, pixels scaled to [0, 1]) per image and its
mean; over the whole set, the share of the codebook used and the perplexity
(exp of the entropy of the code histogram; the codebook size if every code
were used equally).

Speech: the bit rate of the codes (log2(codebook_size) bits per code, codes
per second = groups x frames per second / downsample), the same codebook
figures, and PESQ-WB / STOI / LSD / MR-STFT of the codec round trip (log-mel
-> codes -> log-mel -> vocoder) beside the vocoder's own resynthesis of the
same mels, both against the recording: the difference is what the codes lose.
Both run through the engine's pipeline runner (vqvae-codec and
resynthesize-vocoder), so the figures are those of the shipped pipelines.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import click

from transmute_vqvae import IMAGE_MODEL

VOCODER = "festival-vocos"
SPEECH_METRICS = ("pesq", "stoi", "lsd", "mrstft")
BATCH = 64


def codebook_figures(counts: list, size: int) -> dict:
    """Per level (bottom first) and for the bottom level at the top: the share of the codebook used at least once
    ('codes_in_use') and exp(entropy) of the code histogram ('perplexity')."""
    import numpy as np

    levels = []
    for level_counts in counts:
        level_counts = np.asarray(level_counts, dtype=np.float64)
        p = level_counts / max(level_counts.sum(), 1.0)
        nonzero = p[p > 0]
        levels.append({"codes_in_use": float((level_counts > 0).sum() / size),
                       "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum()))})
    return {**levels[0], "levels": levels}


def count_codes(net, codes, counts: list) -> None:
    """Add the codes of a (batch, rows, w) grid to each level's histogram (the top level's padding left out)."""
    import numpy as np

    for level, (positions, _) in enumerate(net.split_levels(codes)):
        counts[level] += np.bincount(positions.reshape(-1).numpy(), minlength=len(counts[level]))


def evaluate_images(model: str, folders: list[Path], limit: int = 0) -> dict:
    import numpy as np
    import torch

    from transmute.metrics import psnr
    from transmute_vqvae.networks import decode, encode
    from transmute_vqvae.stages import load_model
    from transmute.imagedata import read_image_set, spread

    from transmute_vqvae.networks import pad_to_multiple

    net, codebooks, ckpt = load_model(model)
    h = ckpt.hparams
    channels, size, k = int(h["channels"]), int(h["size"]), int(h["codebook_size"])
    data, _ = read_image_set(folders, channels, size)
    chosen = spread(len(data), limit) if limit else list(range(len(data)))  # spread over the classes' folders
    counts = [np.zeros(k) for _ in codebooks]
    rows = []
    for start in range(0, len(chosen), BATCH):
        chunk = chosen[start : start + BATCH]
        x = data.tensor(chunk)
        with torch.inference_mode():
            codes = encode(net, codebooks, pad_to_multiple(x, net.multiple, 2))
            y = decode(net, codebooks, codes)[..., :size, :size].clamp(-1, 1)
        count_codes(net, codes, counts)
        grid = codes.shape[-2:] if net.levels == 1 else net.split_levels(codes)[0][0].shape[-2:]
        baseline = grid_baseline(x, tuple(grid))
        for i, a, b, c in zip(chunk, x, y, baseline):
            rows.append({"file": data.names[i], "psnr": psnr(((b + 1) / 2).numpy(), ((a + 1) / 2).numpy()),
                         "baseline_psnr": psnr(((c + 1) / 2).numpy(), ((a + 1) / 2).numpy())})
    code_bits = math.log2(k) * int(h["groups"]) * int(np.prod(grid)) * (1.25 if net.levels == 2 else 1)
    return {"model": str(ckpt.path), "kind": "images", "images": len(rows),
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "baseline_psnr": float(np.mean([r["baseline_psnr"] for r in rows])),
            "bits_per_image": code_bits, "baseline_bits_per_image": 8 * channels * int(np.prod(grid)),
            "grid": list(map(int, grid)), **codebook_figures(counts, k), "codebook_size": k, "files": rows}


def grid_baseline(x, grid: tuple[int, int]):
    """The baseline a code grid must beat: each image averaged down to the grid's size at 8 bits a value
    (about the codes' bit budget: 7 x 7 x 8 = 392 bits for a digit, against 7 x 7 x 9 = 441 for its codes)
    and scaled back up (bicubic)."""
    import torch.nn.functional as F

    small = F.adaptive_avg_pool2d(x, grid)
    small = ((small + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)


def bits_per_second(hparams: dict, spec) -> float:
    """log2(codebook_size) bits per code, groups codes per position; each extra level has half the positions."""
    positions = spec.sample_rate / spec.hop_length / int(hparams["downsample"])
    per_level = [positions / 2 ** level for level in range(int(hparams.get("levels", 1)))]
    return math.log2(int(hparams["codebook_size"])) * int(hparams["groups"]) * sum(per_level)


def evaluate_speech(model: str, folders: list[Path], limit: int = 0, vocoder: str = VOCODER) -> dict:
    import numpy as np

    import transmute
    from transmute.audio import is_audio_file, read_audio
    from transmute.errors import TransmuteError
    from transmute.files import discover
    from transmute.metrics import quality
    from transmute_vqvae.codefile import read_codes
    from transmute_vqvae.stages import load_model

    net, codebooks, ckpt = load_model(model)
    spec, h, k = ckpt.spec(), ckpt.hparams, int(ckpt.hparams["codebook_size"])
    inputs = []  # (folder index, file): folders may hold files of the same name (kal/eval-0000.wav, slt/...)
    for index, folder in enumerate(folders):
        files, _, problems = discover([str(folder)], is_audio_file)
        for path, reason in problems:
            click.echo(f"skipped {path}: {reason}", err=True)
        if not files:
            raise TransmuteError(f"{folder}: no audio files found")
        inputs += [(index, f.path) for f in (files[:limit] if limit else files)]
    counts = [np.zeros(k) for _ in codebooks]
    pipelines = {"codes": ("vqvae-encode-speech", [f"mel.spec_from={model}", f"encode.model={model}"]),
                 "codec": ("vqvae-codec", [f"mel.spec_from={model}", f"encode.model={model}",
                                           f"decode.model={model}", f"vocoder.model={vocoder}"]),
                 "vocoder": ("resynthesize-vocoder", [f"mel.spec_from={vocoder}", f"vocoder.model={vocoder}"]),
                 # The same two round trips voiced by mel inversion and Griffin-Lim, which the built-in
                 # vocoder does not beat yet: what the codes lose, measured with the better inverter too.
                 "codec_griffinlim": (griffinlim_round_trip(model, codes=True), []),
                 "griffinlim": (griffinlim_round_trip(model, codes=False), [])}
    outputs = {name: {} for name in pipelines}
    rows, scores = [], {m: {key: [] for key in SPEECH_METRICS} for m in pipelines if m != "codes"}
    with tempfile.TemporaryDirectory() as work:
        for index in range(len(folders)):
            files = [path for i, path in inputs if i == index]
            for name, (pipeline, overrides) in pipelines.items():
                report = transmute.run(pipeline, files, Path(work) / str(index) / name, overrides=overrides)
                _raise_failed(report)
                outputs[name].update({str(o.job.source): o.job.output for o in report.outcomes})
        for _, path in inputs:
            codes, _ = read_codes(outputs["codes"][str(path)])  # the codebook figures, from the shipped stage
            count_codes(net, codes[None], counts)
            reference, _ = read_audio(path, spec.sample_rate)
            for method in scores:
                degraded, _ = read_audio(outputs[method][str(path)], spec.sample_rate)
                figures = quality(reference[:, 0], degraded[:, 0], spec.sample_rate)
                rows.append({"file": str(path), "method": method, **figures})
                for key, value in figures.items():
                    scores[method][key].append(value)
    return {"model": str(model), "kind": "speech", "files": rows, "recordings": len(inputs),
            "bits_per_second": bits_per_second(h, spec), "codebook_size": k, **codebook_figures(counts, k),
            "methods": {m: {key: float(np.mean(v)) for key, v in s.items()} for m, s in scores.items()}}


def griffinlim_round_trip(model: str, codes: bool):
    """The vqvae-codec pipeline with `model`, voiced by mel inversion and Griffin-Lim instead of the vocoder;
    without the codes (encode, decode) when codes is False: the same features straight to Griffin-Lim."""
    from transmute.pipeline import build_from_dict, read_pipeline

    doc, source = read_pipeline("vqvae-codec")
    named = {stage.get("name"): stage for stage in doc["stage"]}
    named["mel"]["spec_from"] = named["encode"]["model"] = named["decode"]["model"] = str(model)
    voiced = []
    for stage in doc["stage"]:
        if stage is named["vocoder"]:
            voiced += [{"use": "audio.mel_to_linear", "name": "invert"},
                       {"use": "audio.griffinlim", "name": "griffinlim", "n_iter": 32, "momentum": 0.99}]
        elif codes or stage.get("name") not in ("encode", "decode"):
            voiced.append(stage)
    doc["stage"] = voiced
    return build_from_dict(doc, source=str(source), name=f"vqvae-codec ({'codes, ' if codes else ''}Griffin-Lim)")


def _raise_failed(report) -> None:
    from transmute.errors import TransmuteError

    if report.failed:
        first = report.failed[0]
        raise TransmuteError(f"{first.job.label}: {first.reason}")


def table(result: dict) -> str:
    lines = [f"model {result['model']}"]
    usage = "; ".join(f"{name}codes in use {100 * level['codes_in_use']:.1f}% of {result['codebook_size']}, "
                      f"perplexity {level['perplexity']:.1f}"
                      for name, level in zip(("", "top level: "), result["levels"]))
    if result["kind"] == "images":
        lines += [f"{result['images']} images: reconstruction PSNR {result['psnr']:.2f} dB from "
                  f"{result['bits_per_image']:.0f} bits of codes; baseline (averaged to the {result['grid'][0]} x "
                  f"{result['grid'][1]} grid at 8 bits, {result['baseline_bits_per_image']} bits, bicubic back) "
                  f"{result['baseline_psnr']:.2f} dB", usage]
        return "\n".join(lines)
    lines += [f"{result['recordings']} recordings: {result['bits_per_second']:.0f} bits/s of codes; {usage}",
              f"{'through':<22} " + " ".join(f"{m:>8}" for m in ("PESQ-WB", "STOI", "LSD dB", "MR-STFT"))]
    names = {"codec": "codes + vocoder", "vocoder": "vocoder alone", "codec_griffinlim": "codes + Griffin-Lim",
             "griffinlim": "Griffin-Lim alone"}
    for method, figures in result["methods"].items():
        lines.append(f"{names[method]:<22} " + " ".join(f"{figures[k]:8.3f}" for k in SPEECH_METRICS))
    return "\n".join(lines)


@click.command("vqvae")
@click.option("--model", default=IMAGE_MODEL, show_default=True,
              help="A VQ-VAE checkpoint (RUN/model.safetensors) or a built-in model name.")
@click.option("--data", "folders", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of held-out images (PNG) or recordings, as the model was trained on; repeatable.")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many files (per folder for speech; 0: all).")
@click.option("--vocoder", default=VOCODER, show_default=True, help="Speech: the vocoder of both round trips.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure, per file, to this JSON file.")
def eval_command(model, folders, limit, vocoder, json_path):
    """Score a VQ-VAE on held-out images (PSNR, codebook use) or speech (bit rate, PESQ-WB/STOI/LSD).

    For speech the codec round trip (codes + vocoder) is shown beside the
    vocoder alone on the same files, so what the codes lose is visible.
    """
    from transmute.files import atomic_path
    from transmute_vqvae.stages import model_meta

    kind = model_meta(model)["hparams"].get("kind")
    if kind == "images":
        result = evaluate_images(model, list(folders), limit)
    else:
        result = evaluate_speech(model, list(folders), limit, vocoder)
    click.echo(table(result))
    if json_path:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        click.echo(f"per-file figures: {json_path}")
