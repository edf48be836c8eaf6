"""Neural vocoder speed: the built-in Vocos model on 60 s of log-mels, beside Griffin-Lim on the same mels.

- Ours: `vocoder.synthesize`'s function (chunked network + the engine's iSTFT)
  from the 60 s log-mel to audio, on this machine's CPU with torch's default
  threads. Target: at least 30x faster than real time (real-time factor <= 1/30).
- Peer: the resynthesize pipeline's inversion on the same mels, NNLS mel
  inversion + 32 iterations of fast Griffin-Lim (momentum 0.99).
- On a GPU, where there is one: batched throughput, 16 items of 10 s at once,
  in seconds of audio per second.
"""

from __future__ import annotations

import common

TARGET_SPEEDUP = 30.0


def vocoder_speed() -> list[common.Row]:
    import torch

    from transmute import dsp
    from transmute_vocoder import DEFAULT_MODEL
    from transmute_vocoder.stages import load_vocoder, synthesize

    net, spec, _ = load_vocoder(DEFAULT_MODEL)
    audio = torch.from_numpy(common.speech(sample_rate=spec.sample_rate)).unsqueeze(0)
    common.header(f"Vocoder: {DEFAULT_MODEL} on {common.SECONDS:g} s of log-mels (CPU, {torch.get_num_threads()} "
                  "threads)")
    with torch.inference_mode():
        mel, frames = dsp.features(audio, spec)
        samples = [audio.shape[1]]

        def ours(_):
            return synthesize(net, mel, spec, frames, samples)

        def griffin_lim(seed):
            return dsp.mel_to_audio(mel, spec, n_iter=common.N_ITER, momentum=common.MOMENTUM, seed=seed)

        mine = common.best_of(ours)
        peer = common.best_of(griffin_lim)
    rtf, peer_rtf = mine.best_s / common.SECONDS, peer.best_s / common.SECONDS
    speedup = 1 / rtf
    print(f"vocoder: {mine.label}, real-time factor {rtf:.4f} ({speedup:.0f}x real time)")
    print(f"Griffin-Lim ({common.N_ITER} iterations): {peer.label}, real-time factor {peer_rtf:.4f}")
    print(f"target: >= {TARGET_SPEEDUP:g}x real time -> {common.verdict(speedup >= TARGET_SPEEDUP)}")
    rows = [common.Row("vocoder 60 s (CPU)", f"RTF {rtf:.4f}", f"RTF {peer_rtf:.4f} (Griffin-Lim 32)",
                       f"{peer.best_s / mine.best_s:.2f}x", f">= {TARGET_SPEEDUP:g}x real time",
                       common.verdict(speedup >= TARGET_SPEEDUP))]
    if torch.cuda.is_available():
        rows += gpu_throughput(net, spec)
    return rows


def gpu_throughput(net, spec) -> list[common.Row]:
    import torch

    from transmute import dsp
    from transmute_vocoder.stages import synthesize

    device = torch.device("cuda")
    net = net.to(device)
    audio = torch.from_numpy(common.speech(10.0, spec.sample_rate)).to(device).repeat(16, 1)
    common.header("Vocoder on the GPU: 16 items of 10 s at once")
    with torch.inference_mode():
        mel, frames = dsp.features(audio, spec)
        samples = [audio.shape[1]] * 16

        def batch(_):
            out = synthesize(net, mel, spec, frames, samples)
            torch.cuda.synchronize()
            return out

        timing = common.best_of(batch)
    rate = 16 * 10.0 / timing.best_s
    print(f"{timing.label}: {rate:.0f} s of audio per second")
    return [common.Row("vocoder batch 16x10 s (GPU)", f"{rate:.0f} s/s", "-", "-", "-", "figures only")]


def main() -> list[common.Row]:
    return vocoder_speed()


if __name__ == "__main__":
    common.print_table(main())
