"""The code file (.codes): one item's codes, and what is needed to decode them, in a safetensors file.

Format "transmute-codes", version 1 (plugins/transmute_vqvae/README.md has the spec):
- one integer tensor `codes`, (rows, width), int16 (int32 for codebooks over 32768 entries);
- the safetensors header's metadata holds one key, "transmute-codes", whose value is a JSON object:
  {"format": "transmute-codes", "version": 1, "codebook_id": str, "codebook_size": int,
   "source": the spec of what was encoded (a tagged spec, as checkpoints store it),
   "source_size": [frames] or [height, width] of what was encoded,
   "sample_length": samples of the audio a spectrogram came from, or null}.
A reader refuses a file of another format or of a newer major version.
"""

from __future__ import annotations

import json
from pathlib import Path

from transmute.errors import InputError

FORMAT, VERSION = "transmute-codes", 1
META_KEY = "transmute-codes"


def write_codes(path: Path, codes, meta: dict) -> None:
    """codes: (rows, width) integers; meta: codebook_id, codebook_size, source, source_size, sample_length."""
    import torch
    from safetensors.torch import save_file

    from transmute.files import atomic_path

    dtype = torch.int16 if meta["codebook_size"] <= 32768 else torch.int32
    header = {"format": FORMAT, "version": VERSION, **meta}
    with atomic_path(Path(path)) as tmp:
        save_file({"codes": codes.to(dtype).contiguous().cpu()}, str(tmp),
                  metadata={META_KEY: json.dumps(header, sort_keys=True)})


def read_codes(path: Path):
    """((rows, width) int64 codes, metadata dict); a damaged or foreign file is an InputError in one line."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            names = list(handle.keys())
            codes = handle.get_tensor("codes") if "codes" in names else None
    except Exception as exc:
        raise InputError(f"not a code file: cannot read it as safetensors ({' '.join(str(exc).split())[:200]})") \
            from None
    if META_KEY not in header:
        raise InputError(f"a safetensors file, but not a transmute code file (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as exc:
        raise InputError(f"code file metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"not a transmute code file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise InputError(f"code file version {version!r} is newer than this plugin reads ({VERSION}); upgrade transmute")
    missing = [k for k in ("codebook_id", "codebook_size", "source", "source_size") if k not in meta]
    if missing:
        raise InputError(f"code file metadata lacks '{missing[0]}'; the file is damaged")
    if codes is None or codes.dim() != 2 or codes.dtype.is_floating_point:
        raise InputError("code file holds no (rows, width) integer tensor 'codes'; the file is damaged")
    codes = codes.to(torch.int64)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= int(meta["codebook_size"])):
        raise InputError(f"code file holds codes outside 0..{int(meta['codebook_size']) - 1}; the file is damaged")
    return codes, meta
