"""The one checkpoint format: a safetensors file whose header carries JSON metadata.

    {"format": "transmute.checkpoint", "format_version": 1,
     "plugin": "cyclegan_vc", "model": "generator", "version": "1.0",
     "hparams": {...}, "feature_spec": {"kind": "spectrogram", ...} or null, "extra": {...}}

Weights and metadata live in one file, written atomically. Loading never
unpickles: safetensors holds plain tensors, the metadata is JSON. A checkpoint
from another plugin or model, or from an incompatible major version, is refused
with a message that names the file and both values. The feature spec is tagged
with its kind (transmute.signals.TaggedSpec); an untagged one, written before
specs were tagged, is read as a spectrogram's.

A checkpoint that is valid safetensors but lacks a metadata field or a tensor,
or holds a tensor of the wrong shape, is refused in one line naming the file
and the field or tensor (`Checkpoint.need`, `load_weights`), never with a
KeyError or a state-dict dump.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transmute.errors import CheckpointError
from transmute.files import atomic_path

FORMAT = "transmute.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "transmute"


@dataclass
class Checkpoint:
    tensors: dict[str, Any]
    plugin: str
    model: str
    version: str
    hparams: dict = field(default_factory=dict)
    feature_spec: dict | None = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    def spec(self):
        """The feature spec as a spec object (FeatureSpec, ImageSpec, ...), or None."""
        from transmute.signals import spec_from_dict

        if self.feature_spec is None:
            return None
        try:
            return spec_from_dict(self.feature_spec)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: metadata field 'feature_spec': {exc}") from None

    def need(self, section: str, *keys: str):
        """A metadata value, e.g. need("hparams", "res_blocks"); a missing one is a one-line error naming it."""
        value: Any = getattr(self, section)
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                name = ".".join((section, *keys[: depth + 1]))
                raise CheckpointError(f"{self.path}: metadata field '{name}' is missing; the checkpoint was made "
                                      "by another version of its plugin or is damaged")
            value = value[key]
        return value

    def metadata(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "plugin": self.plugin,
            "model": self.model, "version": self.version, "hparams": self.hparams,
            "feature_spec": self.feature_spec, "extra": self.extra,
        }


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in checkpoint.tensors.items()}
    meta = checkpoint.metadata()
    if meta["feature_spec"] is not None and not isinstance(meta["feature_spec"], dict):
        meta["feature_spec"] = meta["feature_spec"].to_dict()  # a spec object: stored tagged with its kind
    header = {_META_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


# Headers already read, by (resolved path, inode, mtime, size): checking a pipeline
# and setting it up ask for the same model's metadata several times in one run.
_headers: dict[tuple, dict] = {}
_HEADERS_KEPT = 64


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint, without reading its tensors.

    Each file's header is read once while the file is unchanged; callers get
    their own copy.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if key not in _headers:
        if len(_headers) >= _HEADERS_KEPT:
            _headers.clear()
        _headers[key] = _read_header(path)
    return copy.deepcopy(_headers[key])


def _read_header(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:  # numpy: reading a header needs no torch
            header = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({' '.join(str(exc).split())})") from None
    if _META_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file, but not a transmute checkpoint (no metadata)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a transmute checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format_version')} is newer than this transmute "
            f"understands ({FORMAT_VERSION}); upgrade transmute"
        )
    return meta


def resolve_model(ref: str | Path) -> Path:
    """A checkpoint path, or the file behind a model name that an installed plugin registered."""
    from transmute.plugins import get_manager

    path = Path(ref).expanduser()
    if path.is_file():
        return path
    models = get_manager().registry.models
    if str(ref) in models:
        registered = models[str(ref)][0]
        if not registered.is_file():
            raise CheckpointError(f"model '{ref}': its file {registered} is missing; reinstall the plugin that ships it")
        return registered
    known = ", ".join(sorted(models)) or "none"
    raise CheckpointError(f"model '{ref}': no such checkpoint file, and no installed plugin ships a model of "
                          f"that name (built-in models: {known})")


def model_feature_spec(ref: str | Path, plugin: str | None = None, model: str | None = None):
    """The FeatureSpec a model was trained on, from its checkpoint header (a path or a built-in model name).

    With plugin/model given, a checkpoint made by anything else is refused.
    """
    from transmute.signals import FeatureSpec, spec_from_dict
    from transmute.training import STATE_MODEL

    path = resolve_model(ref)
    meta = read_metadata(path)
    made = (meta.get("plugin"), meta.get("model"))
    if (plugin is not None and made[0] != plugin) or (model is not None and made[1] != model):
        wanted = "/".join(w for w in (plugin, model) if w)
        raise CheckpointError(f"model '{ref}' is a {made[0]}/{made[1]} checkpoint, not a {wanted}")
    if made[1] == STATE_MODEL:
        raise CheckpointError(f"{path} is a training-state checkpoint; use the run's model.safetensors")
    stored = meta.get("feature_spec")
    if not stored:
        raise CheckpointError(f"{path} stores no feature spec")
    try:
        spec = spec_from_dict(stored)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: metadata field 'feature_spec': {exc}") from None
    if not isinstance(spec, FeatureSpec):
        raise CheckpointError(f"{path}: the model was trained on {type(spec).__name__} signals, not on spectrograms")
    return spec


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def load_checkpoint(
    path: str | Path,
    *,
    plugin: str | None = None,
    model: str | None = None,
    version: str | None = None,
    device: str = "cpu",
) -> Checkpoint:
    """Load and verify a checkpoint. `version` is the reader's model version: majors must match."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    for key, want in (("plugin", plugin), ("model", model)):
        if want is not None and meta.get(key) != want:
            raise CheckpointError(
                f"{path}: checkpoint is for {key} '{meta.get(key)}', expected '{want}' "
                f"(made by plugin '{meta.get('plugin')}', model '{meta.get('model')}')"
            )
    if version is not None and _major(meta.get("version", "0")) != _major(version):
        raise CheckpointError(
            f"{path}: checkpoint version {meta.get('version')} is incompatible with this plugin's "
            f"version {version} (major versions differ); retrain or use a matching plugin version"
        )
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint tensors ({' '.join(str(exc).split())})") from None
    return Checkpoint(
        tensors=tensors, plugin=meta.get("plugin", ""), model=meta.get("model", ""),
        version=str(meta.get("version", "")), hparams=meta.get("hparams") or {},
        feature_spec=meta.get("feature_spec"), extra=meta.get("extra") or {}, path=path,
    )


def load_weights(module, tensors: dict, source, prefix: str = "", dtype=None) -> None:
    """Load the tensors under `prefix` into `module`, or say in one line which tensor is wrong.

    A missing, unexpected or differently shaped tensor is named with the file
    and both shapes (a checkpoint from another preset or a damaged file), where
    torch's load_state_dict would dump every key.
    """
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]

    def more(found: list) -> str:
        return f" (and {len(found) - 1} more)" if len(found) > 1 else ""

    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{source}: tensor '{prefix}{k}' has shape {list(state[k].shape)}, the model expects "
                              f"{list(own[k].shape)}{more(wrong)}; the checkpoint was made for other model settings")
    if missing:
        raise CheckpointError(f"{source}: tensor '{prefix}{missing[0]}' is missing{more(missing)}; the checkpoint "
                              "was made for another model or is damaged")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor '{prefix}{unexpected[0]}'{more(unexpected)}; the "
                              "checkpoint was made for another model")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state)
