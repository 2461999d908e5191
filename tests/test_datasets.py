"""Real-dataset loaders on tiny fixture trees in the published layouts: label tables against the
published definitions, layout errors, training crops, rare-class sampling, deterministic streams,
and a couple of training iterations per benchmark."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sepico.data import rcs as rcs_module
from sepico.data.night import class_prior_weights
from sepico.data.label_maps import (CITYSCAPES_ID_TO_TRAIN_ID, GTA5_ID_TO_TRAIN_ID, PROTOCOLS,
                                    SYNTHIA_ID_TO_TRAIN_ID, lookup_table, to_train_ids)
from sepico.data.rcs import RareClassSampler, class_pixel_counts, load_class_stats
from sepico.data.real import DatasetError, SegmentationFolder
from sepico.evaluation import evaluate, iou_from_confusion
from sepico.train import Trainer
from sepico.train.config import Config, validate
from sepico.errors import ConfigError
from sepico.train.data import BatchStream, Draw, TrainingView, build_datasets
from tests.helpers import make_cityscapes, make_dark_zurich, make_gta5, make_synthia, real_config, write_png, write_png16_rgb

# --------------------------------------------------------------------------- published facts

# SYNTHIA RAND-CITYSCAPES README class ids, and the Cityscapes train id each becomes in the
# SYNTHIA -> Cityscapes benchmark (DAFormer's convert_datasets/synthia.py mapping).
SYNTHIA_TO_TRAIN = {
    0: 255,   # void
    1: 10,    # sky
    2: 2,     # building
    3: 0,     # road
    4: 1,     # sidewalk
    5: 4,     # fence
    6: 8,     # vegetation
    7: 5,     # pole
    8: 13,    # car
    9: 7,     # traffic sign
    10: 11,   # pedestrian -> person
    11: 18,   # bicycle
    12: 17,   # motorcycle
    13: 255,  # parking-slot
    14: 255,  # road-work
    15: 6,    # traffic light
    16: 9,    # terrain (absent from the images)
    17: 12,   # rider
    18: 14,   # truck (absent)
    19: 15,   # bus
    20: 16,   # train (absent)
    21: 3,    # wall
    22: 255,  # lanemarking
}
# SYNTHIA -> Cityscapes protocols (SePiCo / DAFormer tables): mIoU16 and mIoU13 classes.
SYNTHIA_16 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
              "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle"]
SYNTHIA_13 = [n for n in SYNTHIA_16 if n not in ("wall", "fence", "pole")]


def test_label_tables_match_the_published_definitions():
    # The Cityscapes and GTA5 tables are compared with cityscapesscripts in tests/test_cityscapesscripts.py.
    from sepico.data.cityscapes import CLASS_NAMES

    assert GTA5_ID_TO_TRAIN_ID == CITYSCAPES_ID_TO_TRAIN_ID
    assert SYNTHIA_ID_TO_TRAIN_ID == SYNTHIA_TO_TRAIN
    assert PROTOCOLS["19"] == tuple(range(19))
    assert [CLASS_NAMES[c] for c in PROTOCOLS["16"]] == SYNTHIA_16
    assert [CLASS_NAMES[c] for c in PROTOCOLS["13"]] == SYNTHIA_13


def test_to_train_ids_refuses_unknown_ids_unless_told():
    table = lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)
    ids = np.array([[7, 26], [0, 34]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"some/file\.png: unknown label id\(s\) \[34\]"):
        to_train_ids(ids, table, where="some/file.png")
    assert to_train_ids(ids, table, where="x", strict=False).tolist() == [[0, 13], [255, 255]]


# --------------------------------------------------------------------------- fixture trees


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    return {"gta5": make_gta5(base / "gta5"), "synthia": make_synthia(base / "synthia"),
            "cityscapes": make_cityscapes(base / "cityscapes"),
            "dark_zurich": make_dark_zurich(base / "dark_zurich")}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- reading

def test_gta5_items_are_train_ids(trees):
    ds = SegmentationFolder("gta5", trees["gta5"])
    assert len(ds) == 4 and ds.images[0].name == "00000.png"
    image, label = ds[3]
    assert image.shape == (3, 40, 72) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label.dtype == torch.int64 and label.shape == (40, 72)
    assert set(label.unique().tolist()) == {0, 2, 10, 13, 18, 255}  # road building sky car bicycle void
    assert label[0, 0] == 255 and label[-1, -1] == 0 and label[1, 1] == 10


def test_synthia_reads_the_first_channel_at_16_bits(trees):
    ds = SegmentationFolder("synthia", trees["synthia"])
    _, label = ds[0]
    assert label.shape == (24, 40)
    # SYNTHIA 1 sky, 2 building, 3 road, 8 car, 0 void -> 10, 2, 0, 13, 255; channel 2 (instance
    # ids up to ~8000) must not leak in.
    assert set(label.unique().tolist()) == {10, 2, 0, 13, 255}
    assert label[1, 1] == 10 and label[-1, -1] == 0


def test_synthia_class_id_above_255_is_unknown(tmp_path):
    lab = np.full((6, 8, 3), 3, dtype=np.uint16)
    lab[2, 2, 0] = 259  # low byte 3 would pass for road if the high byte were dropped
    write_png(tmp_path / "RGB" / "0000001.png", np.zeros((6, 8, 3), np.uint8))
    write_png16_rgb(tmp_path / "GT" / "LABELS" / "0000001.png", lab)
    ds = SegmentationFolder("synthia", tmp_path)
    with pytest.raises(ValueError, match=r"0000001\.png: unknown label id\(s\) \[259\]"):
        ds[0]


def test_cityscapes_and_dark_zurich_layouts(trees):
    train = SegmentationFolder("cityscapes", trees["cityscapes"], "train")
    assert [p.parent.name for p in train.images] == ["aachen", "aachen", "bochum", "bochum"]
    assert train.labels[0].name == "aachen_000000_000019_gtFine_labelIds.png"
    val = SegmentationFolder("cityscapes", trees["cityscapes"], "val")
    assert len(val) == 2 and set(val[0][1].unique().tolist()) <= {0, 2, 10, 13, 255}
    night = SegmentationFolder("dark_zurich", trees["dark_zurich"], "train", labelled=False)
    assert len(night) == 3 and night.labels is None
    image, label = night[0]
    assert image.shape == (3, 32, 64) and bool((label == 255).all())
    dz_val = SegmentationFolder("dark_zurich", trees["dark_zurich"], "val")
    assert dz_val.labels[0].name == "GOPR0356_frame_000000_gt_labelTrainIds.png"
    assert set(dz_val[1][1].unique().tolist()) <= {0, 2, 10, 13, 255}


def test_layout_errors_name_the_path(tmp_path, trees):
    with pytest.raises(DatasetError, match=r"missing folder .*nowhere[/\\]images"):
        SegmentationFolder("gta5", tmp_path / "nowhere")
    broken = make_gta5(tmp_path / "broken", n=2)
    (broken / "labels" / "00001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) without a label, e.g. .*00001\.png has no"):
        SegmentationFolder("gta5", broken)
    write_png(broken / "labels" / "00001.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"labels[/\\]00001\.png: label is 10 x 10 \(W x H\) but its image"):
        SegmentationFolder("gta5", broken)[1]
    write_png(broken / "labels" / "00001.png", np.zeros((40, 72, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"00001\.png: label has mode RGB"):
        SegmentationFolder("gta5", broken)[1]
    bad_id = np.full((40, 72), 7, np.uint8)
    bad_id[3, 3] = 200
    write_png(broken / "labels" / "00001.png", bad_id)
    with pytest.raises(ValueError, match=r"00001\.png: unknown label id\(s\) \[200\]"):
        SegmentationFolder("gta5", broken)[1]
    assert SegmentationFolder("gta5", broken, strict=False)[1][1][3, 3] == 255
    # The same through the config: a ConfigError that names the field.
    cfg = real_config(tmp_path, "gta5", tmp_path / "missing", "cityscapes", trees["cityscapes"])
    with pytest.raises(ConfigError, match=r"'data.source_root': no folder .*missing"):
        build_datasets(cfg)
    empty = tmp_path / "cs_without_val"
    make_cityscapes(empty, splits=(("train", ("aachen",), 1),))
    cfg = real_config(tmp_path, "gta5", trees["gta5"], "cityscapes", empty)
    with pytest.raises(ConfigError, match=r"'data.target_root': cityscapes: missing folder .*leftImg8bit[/\\]val"):
        build_datasets(cfg)


# --------------------------------------------------------------------------- training views

def test_training_view_crop_flip_are_functions_of_the_draw(trees):
    folder = SegmentationFolder("gta5", trees["gta5"])
    view = TrainingView(folder, resize=(30, 54), crop=(16, 24), flip=True, cat_max_ratio=0.75)
    a, b = view[Draw(1, 5, 10)], view[Draw(1, 5, 10)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 16, 24) and a[1].shape == (16, 24)
    crops = {view[Draw(1, 5, p)][0].sum().item() for p in range(12)}
    assert len(crops) > 3  # different positions, different crops / flips
    big = TrainingView(folder, crop=(48, 80), flip=False)[Draw(0, 0, 0)]
    assert big[0].shape == (3, 48, 80) and bool((big[1][40:] == 255).all()) and big[0][:, 40:].sum() == 0
    # Every class-ratio-checked crop holds more than one class whenever such a crop exists.
    for p in range(10):
        label = view[Draw(2, 1, p)][1]
        assert len(set(label.unique().tolist()) - {255}) > 1


def test_rare_class_sampler_follows_the_daformer_formula():
    counts = np.array([[900, 100, 0], [800, 0, 5000], [1000, 3000, 0]])
    sampler = RareClassSampler(counts, temperature=0.5, min_pixels=1000)
    freq = counts.sum(0) / counts.sum()
    assert np.allclose(sampler.frequency, freq)
    logits = (1 - freq) / 0.5  # every class has an image with >= 1000 pixels of it
    expected = np.exp(logits) / np.exp(logits).sum()
    assert sampler.classes.tolist() == [0, 1, 2]
    assert np.allclose(sampler.probabilities, expected)
    assert sampler.images_with[1].tolist() == [2] and sampler.images_with[2].tolist() == [1]
    strict = RareClassSampler(counts, temperature=0.01, min_pixels=3000)
    assert strict.classes.tolist() == [1, 2]  # class 0 never reaches 3000 pixels in one image
    draws = [strict.draw(np.random.default_rng([0, p])) for p in range(200)]
    assert draws == [strict.draw(np.random.default_rng([0, p])) for p in range(200)]
    assert all((i, c) in ((2, 1), (1, 2)) for i, c in draws)


def test_class_statistics_are_cached_and_refreshed(tmp_path, trees, monkeypatch):
    folder = SegmentationFolder("gta5", trees["gta5"])
    path = tmp_path / "stats.json"
    counts = load_class_stats(folder, path, 19)
    data = json.loads(path.read_text())
    assert data["files"] == [f"labels/{i:05d}.png" for i in range(4)]
    assert counts.shape == (4, 19) and counts[3, 18] == 60 and counts[:3, 18].sum() == 0
    assert counts.sum() == sum((folder.read_label(i) != 255).sum() for i in range(4))
    monkeypatch.setattr(rcs_module, "class_pixel_counts", lambda *a, **k: pytest.fail("recomputed"))
    assert np.array_equal(load_class_stats(folder, path, 19), counts)
    monkeypatch.undo()
    data["files"][0] = "labels/other.png"  # a different dataset: recompute
    path.write_text(json.dumps(data))
    assert np.array_equal(load_class_stats(folder, path, 19), class_pixel_counts(folder, 19))
    assert json.loads(path.read_text())["files"][0] == "labels/00000.png"


def test_streams_with_rcs_resume_bit_exactly(tmp_path, trees):
    cfg = real_config(tmp_path, "gta5", trees["gta5"], "cityscapes", trees["cityscapes"],
                      rcs_temperature=0.01, rcs_min_pixels=50)
    data = build_datasets(cfg)
    assert (tmp_path / "run" / "class_stats_gta5.json").is_file()
    assert data.source.rare_class_sampler is not None
    run = BatchStream(data.source, 2, seed=3, start=0)
    batches = [run.next() for _ in range(4)]
    resumed = BatchStream(data.source, 2, seed=3, start=2)
    for expected in batches[2:]:
        got = resumed.next()
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The rare class (bicycle, 60 pixels in one image) is drawn far more often than 1 in 4.
    seen = sum(bool((lbl == 18).any()) for _, lbls in batches for lbl in lbls)
    assert seen >= 4
    target = BatchStream(data.target, 2, seed=9, start=1).next()
    assert target[0].shape == (2, 3, 32, 64) and bool((target[1] == 255).all())


# --------------------------------------------------------------------------- config and training


def test_config_validation_of_the_data_fields(tmp_path):
    def check(match, **data):
        cfg = Config()
        for k, v in data.items():
            setattr(cfg.data, k, v)
        with pytest.raises(ConfigError, match=match):
            validate(cfg)

    check(r"'data.crop_size' must be \(0, 0\) or two sizes", crop_size=(0, 64))
    check(r"'data.eval_protocol' must be 0 \(auto\), 19, 16 or 13", eval_protocol=17)
    check(r"'data.eval_mode' must be one of whole, slide", eval_mode="tiles")
    check(r"'data.rcs_temperature': rare-class sampling needs a real", rcs_temperature=0.01)
    check(r"'data.source_root' must name the gta5 folder", source="gta5")
    check(r"'data.target' must be one of synthetic, cityscapes, dark_zurich", target="gta5")
    check(r"'data.cat_max_ratio' must be in \(0, 1\]", cat_max_ratio=0.0)


def test_streams_of_different_sizes_are_refused(tmp_path, trees):
    cfg = real_config(tmp_path, "gta5", trees["gta5"], "cityscapes", trees["cityscapes"], crop_size=[0, 0])
    with pytest.raises(ConfigError, match=r"source images reach the trainer at 36 x 64 and target images at 32 x 64"):
        build_datasets(cfg)


@pytest.mark.parametrize("source,target,protocol", [
    ("gta5", "cityscapes", 19),
    ("synthia", "cityscapes", 16),
    ("cityscapes", "dark_zurich", 19),
])
def test_trains_and_evaluates_on_fixture_trees(tmp_path, trees, source, target, protocol):
    extra = {"rcs_temperature": 0.01, "rcs_min_pixels": 20} if source == "gta5" else {}
    extra |= {"source_size": [0, 0]} if source == "cityscapes" else {}
    extra |= {"source_size": [40, 64]} if source == "synthia" else {}
    cfg = real_config(tmp_path, source, trees[source], target, trees[target], **extra)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.data.eval_classes == PROTOCOLS[str(protocol)]
    result = trainer.train()
    assert trainer.iteration == 2
    assert set(result["protocols"]) == {"19", "16", "13"}
    assert sorted(result["iou"]) == list(PROTOCOLS[str(protocol)])
    # the reported figures are the final student's on the target's labelled split, every labelled pixel counted
    direct = evaluate(trainer.model, trainer.data.target_test, num_classes=19, classes=trainer.data.eval_classes,
                      batch_size=1, prior=None if target != "dark_zurich" else class_prior_weights(0.16))
    assert result["confusion"] == direct["confusion"]
    assert result["miou"] == pytest.approx(iou_from_confusion(torch.tensor(direct["confusion"]),
                                                              PROTOCOLS[str(protocol)])["miou"], abs=1e-9)
    labelled = sum(int((label != 255).sum()) for _, label in trainer.data.target_test)
    assert sum(map(sum, direct["confusion"])) == labelled > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_cl_src" in records[-2] and "loss_mix" in records[-2]
    assert records[-1] == {"iteration": 2, "miou": result["miou"]}  # the final evaluation


@pytest.mark.parametrize("name", ["gta5_to_cityscapes_daformer_dist", "synthia_to_cityscapes_daformer_dist",
                                  "cityscapes_to_darkzurich_daformer_dist", "gta5_to_cityscapes_fullres",
                                  "gta5_to_cityscapes_deeplabv2_dist", "cityscapes_to_darkzurich_deeplabv2_dist",
                                  "cityscapes_to_acdc_daformer_dist"])
def test_real_dataset_configs_load(name):
    from sepico.train.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml")
    model = "deeplabv2_r101" if "deeplabv2" in name else "daformer_mit_b5"
    assert cfg.model.name == model and cfg.data.rcs_temperature == 0.01
    assert tuple(cfg.data.crop_size) in ((640, 640), (1024, 2048))
    if name.endswith("fullres"):
        assert cfg.model.activation_checkpointing and cfg.train.amp and cfg.train.batch_size == 1


def test_deeplabv2_config_is_the_published_setting():
    # BIT-DA/SePiCo experiments.py: defaults l. 217-253 (40k iterations, AdamW 6e-5 with head lr x 10,
    # poly10warm, batch 2, 640 x 640 crops, rcs 0.01, rows 15 / 120 without pseudo weight, distributions
    # from iteration 3000, temperature 100, projection channels 512, seed 76) and id 1 l. 264-287
    # (dlv2_proj on r101v1c, pseudo_random_crop + regen_pseudo, stage 4 alone, DistCL with the
    # regulariser at relative weight 1.0).
    from sepico.train.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    dl = load_config(root / "gta5_to_cityscapes_deeplabv2_dist.toml")
    assert (dl.model.name, dl.model.proj_dim, dl.train.seed, dl.train.max_iters) == ("deeplabv2_r101", 512, 76, 40000)
    assert (dl.optim.lr, dl.optim.head_lr_mult, dl.train.batch_size, tuple(dl.data.crop_size)) == (6e-5, 10.0, 2, (640, 640))
    m = dl.method
    assert (m.variant, m.temperature, m.reg_weight, m.start_distribution_iter) == ("dist", 100.0, 1.0, 3000)
    assert m.pseudo_crop and (m.ignore_top, m.ignore_bottom) == (15, 120) and not dl.train.amp
    # Everything but the model is the DAFormer run's.
    da = load_config(root / "gta5_to_cityscapes_daformer_dist.toml")
    for section in ("data", "optim", "method", "train"):
        assert getattr(dl, section) == getattr(da, section), section
