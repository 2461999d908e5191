"""``sepico check-data`` on a fixture tree of every dataset, with planted faults: a missing label, an
image-label pair of different sizes, a label id outside the dataset's scheme, a truncated PNG and a
missing daytime image each change their line of the table and the exit status; what was read is
said; nothing is written into the dataset folder. And GTA5's pairs of different sizes in training,
taken as the official pipeline takes them.

Facts: the published counts are ``sepico.data.check.PUBLISHED`` (their sources in that module's
docstring); a fixture tree is not the published set, so the tests that need a folder "as
published" set the published counts to the fixture's. The official pipeline for GTA5 (BIT-DA/SePiCo
configs/_base_/datasets/uda_gta_to_cityscapes_640x640_no_crop.py, ``gta_train_pipeline``):
``Resize(img_scale=(1280, 720))``, ``RandomCrop``, ``RandomFlip``, ``Normalize``, ``Pad(seg_pad_val=255)``;
mmseg 0.16's ``Resize`` rescales ``img`` and each of ``seg_fields`` on its own (lhoyer/DAFormer
mmseg/datasets/pipelines/transforms.py ``_resize_img``, ``_resize_seg``), ``RandomCrop`` takes the
box from the image and cuts it out of both, ``RandomFlip`` mirrors each array, ``Pad`` pads the
label to the image's padded shape.
"""
import csv

import numpy as np
import pytest
import torch

from sepico.data import check as data_check
from sepico.data.real import ACDC_CONDITIONS, DatasetError, SegmentationFolder
from sepico.data.transforms import output_size, resize_image, resize_label
from sepico.train import data as train_data
from tests.test_acdc import make_acdc
from tests.test_night import make_bdd100k_night, make_dark_zurich_pairs, make_nighttime_driving
from tests.helpers import cli, make_cityscapes, make_gta5, make_synthia, snapshot, write_png, write_png16_rgb

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CITYSCAPES_SPLITS = (("train", ("aachen", "bochum"), 2), ("val", ("frankfurt",), 2), ("test", ("berlin",), 1))
# name -> (builder, {(split, condition): (images, labels or None)} of the fixture tree, the split faults go in)
FIXTURES = {
    "gta5": (make_gta5, {("train", None): (4, 4)}, "train"),
    "synthia": (make_synthia, {("train", None): (3, 3)}, "train"),
    "cityscapes": (lambda root: make_cityscapes(root, splits=CITYSCAPES_SPLITS),
                   {("train", None): (4, 4), ("val", None): (2, 2), ("test", None): (1, None)}, "val"),
    "dark_zurich": (make_dark_zurich_pairs, {("train", None): (4, None), ("val", None): (2, 2), ("test", None): (2, None)},
                    "val"),
    "acdc": (make_acdc, {(split, c): (n, None if split == "test" else n)
                         for c in ACDC_CONDITIONS for split, n in (("train", 2), ("val", 1), ("test", 1))}, "val"),
    "nighttime_driving": (make_nighttime_driving, {("test", None): (2, 2)}, "test"),
    "bdd100k_night": (make_bdd100k_night, {("test", None): (2, 2)}, "test"),
}


def as_published(monkeypatch, name):
    """The fixture tree of ``name`` made the published dataset."""
    for (split, condition), (images, labels) in FIXTURES[name][1].items():
        monkeypatch.setitem(data_check.PUBLISHED, (name, split, condition),
                            data_check.Published(images, labels, "the fixture"))


def build(tmp_path, name):
    return FIXTURES[name][0](tmp_path / name)


def line(out: str, where: str, what: str) -> list[str]:
    """(found, published, status, the example's words...) of the table line for ``where`` (split or
    split/condition) and the check ``what``."""
    words = what.split()
    for text in out.splitlines():
        cells = text.split()
        if cells[:1] == [where] and cells[1:1 + len(words)] == words and cells[1 + len(words)][0].isdigit():
            return cells[1 + len(words):]
    raise AssertionError(f"no line {where} {what} in\n{out}")


def first_label(root, name):
    split = FIXTURES[name][2]
    folder = SegmentationFolder(name, root, split, conditions=("fog",) if name == "acdc" else ACDC_CONDITIONS)
    return folder, folder.labels[0], split + ("/fog" if name == "acdc" else "")


def write_label(path, ids, name):
    if name == "synthia":  # the class in the first channel of a 16-bit RGB PNG
        write_png16_rgb(path, np.stack([ids, ids, np.zeros_like(ids)], -1).astype(np.uint16))
    else:
        write_png(path, ids.astype(np.uint8))


# --------------------------------------------------------------------------- the table

@pytest.mark.parametrize("name", list(FIXTURES))
def test_a_folder_as_published_exits_0_and_counts_every_split(tmp_path, monkeypatch, name):
    root = build(tmp_path, name)
    before = snapshot(root)
    code, out, err = cli("check-data", "--data", name, "--root", root)
    assert code == 1 and "differ from the published dataset" in out, out + err  # a fixture tree is not the set
    first = next(iter(FIXTURES[name][1]))
    where = first[0] if first[1] is None else f"{first[0]}/{first[1]}"
    assert line(out, where, "images")[2] == "differs"
    as_published(monkeypatch, name)
    code, out, err = cli("check-data", "--data", name, "--root", root)
    assert code == 0 and out.strip().endswith("the folder is as published"), out + err
    for (split, condition), (images, labels) in FIXTURES[name][1].items():
        where = split if condition is None else f"{split}/{condition}"
        assert line(out, where, "images")[:3] == [str(images), str(images), "ok"]
        if labels is not None:
            assert line(out, where, "labels")[:3] == [str(labels), str(labels), "ok"]
    assert snapshot(root) == before  # nothing written into the dataset folder


@pytest.mark.parametrize("fault, what", [("missing label", "images without their label"),
                                         ("size mismatch", "pairs of different sizes"),
                                         ("unknown id", "labels with ids outside the scheme"),
                                         ("truncated PNG", "unreadable files")])
@pytest.mark.parametrize("name", list(FIXTURES))
def test_each_planted_fault_changes_its_line_and_the_exit_status(tmp_path, monkeypatch, name, fault, what):
    root = build(tmp_path, name)
    as_published(monkeypatch, name)
    folder, label, where = first_label(root, name)
    ids = folder.read_label_ids(label)
    if fault == "missing label":
        label.unlink()
    elif fault == "size mismatch":
        write_label(label, ids[:-4], name)
    elif fault == "unknown id":
        ids = ids.copy()
        ids[1, 1] = 200 if name != "synthia" else 40
        write_label(label, ids, name)
    else:
        label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    code, out, err = cli("check-data", "--data", name, "--root", root)
    assert "Traceback" not in err, err
    found, published, status, *example = line(out, where, what)
    tolerated = fault == "size mismatch" and name == "gta5"  # GTA5's release holds such pairs
    assert found == "1" and published == "0" and status == ("tolerated" if tolerated else "fault"), out
    assert label.name in " ".join(example)  # the line names the file
    assert code == (0 if tolerated else 1), out
    if fault == "missing label":
        labels = FIXTURES[name][1][(FIXTURES[name][2], "fog" if name == "acdc" else None)][1]
        assert line(out, where, "labels")[:3] == [str(labels - 1), str(labels), "differs"]


@pytest.mark.parametrize("name", ["dark_zurich", "acdc"])
def test_a_missing_daytime_image_is_a_fault_of_the_training_split(tmp_path, monkeypatch, name):
    root = build(tmp_path, name)
    as_published(monkeypatch, name)
    if name == "acdc":
        missing = next((root / "rgb_anon" / "fog" / "train_ref").rglob("*_rgb_ref_anon.png"))
        where = "train/fog"
    else:  # drop a night image's row from its correspondence file
        corresp = sorted((root / "corresp" / "train" / "night").glob("*.csv"))[0]
        rows = list(csv.reader(corresp.open()))
        missing = rows[0][0].split("/")[-1]
        with corresp.open("w", newline="") as f:
            csv.writer(f).writerows(rows[1:])
        where = "train"
    if name == "acdc":
        missing.unlink()
        missing = missing.name
    code, out, _ = cli("check-data", "--data", name, "--root", root, "--split", "train")
    found, published, status, *example = line(out, where, "images without their daytime image")
    assert code == 1 and (found, published, status) == ("1", "0", "fault"), out
    assert missing in " ".join(example)


def test_the_default_reads_a_sample_and_deep_reads_every_file(tmp_path, monkeypatch):
    root = make_gta5(tmp_path / "gta5", n=5)
    as_published(monkeypatch, "gta5")
    monkeypatch.setitem(data_check.PUBLISHED, ("gta5", "train", None), data_check.Published(5, 5, "the fixture"))
    broken = root / "labels" / "00001.png"  # not among 2 evenly spaced pairs of 5 (the first and the last)
    broken.write_bytes(broken.read_bytes()[:40])
    sample = data_check.check_dataset("gta5", root, sample=2)
    assert sample.ok and sample.read == 4 and sample.listed == 10
    assert "read 4 of 10 files: a sample of up to 2 evenly spaced" in sample.table()
    assert line(sample.table(), "train", "unreadable files")[:2] == ["0", "of"]
    code, out, _ = cli("check-data", "--data", "gta5", "--root", root, "--deep", "--no-progress")
    assert code == 1 and "read 10 of 10 files: every file (--deep)" in out
    assert "labels/00001.png: cannot read the label" in out


def test_bad_arguments_are_one_line(tmp_path):
    root = make_gta5(tmp_path / "gta5", n=1)
    for args, words in ((["gta5", "--root", root, "--split", "val"], "--split: gta5 has the split(s) train, not val"),
                        (["gta5", "--root", tmp_path / "nowhere"], "--root: no folder"),
                        (["foo", "--root", root], "--data: unknown dataset 'foo'; choose one of gta5, synthia")):
        code, out, err = cli("check-data", "--data", *args)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1 and words in err, err


def test_the_quick_check_of_a_run_warns_in_one_line_and_never_stops_it(tmp_path, capsys):
    from tests.helpers import real_config

    cfg = real_config(tmp_path, "gta5", make_gta5(tmp_path / "gta5"), "cityscapes",
                      make_cityscapes(tmp_path / "cityscapes"))
    summary = train_data.check_run_data(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: data check") and "gta5 train images: 4 (published 24966)" in err[0]
    assert set(summary) == {"source", "target", "target_test"}
    assert summary["source"]["counts"] == {"train": {"images": 4, "labels": 4}} and not summary["source"]["as_published"]
    assert summary["target_test"]["counts"] == {"val": {"images": 2, "labels": 2}}


# --------------------------------------------------------------------------- GTA5 pairs of different sizes

@pytest.mark.parametrize("label_size, resize", [((37, 70), (36, 64)), ((44, 76), None)])
def test_gta5_pairs_of_different_sizes_train_as_the_official_pipeline_takes_them(tmp_path, label_size, resize):
    root = make_gta5(tmp_path / "gta5", n=1, size=(40, 72))
    ids = np.full(label_size, 7, np.uint8)  # road
    ids[:, : label_size[1] // 3] = 26  # car on the left: a flip shows where the label went
    write_png(root / "labels" / "00000.png", ids)
    folder = SegmentationFolder("gta5", root)
    view = train_data.TrainingView(folder, resize=resize, crop=(24, 60), keep_ratio=True, flip=True)
    for position in range(6):
        draw = train_data.Draw(0, 3, position)
        image, label = view[draw]
        # mmseg: Resize each on its own, RandomCrop (the image's box), RandomFlip each, Pad the label with 255
        pixels, train = np.asarray(folder.read_image(0)), folder.read_label(0)
        if resize:
            pixels = resize_image(pixels, output_size(*pixels.shape[:2], resize, True))
            train = resize_label(train, output_size(*train.shape, resize, True))
        assert train.shape != pixels.shape[:2]
        rng = train_data._generator(3, position, train_data._CROP_DRAW)
        y, x = view._choose_crop(train, pixels.shape[:2], -1, rng)
        pixels, train = pixels[y:y + 24, x:x + 60], train[y:y + 24, x:x + 60]
        if rng.random() < 0.5:
            pixels, train = pixels[:, ::-1], train[:, ::-1]
        expected = np.full((24, 60), 255, np.uint8)
        expected[: train.shape[0], : train.shape[1]] = train
        assert torch.equal(label, torch.from_numpy(expected.astype(np.int64))), position
        assert torch.equal(image, train_data.image_to_tensor(pixels))


def test_other_datasets_still_refuse_a_label_of_another_size(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes", splits=(("train", ("aachen",), 1),))
    label = next((root / "gtFine").rglob("*_labelIds.png"))
    write_png(label, np.full((30, 64), 7, np.uint8))
    view = train_data.TrainingView(SegmentationFolder("cityscapes", root), crop=(16, 32))
    with pytest.raises(DatasetError, match=r"label is 64 x 30 \(W x H\) but its image"):
        view[train_data.Draw(0, 0, 0)]


def test_a_truncated_image_is_named_by_the_check(tmp_path, monkeypatch):
    root = make_gta5(tmp_path / "gta5", n=2)
    as_published(monkeypatch, "gta5")
    monkeypatch.setitem(data_check.PUBLISHED, ("gta5", "train", None), data_check.Published(2, 2, "the fixture"))
    image = root / "images" / "00000.png"
    image.write_bytes(image.read_bytes()[:60])
    code, out, _ = cli("check-data", "--data", "gta5", "--root", root)
    assert code == 1 and "images/00000.png: cannot read the image" in out
