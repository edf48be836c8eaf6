"""One checkpoint format: safetensors + JSON metadata, never pickle, refused when foreign."""

import json

import pytest
import torch

from transmute.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from transmute.errors import CheckpointError
from transmute.signals import FeatureSpec


def make(path, **overrides):
    fields = dict(
        tensors={"layer.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "step": torch.tensor([7])},
        plugin="toy", model="generator", version="1.2", hparams={"width": 16},
        feature_spec=FeatureSpec(sample_rate=16000, n_mels=64).to_dict(),
    )
    fields.update(overrides)
    return save_checkpoint(path, Checkpoint(**fields))


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = make(tmp_path / "model.safetensors")
    ckpt = load_checkpoint(path, plugin="toy", model="generator", version="1.0")
    assert torch.equal(ckpt.tensors["layer.weight"], torch.arange(6, dtype=torch.float32).view(2, 3))
    assert ckpt.hparams == {"width": 16} and ckpt.version == "1.2"
    assert FeatureSpec.from_dict(ckpt.feature_spec) == FeatureSpec(sample_rate=16000, n_mels=64)
    assert read_metadata(path)["plugin"] == "toy"
    assert not list(tmp_path.glob(".*part")), "no temporary file is left behind"


def test_it_is_a_plain_safetensors_file(tmp_path):
    from safetensors import safe_open

    path = make(tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"layer.weight", "step"}
        assert json.loads(handle.metadata()["transmute"])["format"] == "transmute.checkpoint"
    assert b"pickle" not in path.read_bytes() and not path.read_bytes().startswith(b"\x80")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"plugin": "other"}, r"checkpoint is for plugin 'toy', expected 'other'"),
        ({"model": "vocoder"}, r"checkpoint is for model 'generator', expected 'vocoder'"),
        ({"version": "2.0"}, r"checkpoint version 1.2 is incompatible with this plugin's version 2.0"),
    ],
)
def test_foreign_checkpoints_are_refused(tmp_path, kwargs, message):
    path = make(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, **kwargs)


def test_missing_corrupt_and_non_transmute_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing.safetensors: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.safetensors: not a safetensors checkpoint"):
        load_checkpoint(junk)
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, pickled)
    with pytest.raises(CheckpointError, match=r"model.pt: not a safetensors checkpoint"):
        load_checkpoint(pickled)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(CheckpointError, match=r"plain.safetensors: a safetensors file, but not a transmute checkpoint"):
        load_checkpoint(plain)


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    path = make(tmp_path / "model.safetensors")
    before = path.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        make(path, version="1.3")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_header_is_read_once_while_the_file_is_unchanged(tmp_path, monkeypatch):
    import safetensors

    reads = []
    real_open = safetensors.safe_open
    monkeypatch.setattr(safetensors, "safe_open", lambda path, **kw: reads.append(path) or real_open(path, **kw))
    path = make(tmp_path / "model.safetensors")
    first = read_metadata(path)
    first["plugin"] = "changed by a caller"
    assert read_metadata(tmp_path / "." / "model.safetensors")["plugin"] == "toy", "each caller gets its own copy"
    assert len(reads) == 1
    make(path, plugin="other")  # rewritten: read again
    assert read_metadata(path)["plugin"] == "other" and len(reads) == 2


def test_model_feature_spec_checks_the_maker_and_needs_a_spec(tmp_path):
    from transmute.checkpoint import model_feature_spec

    path = make(tmp_path / "model.safetensors")
    assert model_feature_spec(path) == FeatureSpec(sample_rate=16000, n_mels=64)
    assert model_feature_spec(path, plugin="toy", model="generator").n_mels == 64
    with pytest.raises(CheckpointError, match=r"is a toy/generator checkpoint, not a vocoder/hifigan$"):
        model_feature_spec(path, plugin="vocoder", model="hifigan")
    with pytest.raises(CheckpointError, match=r"stores no feature spec"):
        model_feature_spec(make(tmp_path / "bare.safetensors", feature_spec=None))
    with pytest.raises(CheckpointError, match=r"is a training-state checkpoint; use the run's model.safetensors"):
        model_feature_spec(make(tmp_path / "state.safetensors", model="training-state"))


def test_the_feature_spec_is_tagged_with_its_kind_and_old_untagged_specs_still_read(tmp_path):
    from transmute.signals import ImageSpec

    images = ImageSpec("RGB", (-1, 1))
    path = make(tmp_path / "images.safetensors", feature_spec=images)
    ckpt = load_checkpoint(path)
    assert ckpt.feature_spec == {"kind": "images", "mode": "RGB", "value_range": [-1.0, 1.0]}
    assert ckpt.spec() == images and ImageSpec.from_dict(ckpt.feature_spec) == images
    untagged = {k: v for k, v in FeatureSpec(n_mels=64).to_dict().items() if k != "kind"}  # before specs had kinds
    assert load_checkpoint(make(tmp_path / "old.safetensors", feature_spec=untagged)).spec() == FeatureSpec(n_mels=64)
    with pytest.raises(ValueError, match=r"a 'images' spec, not a 'spectrogram' spec"):
        FeatureSpec.from_dict(images.to_dict())
    odd = load_checkpoint(make(tmp_path / "odd.safetensors", feature_spec={"kind": "smell"}))
    with pytest.raises(CheckpointError, match=r"odd.safetensors: metadata field 'feature_spec': unknown spec kind "
                                              r"'smell'; this transmute knows waveform, spectrogram, images, codes"):
        odd.spec()


def test_missing_metadata_fields_are_named(tmp_path):
    ckpt = load_checkpoint(make(tmp_path / "model.safetensors"))
    assert ckpt.need("hparams", "width") == 16
    with pytest.raises(CheckpointError, match=r"model.safetensors: metadata field 'extra.stats' is missing; the "
                                              r"checkpoint was made by another version of its plugin or is damaged"):
        ckpt.need("extra", "stats", "a")
