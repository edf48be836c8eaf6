"""Batching and splitting signals: padding with per-item extents, metadata kept in step."""

import pytest
import torch

from transmute.signals import (Codes, CodeSpec, FeatureSpec, Images, ImageSpec, Spectrogram, Waveform, WaveformSpec,
                               batch_mismatch, length_mask)


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


def test_a_masked_reduction_gives_each_item_what_it_gives_alone():
    """Padded log-mel frames hold 0.0 = log(1), louder than any real frame: a plain max picks them."""
    quiet = Spectrogram(torch.full((1, 4, 3), -9.0), FeatureSpec(n_mels=4), ["quiet"])
    loud = Spectrogram(torch.full((1, 4, 5), -2.0), FeatureSpec(n_mels=4), ["loud"])
    batch = Spectrogram.collate([quiet, loud])
    assert batch.data[0, :, 3:].eq(0.0).all()  # what the padding holds
    assert batch.data.amax(dim=(1, 2)).tolist() == [0.0, -2.0]  # wrong for "quiet"
    masked = batch.data.masked_fill(~batch.valid_mask(), float("-inf")).amax(dim=(1, 2))
    assert masked.tolist() == [-9.0, -2.0]
    mask = batch.valid_mask()
    assert mask.shape == (2, 1, 5) and mask.sum(dim=(1, 2)).tolist() == [3, 5]


def test_valid_masks_of_images_and_codes():
    images = Images.collate([Images(torch.ones(1, 3, 2, 4), ImageSpec()), Images(torch.ones(1, 3, 3, 2), ImageSpec())])
    mask = images.valid_mask()
    assert mask.shape == (2, 1, 3, 4)
    assert mask[0, 0].sum() == 8 and mask[0, 0, 2].sum() == 0
    assert mask[1, 0].sum() == 6 and mask[1, 0, :, 2:].sum() == 0
    codes = Codes(torch.zeros(2, 3, 3, dtype=torch.long), CodeSpec(4), ["a", "b"], [(3, 3), (2, 1)])
    assert codes.valid_mask().sum(dim=(1, 2)).tolist() == [9, 2]
    assert length_mask([2, 0], 3).tolist() == [[True, True, False], [False, False, False]]


def test_batch_mismatch_names_what_a_transform_got_wrong():
    a = Waveform(torch.ones(1, 1, 5), WaveformSpec(8000, 1), ["a"])
    b = Waveform(torch.ones(1, 1, 3), WaveformSpec(8000, 1), ["b"])
    batch = Waveform.collate([a, b])
    assert batch_mismatch(batch, batch.replace(data=batch.data * 2)) is None
    assert batch_mismatch(batch, batch.replace(data=batch.data[:, :, :2], lengths=[2, 2])) is None  # shorter: fine
    assert batch_mismatch(batch, batch.data) == "process() returned Tensor, not a signal"
    assert batch_mismatch(batch, a) == "process() was given 2 items and returned 1"
    assert batch_mismatch(batch, batch.replace(names=["b", "a"])) == (
        "process() returned items ['b', 'a'] for ['a', 'b'] (same names, same order)")
    assert batch_mismatch(batch, batch.replace(lengths=[5])) == "process() returned 1 lengths for 2 items"
    assert batch_mismatch(batch, batch.replace(data=batch.data[:, :, :4])) == (
        "process() says item 'a' spans (5,), but the returned data holds (4,)")
