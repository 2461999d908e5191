"""The Cityscapes team's own package (``cityscapesscripts`` 2.3.0, a test dependency) as the reference
for our label tables, the train id -> label id conversion, the confusion matrix and the mIoU.

Facts (cityscapesscripts 2.3.0 as installed from PyPI):
- helpers/labels.py l. 62-99: ``labels``, one ``Label(name, id, trainId, category, categoryId,
  hasInstances, ignoreInEval, color)`` per label id 0..33, and ``license plate`` with id -1
  (never in a label image, l. 23); l. 113: ``trainId2label`` built over ``reversed(labels)``, so
  each train id names the first label that has it (mmseg's ``_convert_to_label_id``, lhoyer/DAFormer
  mmseg/datasets/cityscapes.py l. 41-51, goes through it).
- evaluation/evalPixelLevelSemanticLabeling.py l. 4: the test server runs this script; l. 18-20:
  predictions are images of label ids, not train ids; l. 228-254 (``getIouScoreForLabel``): IoU =
  tp / (tp + fp + fn) with the false positives counted only on pixels whose ground truth is an
  evaluated label; l. 285-294: the average skips NaN scores; l. 459 (``evaluateImgLists``) and
  l. 550 (``evaluatePair``) score lists of files.
- The same script calls ``np.in1d`` (l. 606 for the instance-level scores, l. 646 for the pixel
  accuracy), which NumPy 2.4 removed: the tests switch both off (``evalInstLevelScore``,
  ``evalPixelAccuracy``) and call the pixel-level parts only; the C extension is not built by the
  PyPI wheel, so ``evaluatePair`` takes its NumPy path (l. 587-599).
"""
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers import labels as cs_labels
from sepico.cli import main
from sepico.data.cityscapes import CLASS_NAMES, PALETTE
from sepico.data.label_maps import (CITYSCAPES_ID_TO_TRAIN_ID, GTA5_ID_TO_TRAIN_ID, SYNTHIA_CLASS_NAMES,
                                    SYNTHIA_ID_TO_TRAIN_ID, TRAIN_ID_TO_CITYSCAPES_ID, lookup_table,
                                    to_label_ids, to_train_ids)
from sepico.evaluation import confusion_matrix, iou_from_confusion
from sepico.models import build_model
from sepico.train.checkpoint import atomic_save
from sepico.train.config import Config
from tests.helpers import image_file, make_cityscapes, tiny_model, weight_file, write_png

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LABELS = [label for label in cs_labels.labels if label.id >= 0]  # the ids a label image can hold
EVALUATED = [label for label in LABELS if not label.ignoreInEval]


def test_class_table_equals_cityscapesscripts():
    assert sorted(CITYSCAPES_ID_TO_TRAIN_ID) == [label.id for label in LABELS] == list(range(34))
    for label in LABELS:
        assert CITYSCAPES_ID_TO_TRAIN_ID[label.id] == label.trainId, label.name
        assert (label.trainId == 255) == label.ignoreInEval, label.name
    assert [label.name for label in sorted(EVALUATED, key=lambda l: l.trainId)] == list(CLASS_NAMES)
    assert [label.color for label in sorted(EVALUATED, key=lambda l: l.trainId)] == [tuple(c) for c in PALETTE.tolist()]
    # train id -> label id, as mmseg's results2img(to_label_id=True) converts
    assert TRAIN_ID_TO_CITYSCAPES_ID == {t: cs_labels.trainId2label[t].id for t in range(len(CLASS_NAMES))}


def test_gta5_and_synthia_maps_name_the_cityscapes_classes():
    assert GTA5_ID_TO_TRAIN_ID == {label.id: label.trainId for label in LABELS}  # GTA5 stores Cityscapes ids
    aliases = {"pedestrian": "person"}  # SYNTHIA's name of the Cityscapes class
    for synthia_id, train_id in SYNTHIA_ID_TO_TRAIN_ID.items():
        name = aliases.get(SYNTHIA_CLASS_NAMES[synthia_id], SYNTHIA_CLASS_NAMES[synthia_id])
        if train_id == 255:  # void, parking-slot, road-work, lanemarking: no evaluated Cityscapes class
            assert name not in {label.name for label in EVALUATED}, name
        else:
            assert cs_labels.name2label[name].trainId == train_id, name


def test_label_ids_of_train_ids_are_cityscapes_labels():
    train_ids = np.arange(19, dtype=np.uint8).reshape(1, 19)
    ids = to_label_ids(train_ids)
    assert ids.dtype == np.uint8
    assert [cs_labels.id2label[int(i)].trainId for i in ids.ravel()] == list(range(19))
    with pytest.raises(ValueError, match="found 255"):
        to_label_ids(np.array([[0, 255]], dtype=np.uint8))


def reference_scores(tmp_path, predictions, ground_truths):
    """cityscapesscripts' confusion matrix and class IoUs of label-id maps, through its own file reader."""
    args = cs_eval.CArgs()
    vars(args).update(vars(cs_eval.args))
    args.evalInstLevelScore = args.evalPixelAccuracy = False  # the two np.in1d paths (NumPy 2.4 has no in1d)
    args.JSONOutput, args.quiet = False, True
    pred_files, gt_files = [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        pred_files.append(str(tmp_path / f"frankfurt_000000_{i:06d}_pred.png"))
        gt_files.append(str(tmp_path / f"frankfurt_000000_{i:06d}_gtFine_labelIds.png"))
        Image.fromarray(pred).save(pred_files[-1])
        Image.fromarray(gt).save(gt_files[-1])
    return cs_eval.evaluateImgLists(pred_files, gt_files, args)


def test_confusion_matrix_and_miou_equal_the_pixel_level_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    evaluated_ids = np.array([label.id for label in EVALUATED], dtype=np.uint8)
    gts, preds = [], []
    for h, w in ((32, 64), (24, 40)):
        gts.append(rng.integers(0, 34, (h, w)).astype(np.uint8))  # ignored ids included
        preds.append(rng.choice(evaluated_ids[:-2], (h, w)))  # what sepico writes; motorcycle, bicycle never
    gts[0][:4] = 33  # bicycle in the ground truth only: IoU 0
    reference = reference_scores(tmp_path, preds, gts)
    table = lookup_table(CITYSCAPES_ID_TO_TRAIN_ID)
    conf = sum(confusion_matrix(torch.from_numpy(to_train_ids(p, table, where="pred").astype(np.int64)),
                                torch.from_numpy(to_train_ids(g, table, where="gt").astype(np.int64)), 19)
               for p, g in zip(preds, gts))
    cs_conf = np.array(reference["confMatrix"])
    rows = [label.id for label in sorted(EVALUATED, key=lambda l: l.trainId)]
    np.testing.assert_array_equal(conf.numpy(), cs_conf[np.ix_(rows, rows)])
    ours = iou_from_confusion(conf, range(19))
    for label in EVALUATED:
        expected = reference["classScores"][label.name] * 100
        assert ours["iou"][label.trainId] == pytest.approx(expected, abs=1e-9), label.name
    assert ours["miou"] == pytest.approx(reference["averageScoreClasses"] * 100, abs=1e-9)


# --------------------------------------------------------------------------- the Cityscapes server's files

def test_predict_labelids_holds_only_ids_cityscapesscripts_names(tmp_path, capsys):
    model = tiny_model(1)
    ckpt = weight_file(tmp_path, model)
    image_file(tmp_path / "in" / "bochum_000000_000019_leftImg8bit.png", 40, 72, 3)
    out = tmp_path / "maps"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--trainids", "--labelids",
                 "--no-progress"]) == 0
    with Image.open(out / "bochum_000000_000019_leftImg8bit_labelIds.png") as im:
        assert im.mode == "L" and im.size == (72, 40)  # one channel at the image's size
        ids = np.array(im)
    assert {int(i) for i in np.unique(ids)} <= {label.id for label in EVALUATED}
    train_ids = np.array(Image.open(out / "bochum_000000_000019_leftImg8bit_labelTrainIds.png"))
    assert [cs_labels.id2label[int(i)].trainId for i in ids.ravel()] == train_ids.ravel().tolist()
    capsys.readouterr()
    cfg = Config()  # a model of 8 classes has no Cityscapes label ids
    cfg.model.name, cfg.model.num_classes, cfg.model.proj_dim = "deeplabv2_r18", 8, 8
    small_ckpt = tmp_path / "eight.pt"
    weights = build_model("deeplabv2_r18", num_classes=8, proj_dim=8).state_dict()
    atomic_save({"config": cfg.to_dict(), "model": weights}, small_ckpt)
    assert main(["predict", str(small_ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "m8"), "--labelids",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "label ids are defined for the 19 Cityscapes classes; the model predicts 8" in err and "\n" not in err


def test_cityscapes_export_is_what_the_pixel_level_evaluation_reads(tmp_path, capsys):
    # evalPixelLevelSemanticLabeling.py l. 55-66 and l. 68-105 (getPrediction): one prediction per ground
    # truth file, found anywhere under the results folder (os.walk) by the pattern <city>_<seq>_<frame>*.png;
    # one channel of label ids at the ground truth's size (l. 571-576); mmseg's results2img (lhoyer/DAFormer
    # mmseg/datasets/cityscapes.py l. 53-95, l. 79) writes <imgfile_prefix>/<image basename>.png, label ids
    # with to_label_id, the default of format_results (l. 97).
    root = make_cityscapes(tmp_path / "cityscapes", size=(32, 64), splits=(("val", ("frankfurt", "lindau"), 1),))
    for j in range(2):  # test images: their labels are not public, the export needs none
        write_png(root / "leftImg8bit" / "test" / "berlin" / f"berlin_{j:06d}_000019_leftImg8bit.png",
                  np.random.default_rng(j).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    model = tiny_model(2)
    ckpt = weight_file(tmp_path, model)
    out = tmp_path / "val_export"
    assert main(["eval", str(ckpt), "--data", "cityscapes", "--root", str(root), "--split", "val", "--export",
                 str(out), "--no-progress"]) == 0
    stems = ["frankfurt_000000_000019_leftImg8bit", "lindau_000000_000019_leftImg8bit"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [f"labelIds/{s}.png" for s in stems] + ["cityscapes_submission.zip"])
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(out / "cityscapes_submission.zip") as archive:
        assert sorted(archive.namelist()) == [f"labelIds/{s}.png" for s in stems]
        archive.extractall(unpacked)
    args = cs_eval.CArgs()
    vars(args).update(vars(cs_eval.args))
    args.evalInstLevelScore = args.evalPixelAccuracy = False  # the two np.in1d paths (NumPy 2.4 has no in1d)
    args.JSONOutput, args.quiet = False, True
    args.predictionPath, args.predictionWalk = str(unpacked), None
    gts = sorted(str(p) for p in (root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    predictions = [cs_eval.getPrediction(args, gt) for gt in gts]  # exits on none or several
    for prediction in predictions:
        ids = np.array(Image.open(prediction))
        assert ids.shape == (32, 64) and {int(i) for i in np.unique(ids)} <= {label.id for label in EVALUATED}
    reference = cs_eval.evaluateImgLists(predictions, gts, args)
    capsys.readouterr()
    result_file = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--data", "cityscapes", "--root", str(root), "--no-progress",
                 "--out", str(result_file)]) == 0
    result = json.loads(result_file.read_text())
    assert result["miou"] == pytest.approx(reference["averageScoreClasses"] * 100, abs=1e-9)
    for name, iou in result["iou"].items():
        expected = reference["classScores"][name]
        assert (iou is None and expected != expected) or iou == pytest.approx(expected * 100, abs=1e-9), name
    # the test split: images only
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--data", "cityscapes", "--root", str(root), "--split", "test", "--export",
                 str(tmp_path / "test_export"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == summary["predicted"] == 2 and summary["split"] == "test"
    assert sorted(p.name for p in (tmp_path / "test_export" / "labelIds").iterdir()) == [
        "berlin_000000_000019_leftImg8bit.png", "berlin_000001_000019_leftImg8bit.png"]
