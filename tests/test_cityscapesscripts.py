"""The Cityscapes team's own package (``cityscapesscripts`` 2.3.0, a test dependency) as the reference
for our label tables, the train id -> label id conversion, the confusion matrix and the mIoU.

Facts (cityscapesscripts 2.3.0 as installed from PyPI):
- helpers/labels.py l. 62-99: ``labels``, one ``Label(name, id, trainId, category, categoryId,
  hasInstances, ignoreInEval, color)`` per label id 0..33, and ``license plate`` with id -1
  (never in a label image, l. 23); l. 113: ``trainId2label`` built over ``reversed(labels)``, so
  each train id names the first label that has it (mmseg's ``_convert_to_label_id``, lhoyer/DAFormer
  mmseg/datasets/cityscapes.py l. 41-50, goes through it).
- evaluation/evalPixelLevelSemanticLabeling.py l. 4: the test server runs this script; l. 18-20:
  predictions are images of label ids, not train ids; l. 228-255 (``getIouScoreForLabel``): IoU =
  tp / (tp + fp + fn) with the false positives counted only on pixels whose ground truth is an
  evaluated label; l. 285-294: the average skips NaN scores; l. 459 (``evaluateImgLists``) and
  l. 550 (``evaluatePair``) score lists of files.
- The same script calls ``np.in1d`` (l. 606 for the instance-level scores, l. 646 for the pixel
  accuracy), which NumPy 2.4 removed: the tests switch both off (``evalInstLevelScore``,
  ``evalPixelAccuracy``) and call the pixel-level parts only; the C extension is not built by the
  PyPI wheel, so ``evaluatePair`` takes its NumPy path (l. 588-597).
"""
import numpy as np
import pytest
import torch
from PIL import Image

from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers import labels as cs_labels
from sepico.data.cityscapes import CLASS_NAMES, PALETTE
from sepico.data.label_maps import (CITYSCAPES_ID_TO_TRAIN_ID, GTA5_ID_TO_TRAIN_ID, SYNTHIA_CLASS_NAMES,
                                    SYNTHIA_ID_TO_TRAIN_ID, TRAIN_ID_TO_CITYSCAPES_ID, lookup_table,
                                    to_label_ids, to_train_ids)
from sepico.evaluation import confusion_matrix, iou_from_confusion

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
