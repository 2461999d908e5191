"""Day-to-night adaptation (Cityscapes -> Dark Zurich), as BIT-DA/SePiCo's ``SePiCoDark`` runs it.

Facts (BIT-DA/SePiCo at bce38edd):
- mmseg/models/uda/sepico_dark.py l. 60-68: every CSV under ``corresp_root``
  (``data/dark_zurich/corresp/train/night/``, experiments.py l. 486) maps ``line[0]`` to ``line[1]``,
  a night image listed twice must keep its day image; l. 213-229: the key is
  ``train/night/<ori_filename without _rgb_anon.png>``, the day file is
  ``rgb_anon/train/day/<line[1] after 'day/'>_rgb_anon.png``, loaded by the target pipeline with the
  night image's ``flip`` (mmseg's RandomFlip keeps a flip already in the results);
- l. 232-243 (``mix_day_night_probs``): for the shift-insensitive classes (0-4, 8-10; l. 122-123,
  experiments.py l. 257) weight ``day_ratio`` (0.8) where the day probability > 0.4, else
  1 - day_ratio; other classes take the night probability; then times the class weights;
- l. 316-360: teacher softmax of the day and the night image, fused, argmax and threshold; the crop
  chosen on those labels cuts both images (l. 246-271: one ``crop_bbox`` for both), both are
  labelled again, and the night crop is the weak target from then on (l. 361-363);
- experiments.py l. 487-493: w = (mean(log f) - log f) / std(log f) * s + 1 with s = 0.05 for the
  pseudo labels (``uda.class_weight``) and the decode head's CrossEntropyLoss ``class_weight``;
  seeds [42], 60000 iterations, plcrop False (no rows ignored);
- mmseg/models/segmentors/encoder_decoder_projector.py l. 301-330: for an image whose file name
  ends with ``_rgb_anon.png`` the softmax (at the network input's size, ``rescale=False``) is
  multiplied by the weights at s = 0.16, then resized to the original image; aug_test (l. 340-357)
  does not apply them;
- mmseg/datasets/cityscapes.py l. 56-100 (``results2img``, l. 81-83): ``<imgfile_prefix>/<basename>.png``
  with the image's own basename (``..._rgb_anon``), train ids, 8-bit; README.md l. 239-280
  (Evaluation on Dark Zurich): ``imgfile_prefix=.../labelTrainIds`` (l. 255), the server takes a zip
  of ``confidence``, ``labelTrainIds``, ``labelTrainIds_invalid`` (l. 260-267), the last two made
  as copies of ``labelTrainIds`` (l. 275-277: ``cp -r``, then ``zip -q -r`` of the three folders).
"""
import csv
import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sepico.cli import main
from sepico.data.night import (DARK_ZURICH_CLASS_FREQUENCIES, CorrespondenceError, class_prior_weights,
                               dark_zurich_prior, day_images, fuse_day_night, read_correspondences)
from sepico.data.real import SegmentationFolder
from sepico.data.transforms import normalize
from sepico.evaluation import evaluate, predict_logits
from sepico.models import build_model
from sepico.train import Trainer
from sepico.train.checkpoint import atomic_save
from sepico.train.config import Config, from_dict, validate
from sepico.errors import ConfigError
from sepico.train import data as run_data
from sepico.train.data import Draw, TrainingView, build_datasets
from tests.helpers import (assert_same, independent_miou, make_cityscapes, scene_ids, scene_image, trainer_state,
                           write_png)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE = (36, 64)
TRAIN_IDS = {"sky": 10, "building": 2, "road": 0, "car": 13, "void": 255}  # label maps in train ids


def make_dark_zurich_pairs(root, size=SIZE):
    """Night training images in two sequences, their day images in other sequences (the real
    dataset pairs GOPR night sequences with GOPR day sequences), the correspondence CSVs, 2 labelled
    val images and 2 unlabelled test images."""
    rng = np.random.default_rng(0)
    corresp = root / "corresp" / "train" / "night"
    corresp.mkdir(parents=True)
    for seq, day_seq in (("GOPR0351", "GOPR0227"), ("GOPR0354", "GOPR0228")):
        rows = []
        for j in range(2):
            night = f"{seq}_frame_{j:06d}"
            day = f"{day_seq}_frame_{100 + 7 * j:06d}"
            write_png(root / "rgb_anon" / "train" / "night" / seq / f"{night}_rgb_anon.png",
                      rng.integers(0, 256, size + (3,), dtype=np.uint8))
            write_png(root / "rgb_anon" / "train" / "day" / day_seq / f"{day}_rgb_anon.png",
                      rng.integers(0, 256, size + (3,), dtype=np.uint8))
            rows.append([f"train/night/{seq}/{night}", f"train/day/{day_seq}/{day}"])
        # a day image that no night image uses, as the real archive has
        write_png(root / "rgb_anon" / "train" / "day" / day_seq / f"{day_seq}_frame_000999_rgb_anon.png",
                  rng.integers(0, 256, size + (3,), dtype=np.uint8))
        with open(corresp / f"{seq}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    for j in range(2):
        stem = f"GOPR0356_frame_{j:06d}"
        train_ids = scene_ids(*size, TRAIN_IDS, j).astype(np.uint8)
        write_png(root / "rgb_anon" / "val" / "night" / "GOPR0356" / f"{stem}_rgb_anon.png", scene_image(train_ids, j))
        write_png(root / "gt" / "val" / "night" / "GOPR0356" / f"{stem}_gt_labelTrainIds.png", train_ids)
        write_png(root / "rgb_anon" / "test" / "night" / "GOPR0364" / f"GOPR0364_frame_{j:06d}_rgb_anon.png",
                  rng.integers(0, 256, size + (3,), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("night")
    return {"dark_zurich": make_dark_zurich_pairs(base / "dark_zurich"),
            "cityscapes": make_cityscapes(base / "cityscapes", size=SIZE)}


# --------------------------------------------------------------------------- correspondences

def test_each_night_image_gets_its_day_image(trees):
    root = trees["dark_zurich"]
    pairs = read_correspondences(root)
    assert pairs == {"GOPR0351/GOPR0351_frame_000000": "GOPR0227/GOPR0227_frame_000100",
                     "GOPR0351/GOPR0351_frame_000001": "GOPR0227/GOPR0227_frame_000107",
                     "GOPR0354/GOPR0354_frame_000000": "GOPR0228/GOPR0228_frame_000100",
                     "GOPR0354/GOPR0354_frame_000001": "GOPR0228/GOPR0228_frame_000107"}
    folder = SegmentationFolder("dark_zurich", root, "train", labelled=False)
    days = day_images("dark_zurich", root, folder.images)
    assert [d.relative_to(root).as_posix() for d in days] == [
        "rgb_anon/train/day/GOPR0227/GOPR0227_frame_000100_rgb_anon.png",
        "rgb_anon/train/day/GOPR0227/GOPR0227_frame_000107_rgb_anon.png",
        "rgb_anon/train/day/GOPR0228/GOPR0228_frame_000100_rgb_anon.png",
        "rgb_anon/train/day/GOPR0228/GOPR0228_frame_000107_rgb_anon.png"]


def test_the_loader_flips_and_crops_night_and_day_together(trees):
    root = trees["dark_zurich"]
    folder = SegmentationFolder("dark_zurich", root, "train", labelled=False)
    days = day_images("dark_zurich", root, folder.images)
    view = TrainingView(folder, (18, 32), (12, 20), flip=True, companions=days)
    flips = 0
    for position in range(12):
        night, label, day = view[Draw(position % 4, 5, position)]
        plain = TrainingView(folder, (18, 32), None, flip=False, companions=days)[Draw(position % 4, 5, position)]
        # the night crop is somewhere in the resized night image, mirrored or not; the day crop is
        # the same window of the resized day image, mirrored alike
        found = None
        for flipped in (False, True):
            n, d = (plain[0].flip(-1), plain[2].flip(-1)) if flipped else (plain[0], plain[2])
            for y in range(18 - 12 + 1):
                for x in range(32 - 20 + 1):
                    if torch.equal(n[:, y:y + 12, x:x + 20], night):
                        found = (flipped, torch.equal(d[:, y:y + 12, x:x + 20], day))
        assert found is not None and found[1], position
        flips += found[0]
        assert bool((label == 255).all())
    assert 0 < flips < 12  # both cases were drawn
    # the day image is read by hand: resized with cv2 bilinear like its night image
    import cv2
    pixels = np.array(Image.open(days[1]).convert("RGB"))
    expected = torch.from_numpy(cv2.resize(pixels, (32, 18), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1) / 255
    assert torch.equal(TrainingView(folder, (18, 32), None, flip=False, companions=days)[Draw(1, 0, 0)][2],
                       expected.float())


def test_correspondence_errors_name_the_file(tmp_path, trees):
    import shutil
    root = tmp_path / "dz"
    shutil.copytree(trees["dark_zurich"], root)
    csv_file = root / "corresp" / "train" / "night" / "GOPR0351.csv"
    original = csv_file.read_text()
    csv_file.write_text(original + "train/night/GOPR0351/GOPR0351_frame_000000,train/day/GOPR0227/x\n")
    with pytest.raises(CorrespondenceError, match=r"GOPR0351\.csv:3: GOPR0351/GOPR0351_frame_000000 is paired"):
        read_correspondences(root)
    csv_file.write_text("just one column\n")
    with pytest.raises(CorrespondenceError, match=r"GOPR0351\.csv:1: expected"):
        read_correspondences(root)
    csv_file.write_text(original.splitlines()[0] + "\n")  # frame 1 has no pair now
    folder = SegmentationFolder("dark_zurich", root, "train", labelled=False)
    with pytest.raises(CorrespondenceError, match="GOPR0351_frame_000001_rgb_anon.png has no day image"):
        day_images("dark_zurich", root, folder.images)
    csv_file.write_text(original)
    (root / "rgb_anon/train/day/GOPR0227/GOPR0227_frame_000107_rgb_anon.png").unlink()
    with pytest.raises(CorrespondenceError, match="the day image of .* is missing"):
        day_images("dark_zurich", root, folder.images)
    shutil.rmtree(root / "corresp")
    cfg = night_config(tmp_path, trees["cityscapes"], root)
    with pytest.raises(ConfigError, match="data.target_root.*no correspondence files"):
        build_datasets(cfg)


# --------------------------------------------------------------------------- fusion and class weights

def test_fusion_rule_on_a_hand_computed_case():
    day = torch.zeros(1, 19, 1, 2)
    night = torch.zeros(1, 19, 1, 2)
    day[0, 0] = torch.tensor([0.5, 0.3])     # road: insensitive; day > 0.4 at the first pixel only
    night[0, 0] = torch.tensor([0.1, 0.6])
    day[0, 13] = torch.tensor([0.9, 0.9])    # car: not insensitive, the night value stays
    night[0, 13] = torch.tensor([0.2, 0.1])
    day[0, 10] = torch.tensor([0.41, 0.4])   # sky: insensitive; 0.4 itself is not "> 0.4"
    night[0, 10] = torch.tensor([0.0, 1.0])
    fused = fuse_day_night(day, night, day_ratio=0.8)
    torch.testing.assert_close(fused[0, 0, 0], torch.tensor([0.8 * 0.5 + 0.2 * 0.1, 0.2 * 0.3 + 0.8 * 0.6]))
    torch.testing.assert_close(fused[0, 13, 0], torch.tensor([0.2, 0.1]))
    torch.testing.assert_close(fused[0, 10, 0], torch.tensor([0.8 * 0.41, 0.2 * 0.4 + 0.8 * 1.0]))
    w = torch.arange(1, 20, dtype=torch.float32)
    torch.testing.assert_close(fuse_day_night(day, night, day_ratio=0.8, weights=w), fused * w.view(1, -1, 1, 1))


def test_class_weights_follow_the_formula():
    log_f = np.log(np.array(DARK_ZURICH_CLASS_FREQUENCIES, dtype=np.float64))
    for scale in (0.05, 0.16):
        expected = (log_f.mean() - log_f) / log_f.std(ddof=1) * scale + 1.0
        np.testing.assert_allclose(class_prior_weights(scale).double().numpy(), expected, rtol=1e-6)
    w = class_prior_weights(0.16)
    assert int(w.argmax()) == 17 and int(w.argmin()) == 0  # motorcycle is rarest, road most frequent
    assert torch.equal(class_prior_weights(0.0), torch.ones(19))
    assert len(DARK_ZURICH_CLASS_FREQUENCIES) == 19


# --------------------------------------------------------------------------- the training loop

def night_config(tmp_path, cityscapes, dark_zurich, **method) -> Config:
    cfg = from_dict({
        "name": "night",
        "data": {"source": "cityscapes", "source_root": str(cityscapes), "target": "dark_zurich",
                 "target_root": str(dark_zurich), "crop_size": [24, 40], "source_size": [0, 0],
                 "target_size": [0, 0]},
        "model": {"name": "deeplabv2_r18", "proj_dim": 16},
        "optim": {"lr": 1e-3, "warmup_iters": 1},
        "method": {"variant": "dist", "start_distribution_iter": 0, "temperature": 0.1, "pseudo_crop": True,
                   "day_night": True, "class_prior": 0.05, "pseudo_threshold": 0.05, **method},
        "train": {"max_iters": 4, "batch_size": 2, "log_interval": 1, "checkpoint_interval": 2,
                  "run_dir": str(tmp_path / "run")},
    })
    validate(cfg)
    return cfg


def test_pseudo_labels_fuse_the_teacher_on_day_and_night(tmp_path, trees):
    trainer = Trainer(night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"]), tmp_path / "r", progress=False)
    torch.manual_seed(1)
    night, day = torch.rand(2, 3, 36, 64), torch.rand(2, 3, 36, 64)
    labels, weights = trainer.task.pseudo_labels(night, day)
    with torch.no_grad():
        def probs(x):
            logits = trainer.teacher.predict_logits(normalize(x))
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        fused = fuse_day_night(probs(day), probs(night), day_ratio=0.8, weights=class_prior_weights(0.05))
    conf, expected = fused.max(1)
    assert torch.equal(labels, expected)
    torch.testing.assert_close(weights, torch.full_like(weights, float((conf >= 0.05).float().mean())))
    # without the day image the labels are the night image's own
    alone, _ = trainer.task.pseudo_labels(night)
    assert torch.equal(alone, probs(night).argmax(1))
    assert not torch.equal(alone, labels)


def test_decode_head_cross_entropy_takes_the_class_weights(tmp_path, trees):
    trainer = Trainer(night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"]), tmp_path / "r", progress=False)
    torch.manual_seed(2)
    logits = torch.randn(2, 19, 9, 16)
    label = torch.randint(0, 19, (2, 36, 64))
    label[:, :5] = 255
    up = F.interpolate(logits, size=(36, 64), mode="bilinear", align_corners=False)
    nll = -up.log_softmax(1).gather(1, label.clamp(max=18)[:, None])[:, 0]
    w = class_prior_weights(0.05)[label.clamp(max=18)] * (label != 255)
    torch.testing.assert_close(trainer.task.source_ce(logits, label), (w * nll).mean())


@pytest.mark.system
def test_a_tiny_day_night_run_resumes_bit_for_bit(tmp_path, trees):
    cfg = night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"])
    cfg.data.test_size = (0, 0)
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    result = straight.train()
    assert straight.iteration == 4
    prior = dark_zurich_prior(cfg.data.dark_zurich_test_prior, 19)  # the official test's, on Dark Zurich images
    assert result["miou"] == pytest.approx(independent_miou(straight.model, straight.data.target_test,
                                                            straight.data.eval_classes, prior=prior), abs=1e-9)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["pseudo_weight"] > 0 and "loss_cl_tgt" in r and "loss_mix" in r for r in records[:-1])
    first = Trainer(cfg, tmp_path / "split", progress=False)
    for _ in range(2):
        first.step()
    first.save_checkpoint()
    resumed = Trainer(cfg, tmp_path / "split", resume=True, progress=False)
    resumed.train()
    assert_same(trainer_state(straight), trainer_state(resumed))


def test_day_night_needs_dark_zurich(tmp_path, trees):
    cfg = night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"])
    cfg.data.target, cfg.data.target_root = "cityscapes", str(trees["cityscapes"])
    with pytest.raises(ConfigError, match="method.day_night"):
        validate(cfg)
    with pytest.raises(ConfigError, match="method.day_ratio"):
        night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"], day_ratio=1.5)
    with pytest.raises(ConfigError, match="method.class_prior"):
        night_config(tmp_path, trees["cityscapes"], trees["dark_zurich"], class_prior=-0.1)


# --------------------------------------------------------------------------- test protocol

def weight_file(tmp_path, model, target="dark_zurich"):
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.proj_dim = "deeplabv2_r18", 19, 8
    cfg.data.target = target
    path = tmp_path / "weights.pt"
    atomic_save({"config": cfg.to_dict(), "model": model.state_dict()}, path)
    return path


def test_test_time_prior_applies_to_dark_zurich_images_only(tmp_path, trees, capsys):
    torch.manual_seed(3)
    model = build_model("deeplabv2_r18", num_classes=19, proj_dim=8).eval()
    ckpt = weight_file(tmp_path, model)
    out = tmp_path / "dz.json"
    assert main(["eval", str(ckpt), "--root", str(trees["dark_zurich"]), "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test_prior"] == 0.16 and result["images"] == 2
    test = run_data.TestView(SegmentationFolder("dark_zurich", trees["dark_zurich"], "val"))
    by_hand = 0
    for image, label in test:
        with torch.no_grad():
            logits = model.predict_logits(normalize(image[None]))
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        scores = F.interpolate(logits.softmax(1) * class_prior_weights(0.16).view(1, -1, 1, 1), size=label.shape,
                               mode="bilinear", align_corners=False)
        keep = label != 255
        by_hand = by_hand + torch.bincount(label[keep] * 19 + scores.argmax(1)[0][keep], minlength=361).view(19, 19)
    weighted = evaluate(model, test, num_classes=19, batch_size=1, prior=class_prior_weights(0.16))
    assert weighted["confusion"] == by_hand.tolist()
    plain = evaluate(model, test, num_classes=19, batch_size=1)
    assert plain["confusion"] != weighted["confusion"]  # the prior changes predictions here
    assert main(["eval", str(ckpt), "--root", str(trees["dark_zurich"]), "--no-progress", "--out", str(out),
                 "--set", "data.dark_zurich_test_prior=0"]) == 0
    assert json.loads(out.read_text())["miou"] == pytest.approx(plain["miou"], abs=1e-9)
    # Cityscapes images: no prior
    assert main(["eval", str(ckpt), "--data", "cityscapes", "--root", str(trees["cityscapes"]), "--no-progress",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["test_prior"] == 0.0


def test_dark_zurich_test_export(tmp_path, trees, capsys):
    torch.manual_seed(4)
    model = build_model("deeplabv2_r18", num_classes=19, proj_dim=8).eval()
    ckpt = weight_file(tmp_path, model)
    test_dir = trees["dark_zurich"] / "rgb_anon" / "test" / "night"
    out = tmp_path / "submission"
    assert main(["eval", str(ckpt), "--root", str(trees["dark_zurich"]), "--split", "test", "--export", str(out),
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 2 and summary["test_prior"] == 0.16 and summary["split"] == "test"
    names = ["GOPR0364_frame_000000_rgb_anon.png", "GOPR0364_frame_000001_rgb_anon.png"]
    folders = ("labelTrainIds", "labelTrainIds_invalid", "confidence")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [f"{folder}/{n}" for folder in folders for n in names] + ["dark_zurich_submission.zip"])
    prior = class_prior_weights(0.16).view(1, -1, 1, 1)
    for name in names:
        pixels = np.array(Image.open(test_dir / "GOPR0364" / name).convert("RGB"))
        x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            logits = F.interpolate(model.predict_logits(normalize(x)), size=pixels.shape[:2], mode="bilinear",
                                   align_corners=False)
        by_hand = (logits.softmax(1) * prior).argmax(1)[0].numpy()
        written = np.array(Image.open(out / "labelTrainIds" / name))
        assert written.dtype == np.uint8 and written.shape == pixels.shape[:2]  # the image's own size
        np.testing.assert_array_equal(written, by_hand)
        for copy in ("labelTrainIds_invalid", "confidence"):  # the official README's copies
            np.testing.assert_array_equal(np.array(Image.open(out / copy / name)), written)
    with zipfile.ZipFile(out / "dark_zurich_submission.zip") as archive:  # zip -r of the three folders
        assert sorted(archive.namelist()) == sorted(f"{folder}/{n}" for folder in folders for n in names)
        assert archive.read(f"labelTrainIds/{names[0]}") == (out / "labelTrainIds" / names[0]).read_bytes()
    # again into the same folder: the earlier export is replaced; a foreign file is not
    assert main(["eval", str(ckpt), "--root", str(trees["dark_zurich"]), "--split", "test", "--export", str(out),
                 "--no-progress"]) == 0
    (out / "confidence" / names[1]).write_bytes(b"someone else's file")
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--root", str(trees["dark_zurich"]), "--split", "test", "--export", str(out),
                 "--no-progress"]) == 2
    assert "exists and is not an earlier result" in capsys.readouterr().err
    assert (out / "confidence" / names[1]).read_bytes() == b"someone else's file"


def test_predict_weighs_dark_zurich_images_by_name(tmp_path, trees, capsys):
    torch.manual_seed(4)
    model = build_model("deeplabv2_r18", num_classes=19, proj_dim=8).eval()
    ckpt = weight_file(tmp_path, model)
    image = trees["dark_zurich"] / "rgb_anon" / "test" / "night" / "GOPR0364" / "GOPR0364_frame_000000_rgb_anon.png"
    other = tmp_path / "city" / "frankfurt_000000_000019_leftImg8bit.png"
    write_png(other, np.random.default_rng(1).integers(0, 256, SIZE + (3,), dtype=np.uint8))
    out = tmp_path / "maps"
    assert main(["predict", str(ckpt), str(image), str(other), "--out", str(out), "--trainids", "--no-progress"]) == 0
    for path, weighed in ((image, True), (other, False)):
        pixels = np.array(Image.open(path).convert("RGB"))
        x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            expected = predict_logits(model, x, pixels.shape[:2], num_classes=19,
                                      prior=class_prior_weights(0.16) if weighed else None).argmax(1)[0].numpy()
        np.testing.assert_array_equal(np.array(Image.open(out / f"{path.stem}_labelTrainIds.png")), expected)
    assert not (out / "labelTrainIds").exists()  # the server's layout is the export's (eval --export)


# --------------------------------------------------------------------------- other night test sets

def make_nighttime_driving(root, n=2, size=SIZE):
    for j in range(n):
        stem = f"{j}_frame_{j:04d}"
        ids = scene_ids(*size, TRAIN_IDS, j).astype(np.uint8)
        ids[:3] = 255
        write_png(root / "leftImg8bit" / "test" / "night" / f"{stem}_leftImg8bit.png", scene_image(ids, j))
        write_png(root / "gtCoarse_daytime_trainvaltest" / "test" / "night" / f"{stem}_gtCoarse_labelTrainIds.png", ids)
    return root


def make_bdd100k_night(root, n=2, size=SIZE):
    for j in range(n):
        stem = f"0{j}a2b3c4-5d6e7f8{j}"
        ids = scene_ids(*size, TRAIN_IDS, j + 5).astype(np.uint8)
        (root / "images" / "10k" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene_image(ids, j)).save(root / "images" / "10k" / "val" / f"{stem}.jpg", quality=95)
        write_png(root / "labels" / "sem_seg" / "masks" / "val" / f"{stem}.png", ids)
    return root


@pytest.mark.parametrize("name, make", [("nighttime_driving", make_nighttime_driving),
                                        ("bdd100k_night", make_bdd100k_night)])
def test_night_evaluation_sets(tmp_path, trees, name, make, capsys):
    root = make(tmp_path / name)
    folder = SegmentationFolder(name, root, "val")
    assert len(folder) == 2
    image, label = folder[0]
    assert image.shape[-2:] == SIZE and label.dtype == torch.int64 and int(label.max()) == 255
    torch.manual_seed(5)
    model = build_model("deeplabv2_r18", num_classes=19, proj_dim=8).eval()
    ckpt = weight_file(tmp_path, model, target="cityscapes")
    out = tmp_path / "r.json"
    assert main(["eval", str(ckpt), "--data", name, "--root", str(root), "--no-progress", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == name and result["images"] == 2 and result["test_prior"] == 0.0
    direct = evaluate(model, run_data.TestView(folder), num_classes=19, batch_size=1)
    assert result["miou"] == pytest.approx(direct["miou"], abs=1e-9)
    cfg = night_config(tmp_path, trees["cityscapes"], root)  # an evaluation set is no training target
    cfg.data.target, cfg.method.day_night = name, False
    with pytest.raises(ConfigError, match="config field 'data.target' must be one of synthetic, cityscapes"):
        build_datasets(cfg)
