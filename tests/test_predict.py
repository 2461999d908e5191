"""`sepico predict` (maps of image files) and test-time augmentation (`eval --aug-test`,
`predict --aug-test`).

Facts (BIT-DA/SePiCo at bce38edd): tools/test.py l. 113-118 sets ``img_ratios = [0.5, 0.75, 1.0,
1.25, 1.5, 1.75]`` and ``flip = True`` for ``--aug-test``; mmseg/datasets/pipelines/test_time_aug.py
l. 70-76 scales the test ``img_scale`` (W, H) by each ratio with ``int()``, l. 107-110 scales the
image's own size when there is no ``img_scale``, l. 113 ``flip_aug = [False, True]``; each view is
``Resize(keep_ratio=True)``'d; encoder_decoder_projector.py ``inference`` (l. 266-299) takes the
softmax of the logits resized to the original image and flips it back, ``aug_test`` (l. 340-357)
averages those probabilities over the views and takes the argmax. The Cityscapes palette: the
Cityscapes scripts' ``labels.py``.
"""
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sepico.cli import main
from sepico.data.cityscapes import PALETTE
from sepico.data.transforms import AUG_SCALES, aug_sizes, normalize
from sepico.evaluation import aug_probabilities, evaluate, predict_logits
from sepico.predict import predict_image
from sepico.train.checkpoint import atomic_save
from sepico.train.config import Config
from sepico.train import data as run_data
from sepico.data.real import SegmentationFolder
from tests.helpers import image_file, make_cityscapes, tiny_model, weight_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def by_hand_ids(model, pixels, size=None):
    """Normalise, logits, bilinear to the network input, then to the image size, argmax."""
    h, w = pixels.shape[:2]
    if size is not None:
        pixels = cv2.resize(pixels, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255) / (
        torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255)  # mmseg's Normalize on 0-255
    with torch.no_grad():
        logits = model.predict_logits(x)
    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def test_predict_writes_the_three_maps_and_skips_a_corrupt_image(tmp_path, capsys):
    model = tiny_model()
    ckpt = weight_file(tmp_path, model)
    images = tmp_path / "images"
    a = image_file(images / "a.png", 37, 53, 1)
    b = image_file(images / "sub" / "b.jpg", 40, 61, 2, fmt="JPEG")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", str(ckpt), str(images), "--out", str(out), "--trainids", "--overlay",
                 "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1  # one image skipped
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "broken.png" in lines[1]
    assert lines[0].startswith("note: 1 file(s)") and "passed over" in lines[0]  # notes.txt
    summary = json.loads(captured.out)
    assert summary["images"] == 3 and summary["predicted"] == 2 and summary["files"] == 6
    palette = {tuple(c) for c in PALETTE.tolist()}
    for stem, pixels in (("a", a), ("sub/b", b)):
        color = np.array(Image.open(out / f"{stem}_color.png"))
        ids = np.array(Image.open(out / f"{stem}_labelTrainIds.png"))
        overlay = np.array(Image.open(out / f"{stem}_overlay.png"))
        assert color.shape == pixels.shape and ids.shape == pixels.shape[:2] and ids.dtype == np.uint8
        assert {tuple(c) for c in color.reshape(-1, 3).tolist()} <= palette
        np.testing.assert_array_equal(ids, by_hand_ids(model, pixels))
        np.testing.assert_array_equal(color, PALETTE[ids])
        # mmseg's show_result: img * 0.5 + color * 0.5 in float64, cut to uint8 (base.py l. 246-247)
        np.testing.assert_array_equal(overlay, (pixels.astype(int) + color.astype(int)) // 2)
    assert not list(out.rglob(".*.tmp")) and not (out / "broken_color.png").exists()
    # an output folder inside the input folder is not read back as input on a second run
    inner = images / "maps"
    assert main(["predict", str(ckpt), str(images), "--out", str(inner), "--no-progress"]) == 1
    assert main(["predict", str(ckpt), str(images), "--out", str(inner), "--no-progress"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["images"] == 3
    assert main(["predict", str(ckpt), str(images), "--out", str(images), "--no-progress"]) == 2
    assert "is an input folder" in capsys.readouterr().err


def test_predict_resized_input_and_errors(tmp_path, capsys):
    model = tiny_model()
    ckpt = weight_file(tmp_path, model)
    pixels = image_file(tmp_path / "x.png", 45, 70, 3)
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(tmp_path / "x.png"), "--out", str(out), "--size", "30,48",
                 "--trainids", "--no-progress"]) == 0
    ids = np.array(Image.open(out / "x_labelTrainIds.png"))
    assert ids.shape == (45, 70)
    np.testing.assert_array_equal(ids, by_hand_ids(model, pixels, size=(30, 48)))
    capsys.readouterr()
    for args, message in ((["--size", "30"], "--size takes H,W"), (["--keep-ratio"], "--keep-ratio applies"),
                          ([], None)):
        target = [str(tmp_path / "missing.png")] if message is None else [str(tmp_path / "x.png")]
        assert main(["predict", str(ckpt), *target, "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert (message or "no such file or folder") in err and len(err.strip().splitlines()) == 1


class Pointwise(nn.Module):
    """Flip-equivariant by construction: a 1 x 1 convolution, logits at the input size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)
        nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(1))

    def predict_logits(self, x):
        return self.conv(x)


def test_flip_alone_on_a_flip_equivariant_model_equals_the_plain_prediction():
    model = Pointwise().eval()
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    plain = predict_image(model, pixels, num_classes=19)
    flipped = predict_image(model, pixels, num_classes=19, scales=(1.0,), flip=True)
    np.testing.assert_array_equal(plain, flipped)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        probs = aug_probabilities(model, [x], (33, 47), num_classes=19, flip=True)
        torch.testing.assert_close(probs, predict_logits(model, x, (33, 47), num_classes=19).softmax(1))
    # A model that is not flip-equivariant gives other probabilities with the flip.
    net = tiny_model()
    with torch.no_grad():
        assert not torch.allclose(aug_probabilities(net, [x], (33, 47), num_classes=19, flip=True),
                                  predict_logits(net, x, (33, 47), num_classes=19).softmax(1))


def test_scales_and_flip_equal_the_softmax_average_computed_by_hand():
    model = tiny_model(2)
    rng = np.random.default_rng(5)
    h, w = 36, 52
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    total = 0
    for r in AUG_SCALES:  # mode 1 (no test size): the image's own size times r, keep-ratio rescale
        sw, sh = int(w * r), int(h * r)
        factor = min(max(sw, sh) / max(w, h), min(sw, sh) / min(w, h))
        vh, vw = int(h * factor + 0.5), int(w * factor + 0.5)
        view = cv2.resize(pixels, (vw, vh), interpolation=cv2.INTER_LINEAR)
        x = normalize(torch.from_numpy(view).permute(2, 0, 1).float()[None] / 255)
        for mirror in (False, True):
            xin = x.flip(-1) if mirror else x
            with torch.no_grad():
                logits = F.interpolate(model.predict_logits(xin), size=(vh, vw), mode="bilinear", align_corners=False)
            p = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
            total = total + (p.flip(-1) if mirror else p)
    expected = (total / 12).argmax(1)[0].numpy()
    got = predict_image(model, pixels, num_classes=19, scales=AUG_SCALES, flip=True)
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, predict_image(model, pixels, num_classes=19))  # the views change it


def test_aug_sizes_of_the_published_cityscapes_test():
    # (1280, 640) keep-ratio scale of a 2048 x 1024 image: ratio r gives (int(1280 r), int(640 r)).
    assert aug_sizes(1024, 2048, (640, 1280), True, AUG_SCALES) == [
        (320, 640), (480, 960), (640, 1280), (800, 1600), (960, 1920), (1120, 2240)]
    # GTA5-like 1052 x 1914 into (720, 1280) x 0.75 = (540, 960): the long edge binds.
    assert aug_sizes(1052, 1914, (720, 1280), True, (0.75,)) == [(528, 960)]
    assert aug_sizes(10, 20, (8, 8), False, (0.5, 1.5)) == [(4, 4), (12, 12)]


def test_eval_aug_test_on_a_fixture_tree(tmp_path, capsys):
    cityscapes = make_cityscapes(tmp_path / "cityscapes", size=(32, 64))
    model = tiny_model(3)
    ckpt = weight_file(tmp_path, model)
    out = tmp_path / "eval.json"
    assert main(["eval", str(ckpt), "--data", "cityscapes", "--root", str(cityscapes), "--size", "24,48",
                 "--aug-test", "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["aug_test"] is True and result["images"] == 2
    folder = SegmentationFolder("cityscapes", cityscapes, "val")
    views = run_data.ScaledViews(run_data.TestView(folder), AUG_SCALES, (24, 48), keep_ratio=False)
    direct = evaluate(model, views, num_classes=19, flip=True, batch_size=1)
    assert result["miou"] == pytest.approx(direct["miou"], abs=1e-9)
    plain = evaluate(model, run_data.TestView(folder, (24, 48)), num_classes=19, batch_size=1)
    assert direct["confusion"] != plain["confusion"]


def test_predict_teacher_and_sliding_windows(tmp_path, capsys):
    student, teacher = tiny_model(6), tiny_model(7)
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.proj_dim = "deeplabv2_r18", 19, 8
    ckpt = tmp_path / "ckpt.pt"
    atomic_save({"config": cfg.to_dict(), "model": student.state_dict(), "teacher": teacher.state_dict(),
                 "iteration": 5}, ckpt)
    pixels = image_file(tmp_path / "in" / "x.png", 41, 67, 8)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--trainids", "--teacher",
                 "--mode", "slide", "--window", "24,32", "--stride", "16,20", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "teacher"
    with torch.no_grad():
        expected = predict_logits(teacher, x, (41, 67), num_classes=19, mode="slide", window=(24, 32),
                                  stride=(16, 20)).argmax(1)[0].numpy()
        whole = predict_logits(teacher, x, (41, 67), num_classes=19).argmax(1)[0].numpy()
        other = predict_logits(student, x, (41, 67), num_classes=19, mode="slide", window=(24, 32),
                               stride=(16, 20)).argmax(1)[0].numpy()
    ids = np.array(Image.open(out / "x_labelTrainIds.png"))
    np.testing.assert_array_equal(ids, expected)
    assert not np.array_equal(ids, whole) and not np.array_equal(ids, other)  # windows and weights both matter
