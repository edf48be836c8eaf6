"""The vocoder stage: a log-mel spectrogram -> a waveform, with a trained Vocos model."""

from __future__ import annotations

from transmute.errors import CheckpointError
from transmute.signals import FeatureSpec, Spectrogram, Waveform, WaveformSpec
from transmute.stages import Param, Stage

from transmute_vocoder import DEFAULT_MODEL

PLUGIN, MODEL, VERSION = "vocoder", "vocos", "1.0"


def load_vocoder(ref: str, device="cpu"):
    """(generator in eval mode, the FeatureSpec it was trained on, checkpoint) of a vocoder checkpoint or name."""
    import torch

    from transmute.checkpoint import load_checkpoint, load_weights, resolve_model
    from transmute_vocoder.networks import PHASE_REFERENCES, Vocos

    ckpt = load_checkpoint(resolve_model(ref), plugin=PLUGIN, model=MODEL, version=VERSION)
    spec = ckpt.spec()
    if not isinstance(spec, FeatureSpec):
        raise CheckpointError(f"{ckpt.path}: metadata field 'feature_spec' must describe a spectrogram, "
                              f"got {type(spec).__name__ if spec else 'none'}")
    sizes = [ckpt.need("hparams", key) for key in ("dim", "hidden", "blocks")]
    reference = ckpt.hparams.get("phase_reference", "frame")
    if reference not in PHASE_REFERENCES:
        raise CheckpointError(f"{ckpt.path}: metadata field 'hparams.phase_reference' is {reference!r}, not one of "
                              f"{', '.join(PHASE_REFERENCES)}; the checkpoint was made by a newer plugin or is damaged")
    net = Vocos(spec.n_bins, spec.n_fft, *sizes, initialise=False, phase_reference=reference,
                hop_length=spec.hop_length)
    load_weights(net, ckpt.tensors, ckpt.path, dtype=torch.float32)
    return net.eval().to(device), spec, ckpt


def synthesize(net, mel, spec: FeatureSpec, frame_lengths, sample_lengths, chunk_frames: int = 1024):
    """(batch, n_mels, frames) log-mels -> (batch, samples) audio, each item its own length.

    Long inputs go through the network in chunks that carry the network's whole
    receptive field on each side, so every frame is computed exactly as in one
    pass: no seams, and memory bounded by the chunk. Padding frames are masked
    inside the network, so an item sounds the same alone or in a batch.
    """
    import torch

    from transmute import dsp
    from transmute.signals import length_mask
    from transmute_vocoder.networks import receptive_radius

    batch, _, frames = mel.shape
    mask = length_mask(frame_lengths, frames, mel.device).to(mel.dtype).unsqueeze(1)
    margin = receptive_radius(len(net.blocks))
    magnitude = torch.empty(batch, spec.n_fft // 2 + 1, frames, device=mel.device)
    phase = torch.empty_like(magnitude)
    for start in range(0, frames, chunk_frames):
        end = min(frames, start + chunk_frames)
        lo, hi = max(0, start - margin), min(frames, end + margin)
        chunk_magnitude, chunk_phase = net(mel[:, :, lo:hi], mask[:, :, lo:hi], first_frame=lo)
        magnitude[:, :, start:end] = chunk_magnitude[:, :, start - lo : end - lo]
        phase[:, :, start:end] = chunk_phase[:, :, start - lo : end - lo]
    return dsp.istft(torch.polar(magnitude * mask, phase), spec, sample_lengths)


class Synthesize(Stage):
    """Log-mel spectrogram -> waveform with a trained Vocos neural vocoder."""

    name = "vocoder.synthesize"
    consumes = Spectrogram
    produces = Waveform
    params = {
        "model": Param(str, DEFAULT_MODEL, "a vocoder checkpoint, or a built-in model name (transmute models)"),
        "chunk_frames": Param(int, 1024, "frames synthesized at once (memory stays bounded on long files; the "
                                         "result does not depend on it)", min=16),
    }

    def check(self, incoming: FeatureSpec) -> WaveformSpec:
        from transmute.checkpoint import model_feature_spec

        expected = model_feature_spec(self.model, plugin=PLUGIN, model=MODEL)
        self.require_spec(expected, incoming, f"the vocoder '{self.model}' was trained on other features; set "
                                              f"spec_from = \"{self.model}\" on the audio.logmel stage, or train a "
                                              "vocoder on these (transmute train vocoder --spec-from)")
        return WaveformSpec(sample_rate=expected.sample_rate, channels=1)

    def setup(self, device) -> None:
        super().setup(device)
        self.net, self.spec, _ = load_vocoder(self.model, device)

    def process(self, signal: Spectrogram) -> Waveform:
        import torch

        spec = self.spec
        samples = signal.sample_lengths or [
            (n - 1) * spec.hop_length + (0 if spec.center else spec.n_fft) for n in signal.lengths]
        with torch.inference_mode():
            audio = synthesize(self.net, signal.data.float(), spec, signal.lengths, samples, self.chunk_frames)
        return Waveform(audio.unsqueeze(1), WaveformSpec(spec.sample_rate, 1), signal.names, list(samples))
