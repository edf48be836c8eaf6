"""Batching and splitting signals: padding with per-item extents, metadata kept in step."""

import pytest
import torch

from transmute.signals import Codes, CodeSpec, FeatureSpec, Images, ImageSpec, Spectrogram, Waveform, WaveformSpec


def test_waveforms_pad_and_split_back_exactly():
    a = Waveform(torch.randn(1, 2, 5), WaveformSpec(16000, 2), ["a"])
    b = Waveform(torch.randn(1, 2, 9), WaveformSpec(16000, 2), ["b"])
    batch = Waveform.collate([a, b])
    assert batch.data.shape == (2, 2, 9) and batch.lengths == [5, 9] and batch.names == ["a", "b"]
    assert batch.data[0, :, 5:].abs().sum() == 0
    back = batch.items()
    assert torch.equal(back[0].data, a.data) and torch.equal(back[1].data, b.data)
    assert back[0].lengths == [5] and back[1].names == ["b"]


def test_spectrogram_sample_lengths_travel_only_when_all_items_have_them():
    spec = FeatureSpec()
    a = Spectrogram(torch.randn(1, 80, 3), spec, ["a"], sample_lengths=[600])
    b = Spectrogram(torch.randn(1, 80, 7), spec, ["b"], sample_lengths=[1700])
    assert Spectrogram.collate([a, b]).sample_lengths == [600, 1700]
    c = Spectrogram(torch.randn(1, 80, 4), spec, ["c"])
    mixed = Spectrogram.collate([a, c])
    assert mixed.sample_lengths is None and mixed.lengths == [3, 4]
    assert [x.sample_lengths for x in Spectrogram.collate([a, b]).items()] == [[600], [1700]]


def test_different_specs_never_share_a_batch():
    a = Spectrogram(torch.randn(1, 80, 3), FeatureSpec(sample_rate=22050))
    b = Spectrogram(torch.randn(1, 80, 3), FeatureSpec(sample_rate=16000))
    assert a.collate_key() != b.collate_key()
    with pytest.raises(ValueError, match="specs differ"):
        Spectrogram.collate([a, b])


def test_images_batch_only_with_same_size_but_can_be_collated_padded():
    spec = ImageSpec("RGB")
    small = Images(torch.rand(1, 3, 4, 6), spec, ["small"])
    large = Images(torch.rand(1, 3, 8, 8), spec, ["large"])
    assert small.collate_key() != large.collate_key()  # the runner keeps them apart
    assert small.layout_key() == large.layout_key()  # a stage may still pad them together
    batch = Images.collate([small, large])
    assert batch.sizes == [(4, 6), (8, 8)] and batch.original_sizes == [(4, 6), (8, 8)]
    assert torch.equal(batch.items()[0].data, small.data)


def test_codes_keep_integer_dtype():
    spec = CodeSpec(codebook_size=512, codebook_id="vq")
    a = Codes(torch.randint(0, 512, (1, 2, 3)), spec, ["a"])
    b = Codes(torch.randint(0, 512, (1, 4, 4)), spec, ["b"])
    batch = Codes.collate([a, b])
    assert batch.data.dtype == torch.int64 and batch.sizes == [(2, 3), (4, 4)]
    assert torch.equal(batch.items()[0].data, a.data)
