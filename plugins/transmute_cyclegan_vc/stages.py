"""The conversion stage: one speaker's log-mel spectrogram -> the other's."""

from __future__ import annotations

import math

from transmute.signals import FeatureSpec, Normalization, Spectrogram
from transmute.stages import Param, Stage

from transmute_cyclegan_vc import DEFAULT_MODEL

PLUGIN, MODEL, VERSION = "cyclegan_vc", "converter", "1.0"
# Where a quiet recording's bands sank under the log floor, their level is unknown but below it: raised
# with the rest, they are placed this far (10 dB) under the raised floor, which measured closest to
# what the same recording at full level converts to (1.2 dB mean difference at -40 dBFS, 2.1 dB at 0 dB).
FLOOR_DROP = 10 / 20 * math.log(10)


def load_converter(ref: str, direction: str, device="cpu"):
    """(generator in eval mode, source Normalization, target Normalization, checkpoint) for one direction.

    The normalisations are the speakers' training statistics; apply them with
    dsp.normalize / dsp.denormalize. A checkpoint that lacks a field or a tensor,
    or whose tensors have other shapes, is refused in one line naming the file
    and what is wrong.
    """
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute.errors import CheckpointError
    from transmute_cyclegan_vc.networks import Generator

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    spec = ckpt.spec()
    if not isinstance(spec, FeatureSpec):
        raise CheckpointError(f"{ckpt.path}: metadata field 'feature_spec' must describe a spectrogram, "
                              f"got {type(spec).__name__ if spec else 'none'}")
    sizes = [ckpt.need("hparams", key) for key in ("gen_channels", "res_channels", "res_blocks")]
    net = Generator(spec.n_mels, *sizes)
    load_weights(net, ckpt.tensors, ckpt.path, prefix=f"{direction}/", dtype=torch.float32)
    net.eval().to(device)
    source, target = ("a", "b") if direction == "a2b" else ("b", "a")

    def stats(key):
        mean, std = (ckpt.need("extra", "stats", key, part) for part in ("mean", "std"))
        if len(mean) != spec.n_mels or len(std) != spec.n_mels:
            raise CheckpointError(f"{ckpt.path}: metadata field 'extra.stats.{key}' has {len(mean)} means and "
                                  f"{len(std)} deviations for {spec.n_mels} mel bands; the checkpoint is damaged")
        return Normalization(mean, std, label=f"speaker {key}")

    return net, stats(source), stats(target), ckpt


def _fade(n: int, device):
    import torch

    k = torch.arange(n, device=device, dtype=torch.float32)
    return 0.5 - 0.5 * torch.cos(torch.pi * (k + 0.5) / n)  # raised cosine; fade_in + fade_out == 1


def silence_gate(log_mel, log_floor: float, below_peak_db: float = 50.0, width_db: float = 10.0):
    """Per-frame weights in [0, 1]: 0 where the input is silent, 1 where it is sound.

    A frame is silent when its loudest band is more than below_peak_db under the
    utterance's loudest frame, or at the log floor (digital silence). The
    converter was trained on speech; a chunk of pure silence would otherwise be
    normalised up into a hum.
    """
    import torch

    nats = lambda db: db / 20 * math.log(10)  # noqa: E731 - dB of magnitude -> natural-log units
    loudness = log_mel.max(dim=0).values
    peak = loudness.max()
    gate = torch.clamp((loudness - (peak - nats(below_peak_db))) / nats(width_db), 0, 1)
    gate = gate * torch.clamp((loudness - log_floor) / nats(width_db), 0, 1)
    kernel = torch.ones(1, 1, 5, device=log_mel.device) / 5  # a few frames of smoothing: no chattering
    return torch.nn.functional.conv1d(gate.view(1, 1, -1), kernel, padding=2).view(-1)


def frame_energy_db(log_mel):
    """Per-frame energy (dB) of a natural-log magnitude mel spectrogram (n_mels, frames)."""
    import torch

    return 10 * torch.log10(torch.exp(2 * log_mel.double()).sum(dim=0).clamp_min(1e-30))


def pause_weights(log_mel, margin_db: float = 3.0, width_db: float = 6.0, min_range_db: float = 12.0):
    """Per-frame weights in [0, 1]: 1 in pauses (frames at the recording's noise floor), 0 in speech.

    The noise floor is the 10th percentile of the frame energies: in speech with
    pauses, that is the pauses, whether they hold digital silence or noise.
    Frames within margin_db of it are pauses, frames more than
    margin_db + width_db above it speech. A recording whose loud frames are less
    than min_range_db above its floor has no pauses to find (all noise or all
    speech): every weight is 0.
    """
    import torch

    energy = frame_energy_db(log_mel)
    floor, loud = torch.quantile(energy, 0.10), torch.quantile(energy, 0.95)
    if loud - floor < min_range_db:
        return torch.zeros_like(energy, dtype=log_mel.dtype)
    weights = torch.clamp(1 - (energy - floor - margin_db) / width_db, 0, 1).to(log_mel.dtype)
    kernel = torch.ones(1, 1, 5, device=log_mel.device, dtype=log_mel.dtype) / 5
    return torch.nn.functional.conv1d(weights.view(1, 1, -1), kernel, padding=2).view(-1)


def weighted_level(log_mel, weights, energy: bool):
    """The level of a log-mel spectrogram over weighted frames, in natural-log units (None without weight).

    energy=False: the mean log-mel (what the speakers' training means describe);
    energy=True: half the log of the mean mel energy (an RMS level, which is what
    a listener hears as loudness).
    """
    import torch

    total = weights.sum()
    if total <= 1e-6:
        return None
    if energy:
        per_frame = torch.exp(2 * log_mel.double()).sum(dim=0)
        return 0.5 * torch.log((per_frame * weights).sum() / total).to(log_mel.dtype)
    return (log_mel.mean(dim=0) * weights).sum() / total


CHUNKS_PER_CALL = 8  # chunks of one utterance converted in one call (each is normalised on its own)


def convert_chunked(net, features, chunk: int, overlap: int):
    """(n_mels, frames) -> (n_mels, frames) through `net`, in overlapping chunks that are cross-faded.

    Memory stays bounded on long inputs; cross-fading the overlaps avoids seams.
    """
    import torch

    frames = features.shape[-1]
    if frames <= chunk:
        return net(features.unsqueeze(0))[0]
    overlap = min(overlap, chunk // 2)
    hop = chunk - overlap
    starts = list(range(0, frames - chunk, hop)) + [frames - chunk]
    out = torch.zeros_like(features)
    weight = torch.zeros(frames, device=features.device)
    fade_in = _fade(overlap, features.device) if overlap else None
    pieces = []
    for first in range(0, len(starts), CHUNKS_PER_CALL):  # a few chunks per call: the same numbers, faster
        group = starts[first : first + CHUNKS_PER_CALL]
        pieces += list(net(torch.stack([features[:, start : start + chunk] for start in group])))
    for start, piece in zip(starts, pieces):
        end = start + chunk
        w = torch.ones(chunk, device=features.device)
        if overlap and start > 0:
            w[:overlap] = fade_in
        if overlap and end < frames:
            w[-overlap:] = fade_in.flip(0)
        out[:, start:end] += piece * w
        weight[start:end] += w
    return out / weight


class Convert(Stage):
    """Convert a log-mel spectrogram from one speaker to the other with a MaskCycleGAN-VC model."""

    name = "cyclegan_vc.convert"
    consumes = Spectrogram
    produces = Spectrogram
    params = {
        "model": Param(str, DEFAULT_MODEL, "a converter checkpoint, or a built-in model name (transmute models)"),
        "direction": Param(str, "a2b", "a2b converts speaker A to B; b2a the other way", choices=("a2b", "b2a")),
        "chunk_frames": Param(int, 256, "frames converted at once (memory stays bounded on long files)", min=16),
        "overlap_frames": Param(int, 32, "frames shared by neighbouring chunks, cross-faded", min=0),
        "loudness": Param(str, "keep", "'keep': the output is as loud as the input; 'normalize': at the level "
                          "the target speaker had in training", choices=("keep", "normalize")),
        "pauses": Param(str, "keep", "'keep': pauses (the input's noise floor) pass through unconverted, so "
                        "noise stays noise; 'convert': every frame goes through the converter",
                        choices=("keep", "convert")),
    }

    def check(self, incoming: FeatureSpec) -> FeatureSpec:
        from transmute.checkpoint import model_feature_spec

        expected = model_feature_spec(self.model, plugin=PLUGIN, model=MODEL)
        self.require_spec(expected, incoming, f"the model was trained on other features; set "
                                              f"spec_from = \"{self.model}\" on the audio.logmel stage")
        return incoming

    def setup(self, device) -> None:
        super().setup(device)
        self.net, self.source_norm, self.target_norm, _ = load_converter(self.model, self.direction, device)

    def process(self, signal: Spectrogram) -> Spectrogram:
        converted = []
        # One utterance at a time: instance normalisation sees only that utterance,
        # so a result never depends on what else was in the batch.
        floor = math.log(signal.spec.log_floor)
        for item in signal.items():
            converted.append(item.replace(data=self.convert(item.data.float()[0], floor).unsqueeze(0)))
        return Spectrogram.collate(converted)

    def convert(self, log_mel, floor: float):
        """One utterance's (n_mels, frames) log-mel -> the other speaker's.

        The input is shifted to the source speaker's training level first, so
        the conversion does not depend on how loud the recording is; the output
        is then shifted to the input's loudness ('keep'). Pauses and digital
        silence pass through as they are ('keep'): a converter trained on speech
        turns noise into a faint ghost voice.
        """
        import torch

        from transmute import dsp

        sound = silence_gate(log_mel, floor)
        pauses = pause_weights(log_mel) if self.pauses == "keep" else log_mel.new_zeros(log_mel.shape[1])
        speech = sound * (1 - pauses)
        level = weighted_level(log_mel, sound, energy=False)
        shift = 0.0 if level is None else sum(self.source_norm.mean) / len(self.source_norm.mean) - level
        # A quiet recording loses its quietest bands to the log floor; raised with the rest, they would
        # make a loud flat floor (see FLOOR_DROP).
        at_floor = log_mel <= floor + 1e-4
        leveled = log_mel + shift
        if shift > 0:
            leveled = torch.where(at_floor, leveled - FLOOR_DROP, leveled)
        normalized = dsp.normalize(leveled.unsqueeze(0), self.source_norm)[0]
        y = convert_chunked(self.net, normalized, self.chunk_frames, self.overlap_frames)
        y = dsp.denormalize(y.unsqueeze(0), self.target_norm)[0]
        loud_in, loud_out = weighted_level(log_mel, speech, True), weighted_level(y, speech, True)
        gain = 0.0 if loud_in is None or loud_out is None else loud_in - loud_out  # keep: output as loud as input
        if self.loudness == "keep":
            y = y + gain
            gain = 0.0
        # What is not speech: the input itself (silence stays silent, noise stays noise), at the speech's gain.
        passthrough = (log_mel - gain).clamp_min(floor)
        return y * speech + passthrough * (1 - speech)
