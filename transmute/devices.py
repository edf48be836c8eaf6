"""Where compute runs: the one resolver of --device values for running and training."""

from __future__ import annotations

from transmute.errors import TransmuteError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(requested: str | None = "auto", local_rank: int = 0):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, or a one-line TransmuteError.

    'cuda' without an index means this process's GPU: LOCAL_RANK's under torchrun
    (local_rank), else the first.
    """
    import torch

    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    kind, _, index = requested.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise TransmuteError(f"--device {requested}: expected {CHOICES}")
    if not torch.cuda.is_available():
        raise TransmuteError(f"--device {requested}: no CUDA device is available to torch here; use --device cpu")
    number = int(index) if index else local_rank
    if number >= torch.cuda.device_count():
        raise TransmuteError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(0 to {torch.cuda.device_count() - 1})")
    return torch.device("cuda", number)
