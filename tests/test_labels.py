"""Labels at feature resolution (sepico/labels.py): the majority vote against the official
one-hot average pooling (sepico.reference), its ties, nearest neighbour, the checked labels that
SePiCo.labels and the map-level losses share, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from sepico import labels, losses
from sepico import reference as ref
from tests.helpers import make_label

C = 6


@pytest.mark.parametrize("scale", (1, 2, 3, 4, 8, 16))
@pytest.mark.parametrize("label_dtype", (torch.uint8, torch.int32, torch.int64))
def test_downscale_matches_one_hot_pooling(scale, label_dtype):
    gen = torch.Generator().manual_seed(scale)
    label = make_label(3, 48, 96, gen, classes=(0, 1, 2, 4), noise=0.3)
    label[0, 0, -16:, -16:] = 255  # a fully ignored corner
    for ratio in (0.5, 0.6, 0.7, 0.75, 0.9, 1.0):
        want = ref.downscale_labels_reference(label, scale, num_classes=5, min_ratio=ratio)
        got = labels.downscale_labels(label.to(label_dtype), scale, num_classes=5, min_ratio=ratio)
        assert got.dtype == torch.int64 and got.shape == (3, 1, 48 // scale, 96 // scale)
        assert torch.equal(got, want), f"scale {scale}, min_ratio {ratio}"
        # [B, H, W] input gives the same
        assert torch.equal(labels.downscale_labels(label[:, 0], scale, num_classes=5, min_ratio=ratio), want)


def test_downscale_ties_and_ignore():
    # Four 2 x 2 cells: a 2/2 tie of classes 3 and 1 (the lower id wins), a 2/2 tie of ignore and
    # class 0 (the real class wins), ignore winning 3/4, and class 2 at 3/4.
    label = torch.tensor([[3, 1, 255, 0, 255, 255, 2, 2],
                          [1, 3, 0, 255, 255, 1, 2, 0]]).view(1, 1, 2, 8)
    got = labels.downscale_labels(label, 2, num_classes=4, min_ratio=0.5)
    assert got.view(-1).tolist() == [1, 0, 255, 2]
    assert torch.equal(got, ref.downscale_labels_reference(label, 2, num_classes=4, min_ratio=0.5))
    got = labels.downscale_labels(label, 2, num_classes=4, min_ratio=0.75)
    assert got.view(-1).tolist() == [255, 255, 255, 2]
    # Factor 1 is the identity, whatever min_ratio says (as in the reference).
    assert torch.equal(labels.downscale_labels(label, 1, num_classes=4, min_ratio=2.0), label)


def test_nearest_takes_top_left_pixel():
    gen = torch.Generator().manual_seed(3)
    label = make_label(2, 40, 56, gen)
    got = labels.labels_at_feature_resolution(label, (5, 7), use_avg_pool=False, num_classes=C)
    want = F.interpolate(label.float(), size=(5, 7), mode="nearest").long()
    assert torch.equal(got, want)


def test_checked_feature_labels_are_the_vote_as_checked_labels():
    gen = torch.Generator().manual_seed(4)
    label = make_label(2, 20, 28, gen)
    for pool in (True, False):
        got = labels.checked_feature_labels(label, (5, 7), num_classes=C, use_avg_pool=pool,
                                            scale_min_ratio=0.6)
        assert isinstance(got, kernels.CheckedLabels)
        assert (got.num_classes, got.ignore_index) == (C, 255)
        want = labels.labels_at_feature_resolution(label, (5, 7), num_classes=C, use_avg_pool=pool,
                                                   scale_min_ratio=0.6)[:, 0]
        assert torch.equal(got.tensor, want)


def test_map_level_api_keeps_downscale_labels():
    """sepico.losses.downscale_labels has been the library's name since its first release."""
    assert losses.downscale_labels is labels.downscale_labels


def test_bad_labels():
    gen = torch.Generator().manual_seed(5)
    label = make_label(2, 20, 28, gen)
    bad = label.clone()
    bad[0, 0, -1, -1] = C  # a class id >= C that is not ignore
    with pytest.raises(ValueError, match=rf"\[0, {C}\).*found {C}"):
        labels.downscale_labels(bad, 4, num_classes=C)
    with pytest.raises(ValueError, match=rf"found {C}"):
        labels.checked_feature_labels(bad, (5, 7), num_classes=C)
    with pytest.raises(ValueError, match="multiple of scale_factor"):
        labels.downscale_labels(label[..., :-1], 4, num_classes=C)
    with pytest.raises(ValueError, match="one integer factor"):
        labels.labels_at_feature_resolution(label[..., :-4, :], (5, 7), num_classes=C)
    with pytest.raises(ValueError, match="positive int"):
        labels.downscale_labels(label, 0, num_classes=C)
    with pytest.raises(TypeError, match="integer"):
        labels.downscale_labels(label.float(), 4, num_classes=C)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        labels.label_map(label[0, 0])
