"""ACDC (fog, night, rain, snow) as a target: the official layout, the reference images as daytime
correspondences of the day-night method, evaluation per condition, and the test export.

Facts:
- ACDC's archives (rgb_anon_trainvaltest.zip, gt_trainval.zip) unpack to
  ``rgb_anon/<condition>/<split>/<sequence>/`` and ``gt/<condition>/<split>/<sequence>/``
  (lhoyer/HRDA README.md l. 175-185: the folders are ``condition/split/sequence/``, and the train ids
  are the ``*_labelTrainIds.png`` files of ``gt``; brdav/refign README, "ACDC": ``rgb_anon/{fog,night,
  rain,snow}``, ``gt/{fog,night,rain,snow}``).
- brdav/refign data_modules/datasets/acdc.py (``ACDC.__init__``): images
  ``rgb_anon/<condition>/<split>/<recording>/*``, the reference image of each in
  ``<split>_ref/<recording>/`` with ``rgb_anon`` replaced by ``rgb_ref_anon`` in the file name, the label
  ``gt/<condition>/<split>/<recording>/`` with ``rgb_anon.png`` replaced by ``gt_labelTrainIds.png``;
  ``orig_dims = (1080, 1920)``. lhoyer/DAFormer mmseg/datasets/acdc.py: ``img_suffix='_rgb_anon.png'``,
  ``seg_map_suffix='_gt_labelTrainIds.png'``.
- File names ``<sequence>_frame_<frame:06d>_rgb_anon.png``, sequences such as GP010176 (snow), GOPR0573
  (rain), GOPR0355 (night), GP010475 (fog) (UNIZG-FER-D307/semseg-in-adverse-conditions README, its
  ACDC prediction figures).
"""
import numpy as np
import pytest

from sepico.data.night import CorrespondenceError, day_images
from sepico.data.real import ACDC_CONDITIONS, DatasetError, SegmentationFolder
from sepico.errors import ConfigError
from sepico.train.config import apply_overrides, from_dict, validate
from tests.test_datasets import _image, _scene_ids, write_png

SIZE = (36, 64)
TRAIN_IDS = {"sky": 10, "building": 2, "road": 0, "car": 13, "void": 255}
SEQUENCES = {"fog": "GP010475", "night": "GOPR0355", "rain": "GOPR0573", "snow": "GP010176"}


def make_acdc(root, size=SIZE, conditions=ACDC_CONDITIONS):
    """Per condition: two training images, one labelled val image, one test image, each with its
    reference image; the val label beside the label-id file the archive also holds."""
    rng = np.random.default_rng(0)
    for c, condition in enumerate(conditions):
        seq = SEQUENCES[condition]
        for split, count in (("train", 2), ("val", 1), ("test", 1)):
            for j in range(count):
                stem = f"{seq}_frame_{100 * c + 10 * j + len(split):06d}"
                ids = _scene_ids(*size, TRAIN_IDS, c + j).astype(np.uint8)
                write_png(root / "rgb_anon" / condition / split / seq / f"{stem}_rgb_anon.png", _image(ids, c + j))
                write_png(root / "rgb_anon" / condition / f"{split}_ref" / seq / f"{stem}_rgb_ref_anon.png",
                          rng.integers(0, 256, size + (3,), dtype=np.uint8))
                if split != "test":
                    write_png(root / "gt" / condition / split / seq / f"{stem}_gt_labelTrainIds.png", ids)
                    write_png(root / "gt" / condition / split / seq / f"{stem}_gt_labelIds.png",
                              np.full(size, 7, np.uint8))
    return root


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    return make_acdc(tmp_path_factory.mktemp("acdc") / "acdc")


def test_the_official_layout_condition_by_condition(acdc):
    val = SegmentationFolder("acdc", acdc, "val")
    assert [p.relative_to(acdc).parts[1] for p in val.images] == list(ACDC_CONDITIONS)
    assert all(label.name.endswith("_gt_labelTrainIds.png") for label in val.labels)
    image, label = val[0]
    assert image.shape[-2:] == SIZE and set(label.unique().tolist()) <= {0, 2, 10, 13, 255}
    assert int((label == 255).sum()) == 1  # train ids read as they are
    some = SegmentationFolder("acdc", acdc, "train", labelled=False, conditions=("snow", "fog"))
    assert [p.parts[-4] for p in some.images] == ["snow", "snow", "fog", "fog"] and some.labels is None
    test = SegmentationFolder("acdc", acdc, "test", labelled=False)
    assert len(test) == 4 and all(p.parts[-3] == "test" for p in test.images)
    with pytest.raises(DatasetError, match=r"conditions must be some of fog, night, rain, snow, each once"):
        SegmentationFolder("acdc", acdc, "val", conditions=("fog", "haze"))
    with pytest.raises(DatasetError, match=r"missing folder .*gt[/\\]fog[/\\]test"):
        SegmentationFolder("acdc", acdc, "test")  # test labels are not public


def test_reference_images_are_the_daytime_correspondences(acdc, tmp_path):
    folder = SegmentationFolder("acdc", acdc, "train", labelled=False)
    days = day_images("acdc", acdc, folder.images)
    for image, day in zip(folder.images, days):
        rel = image.relative_to(acdc).parts  # rgb_anon, condition, train, sequence, name
        assert day.relative_to(acdc).parts == (rel[0], rel[1], "train_ref", rel[3],
                                               rel[4].replace("_rgb_anon.png", "_rgb_ref_anon.png"))
    import shutil
    broken = tmp_path / "acdc"
    shutil.copytree(acdc, broken)
    missing = next((broken / "rgb_anon" / "rain" / "train_ref").rglob("*.png"))
    missing.unlink()
    with pytest.raises(CorrespondenceError, match=f"acdc: the reference image of .* is missing: .*{missing.name}"):
        day_images("acdc", broken, SegmentationFolder("acdc", broken, "train", labelled=False).images)


def test_config_fields_of_an_acdc_target(acdc):
    cfg = from_dict({"data": {"source": "cityscapes", "source_root": str(acdc), "target": "acdc",
                              "target_root": str(acdc), "acdc_conditions": ["night", "snow"]},
                     "method": {"day_night": True}})
    validate(cfg)
    assert cfg.data.acdc_conditions == ("night", "snow")
    apply_overrides(cfg, ["data.acdc_conditions=fog,rain"])
    assert cfg.data.acdc_conditions == ("fog", "rain")
    for bad in ("fog,fog", "sunny", "[]"):
        apply_overrides(cfg, [f"data.acdc_conditions={bad}"])
        with pytest.raises(ConfigError, match="'data.acdc_conditions' must name some of fog, night, rain, snow"):
            validate(cfg)
    with pytest.raises(ConfigError, match="'data.acdc_conditions' must be a list of names"):
        apply_overrides(cfg, ["data.acdc_conditions=[1, 2]"])
    cfg.data.acdc_conditions, cfg.data.target = ACDC_CONDITIONS, "cityscapes"
    with pytest.raises(ConfigError, match=r"'method.day_night' needs a target whose images have daytime "
                                          r"counterparts \(dark_zurich, acdc\)"):
        validate(cfg)
