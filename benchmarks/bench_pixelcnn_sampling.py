"""PixelCNN sampling speed: the cached sampler (Ramachandran et al., 2017) beside the naive one, on 32x32 code maps.

- Ours: `cached_sample`, each layer computed at the new position only, from
  per-layer buffers.
- Peer: `naive_sample`, the whole network over the whole 32x32 map for every
  position (1,024 forward passes), the textbook way.
- Network: the built-in code prior digits-codes-pixelcnn (512 codes,
  conditioned on the digit); it is convolutional, so it runs on 32x32 maps as
  it does on its 7x7 ones. Same network, same uniform numbers: in float64
  the two give the same samples (checked here on 16 samples of 12x12, and
  by the tests); in float32 they compute the same logits with other
  rounding, so a uniform number within rounding of a CDF step can go either
  way, and a sample can part: the benchmark counts the identical ones and
  says where the first other one parts.
- Batches of 1 and 16 samples; on a GPU also 64. Target: at least 10x faster.
  Each sampler is timed once per batch size (the naive one takes minutes).
"""

from __future__ import annotations

import time

import common

SIZE = (32, 32)
TARGET_SPEEDUP = 10.0


def _network(device):
    from transmute_pixelcnn import DEFAULT_MODEL
    from transmute_pixelcnn.task import load_pixelcnn

    net, _ = load_pixelcnn(DEFAULT_MODEL, device)
    return net


def _timed(fn):
    import torch

    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> list[common.Row]:
    import torch

    from transmute_pixelcnn.networks import cached_sample, count_parameters, naive_sample, uniforms

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Full fp32 on a GPU: with TF32 the naive sampler's 1x1 convolutions (cuDNN) and the cached one's matrix
    # products (cuBLAS) would round differently and the samples could part.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    net = _network(device)
    where = "GPU" if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    common.header(f"PixelCNN sampling: {SIZE[0]}x{SIZE[1]} code maps, {count_parameters(net) / 1e6:.2f}M "
                  f"parameters, {len(net.layers)} gated layers ({where})")
    rows = []
    for batch in (1, 16) + ((64,) if device == "cuda" else ()):
        u = uniforms(list(range(batch)), (net.channels, *SIZE)).to(device)
        labels = (torch.arange(batch) % net.classes).to(device) if net.classes else None
        cached_sample(net, (2, 2), u[:, :, :2, :2], labels)  # warm-up: first calls allocate
        ours_s, ours = _timed(lambda: cached_sample(net, SIZE, u, labels))
        peer_s, peer = _timed(lambda: naive_sample(net, SIZE, u, labels))
        same = (ours == peer).flatten(1).all(1)
        ratio = peer_s / ours_s
        met = ratio >= TARGET_SPEEDUP
        print(f"batch {batch}: cached {ours_s:.2f} s ({batch / ours_s:.2f} maps/s), naive {peer_s:.1f} s "
              f"({batch / peer_s:.3f} maps/s): {ratio:.1f}x; identical samples: {int(same.sum())} of {batch}"
              f"{parting(ours, peer, same)}")
        rows.append(common.Row(f"PixelCNN sampling 32x32, batch {batch} ({'GPU' if device == 'cuda' else 'CPU'})",
                               f"{ours_s:.2f} s", f"{peer_s:.1f} s (naive)", f"{ratio:.1f}x",
                               f">= {TARGET_SPEEDUP:g}x", common.verdict(met)))
    rows.append(exact_in_float64(net, device))
    print(f"target: >= {TARGET_SPEEDUP:g}x faster, and the same samples in float64 -> "
          f"{common.verdict(all(r.verdict == 'PASS' for r in rows))}")
    return rows


def parting(ours, peer, same) -> str:
    """Where the first sample that differs parts from the naive sampler's (raster position)."""
    if bool(same.all()):
        return ""
    i = int((~same).nonzero()[0])
    first = int((ours[i] != peer[i]).flatten().nonzero()[0])
    return (f" (sample {i} parts at position {first} of {ours[i].numel()}: in float32 the two compute the same "
            "logits with other rounding, and a uniform number within rounding of a CDF step goes either way; "
            "from there the sample continues differently)")


def exact_in_float64(net, device) -> common.Row:
    """The same network in float64, 16 samples of 12x12: every draw must agree."""
    import copy

    import torch

    from transmute_pixelcnn.networks import cached_sample, naive_sample, uniforms

    wide = copy.deepcopy(net).double()
    u = uniforms(list(range(16)), (wide.channels, 12, 12)).to(device)
    labels = (torch.arange(16) % wide.classes).to(device) if wide.classes else None
    same = cached_sample(wide, (12, 12), u, labels) == naive_sample(wide, (12, 12), u, labels)
    exact = bool(same.all())
    print(f"float64, 16 samples of 12x12: identical: {exact}")
    return common.Row("PixelCNN samplers agree (float64, 16 x 12x12)", "cached", "naive", "-",
                      "identical samples", common.verdict(exact))


if __name__ == "__main__":
    main()
