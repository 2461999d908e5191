"""The synthetic domain-shift benchmark: determinism, splits, declared classes, a label distribution
shared by both domains within stated bounds, plausible layout, and a target that looks different."""
import numpy as np
import pytest
import torch

from sepico.data import (CLASS_NAMES, DOMAINS, IGNORE_INDEX, PALETTE, SYNTHETIC_CLASSES,
                         SyntheticStreets, colorize, render_batch, scene_seed)
from sepico.data.synthetic import _SOURCE_COLOURS

SIZE = (128, 256)
SCENES = 64
# Stated bounds on the label distributions of the two domains, per class, over 64 scenes at
# 128 x 256 (the expected differences, from 1024 scenes, are at most 0.03: target cars are larger,
# target buildings taller so there is less sky).
MAX_ABS_FREQ_GAP = 0.05
MAX_FREQ_RATIO = 2.0


def frequencies(labels):
    return np.bincount(labels.flatten().numpy(), minlength=256)[:len(CLASS_NAMES)] / labels.numel()


@pytest.fixture(scope="module")
def scenes():
    """64 train scenes per domain, rendered once for the whole module."""
    return {domain: SyntheticStreets(domain, "train", SIZE, SCENES).__getitems__(range(SCENES))
            for domain in DOMAINS}


@pytest.fixture(scope="module")
def batches(scenes):
    return {domain: tuple(torch.stack(t) for t in zip(*items)) for domain, items in scenes.items()}


# ---------------------------------------------------------------------------------------------
# Cityscapes table and colorize


def test_cityscapes_table():
    assert len(CLASS_NAMES) == 19 and CLASS_NAMES[0] == "road" and CLASS_NAMES[18] == "bicycle"
    assert PALETTE.shape == (19, 3) and PALETTE.dtype == np.uint8
    assert tuple(PALETTE[0]) == (128, 64, 128)   # road
    assert tuple(PALETTE[10]) == (70, 130, 180)  # sky
    assert tuple(PALETTE[13]) == (0, 0, 142)     # car
    assert len({tuple(c) for c in PALETTE}) == 19
    assert set(SYNTHETIC_CLASSES) <= set(range(19))
    names = {CLASS_NAMES[c] for c in SYNTHETIC_CLASSES}
    assert {"road", "sidewalk", "building", "pole", "vegetation", "sky", "person", "car"} <= names
    assert names & {"wall", "fence"}


def test_colorize():
    labels = torch.tensor([[0, 13], [IGNORE_INDEX, 10]])
    rgb = colorize(labels)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [0, 0, 142]
    assert rgb[1, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [70, 130, 180]
    np.testing.assert_array_equal(colorize(labels.numpy().astype(np.uint8)), rgb)
    assert colorize(torch.zeros(3, 4, 5, dtype=torch.long)).shape == (3, 4, 5, 3)
    with pytest.raises(ValueError, match="19"):
        colorize(torch.tensor([19]))
    with pytest.raises(ValueError):
        colorize(np.array([-1]))
    with pytest.raises(TypeError):
        colorize(torch.zeros(2, 2))


# ---------------------------------------------------------------------------------------------
# Determinism, splits and the Dataset API


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_is_deterministic_per_seed(domain):
    images, labels = render_batch(domain, [3, 4, 5], SIZE)
    again_images, again_labels = render_batch(domain, iter([3, 4, 5]), SIZE)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    # an item does not depend on its batch
    alone_images, alone_labels = render_batch(domain, [4], SIZE)
    assert torch.equal(alone_images[0], images[1]) and torch.equal(alone_labels[0], labels[1])
    # different seeds, different scenes
    for i in range(3):
        for j in range(i + 1, 3):
            assert (labels[i] != labels[j]).float().mean() > 0.05
            assert not torch.equal(images[i], images[j])


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_shapes_dtypes_and_range(domain):
    images, labels = render_batch(domain, range(2), (96, 160))
    assert images.shape == (2, 3, 96, 160) and images.dtype == torch.float32
    assert labels.shape == (2, 96, 160) and labels.dtype == torch.int64
    assert torch.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    square_images, _ = render_batch(domain, [0], (16, 16))
    assert square_images.shape == (1, 3, 16, 16)


def test_dataset_items():
    ds = SyntheticStreets("target", "test", SIZE, length=5, seed=7)
    assert len(ds) == 5
    image, label = ds[2]
    assert image.shape == (3, *SIZE) and label.shape == SIZE
    ref_images, ref_labels = render_batch("target", [scene_seed("target", "test", 7, 2)], SIZE)
    assert torch.equal(image, ref_images[0]) and torch.equal(label, ref_labels[0])
    again = ds[2]
    assert torch.equal(again[0], image) and torch.equal(again[1], label)
    assert torch.equal(ds[-3][1], label)
    batched = ds.__getitems__([4, 2])
    assert torch.equal(batched[1][0], image) and torch.equal(batched[1][1], label)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False)
    first_images, first_labels = next(iter(loader))
    assert first_images.shape == (2, 3, *SIZE) and torch.equal(first_labels[0], ds[0][1])
    with pytest.raises(IndexError):
        ds[5]
    # the seed selects a different set of scenes
    other = SyntheticStreets("target", "test", SIZE, length=5, seed=8)
    assert not torch.equal(other[2][1], label)


def test_train_and_test_never_share_scenes():
    for domain in DOMAINS:
        train = {scene_seed(domain, "train", 0, i) for i in range(2000)}
        test = {scene_seed(domain, "test", 0, i) for i in range(2000)}
        assert len(train) == len(test) == 2000 and not train & test
    source = {scene_seed("source", "train", 0, i) for i in range(2000)}
    target = {scene_seed("target", "train", 0, i) for i in range(2000)}
    assert not source & target  # unpaired domains
    train_labels = SyntheticStreets("source", "train", SIZE, length=4).__getitems__(range(4))
    test_labels = SyntheticStreets("source", "test", SIZE, length=4).__getitems__(range(4))
    for (_, a), (_, b) in zip(train_labels, test_labels):
        assert (a != b).float().mean() > 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        render_batch("night", [0])
    with pytest.raises(ValueError, match="empty"):
        render_batch("source", [])
    with pytest.raises(ValueError, match="seeds"):
        render_batch("source", [-1])
    with pytest.raises(TypeError, match="seeds"):
        render_batch("source", [1.5])
    with pytest.raises(ValueError, match="size"):
        render_batch("source", [0], (8, 256))
    with pytest.raises(TypeError, match="size"):
        render_batch("source", [0], 128)
    with pytest.raises(ValueError, match="split"):
        SyntheticStreets("source", "val")
    with pytest.raises(ValueError, match="length"):
        SyntheticStreets("source", "train", length=0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticStreets("source", "train", seed=-1)


# ---------------------------------------------------------------------------------------------
# Labels: declared classes, shared distribution, layout


@pytest.mark.parametrize("domain", DOMAINS)
def test_labels_use_exactly_the_declared_classes(batches, domain):
    labels = batches[domain][1]
    assert set(labels.unique().tolist()) == set(SYNTHETIC_CLASSES)
    # every declared class is common enough to learn: in at least a quarter of the scenes
    present = torch.stack([(labels == c).flatten(1).any(1) for c in SYNTHETIC_CLASSES])
    assert (present.float().mean(1) >= 0.25).all()


def test_domains_share_the_label_distribution(batches):
    source, target = frequencies(batches["source"][1]), frequencies(batches["target"][1])
    for c in SYNTHETIC_CLASSES:
        gap = abs(source[c] - target[c])
        assert gap <= MAX_ABS_FREQ_GAP, f"{CLASS_NAMES[c]}: {source[c]:.4f} vs {target[c]:.4f}"
        ratio = max(source[c], target[c]) / min(source[c], target[c])
        assert ratio <= MAX_FREQ_RATIO, f"{CLASS_NAMES[c]}: {source[c]:.4f} vs {target[c]:.4f}"
    # the object-size statistics do differ, in the stated direction
    car, sky = CLASS_NAMES.index("car"), CLASS_NAMES.index("sky")
    assert target[car] > source[car] and target[sky] < source[sky]


def test_same_seed_same_layout_across_domains():
    """Both domains come from one generator: a seed gives the same street in both, up to the
    object sizes."""
    _, source = render_batch("source", range(8), SIZE)
    _, target = render_batch("target", range(8), SIZE)
    assert (source == target).float().mean() > 0.75


@pytest.mark.parametrize("domain", DOMAINS)
def test_layout_sky_on_top_road_at_bottom(batches, domain):
    labels = batches[domain][1]
    rows = torch.arange(SIZE[0], dtype=torch.float64)

    def mean_row(cls):
        per_row = (labels == cls).double().sum((0, 2))
        return float((per_row * rows).sum() / per_row.sum())

    sky, building, road = (CLASS_NAMES.index(n) for n in ("sky", "building", "road"))
    assert mean_row(sky) < mean_row(building) < mean_row(road)
    top, bottom = labels[:, : SIZE[0] // 8], labels[:, -SIZE[0] // 8:]
    assert (top == sky).float().mean() > 0.2 and (top == road).float().mean() == 0
    assert (bottom == road).float().mean() > 0.5 and (bottom == sky).float().mean() == 0
    # perspective: the road narrows towards the horizon
    road_width = (labels == road).double().mean((0, 2))
    lower = SIZE[0] // 2
    assert (road_width[lower:].diff() >= -0.02).all() and road_width[-1] > 2 * road_width[lower]


# ---------------------------------------------------------------------------------------------
# Images: the target looks different


def test_target_differs_visually(batches):
    source, target = batches["source"][0], batches["target"][0]
    source_mean, target_mean = source.mean((0, 2, 3)), target.mean((0, 2, 3))
    assert (source_mean - target_mean).abs().max() > 0.1
    assert target.mean() < 0.75 * source.mean()  # night-like darkening
    # warm cast: the target's red-to-blue balance moves towards red
    assert target_mean[0] / target_mean[2] > 1.1 * source_mean[0] / source_mean[2]


def test_shift_defeats_a_colour_lookup(batches):
    """The shift matters at pixel level: nearest source colour labels source pixels almost
    perfectly and target pixels poorly (a network has context and gets a usable start)."""
    classes = torch.tensor(SYNTHETIC_CLASSES)
    colours = torch.from_numpy(_SOURCE_COLOURS.T)[classes]

    def accuracy(images, labels):
        pixels = images[:8].permute(0, 2, 3, 1).reshape(-1, 3)
        predicted = classes[torch.cdist(pixels, colours).argmin(1)]
        return (predicted == labels[:8].reshape(-1)).float().mean()

    assert accuracy(*batches["source"]) > 0.95
    assert accuracy(*batches["target"]) < 0.6
