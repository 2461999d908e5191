"""The self-training iteration as the official code runs it, point by point.

The facts come from BIT-DA/SePiCo at commit bce38edd (``S:``), lhoyer/DAFormer at e6f6e041
(``D:``), mmcv v1.3.7 (``M:``) and kornia 0.5.8 (``K:``); file and line are named at each test.
Each test fails on the loop this project had before (running-statistics teacher, one concatenated
teacher pass, every head in every pass, per-image jitter gates, PIL resizing, ...).
"""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from sepico.data.real import SegmentationFolder
from sepico.data.transforms import normalize, rescaled_size
from sepico.evaluation import predict_logits
from sepico.models.layers import STOCHASTIC_MODULES
from sepico.train import Trainer, augment
from sepico.train.config import load_config, validate
from sepico.errors import ConfigError
from sepico.train import data as train_data
from tests.helpers import make_cityscapes, make_gta5, real_config, tiny_config, write_png

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("loop")
    return {"gta5": make_gta5(base / "gta5"), "cityscapes": make_cityscapes(base / "cityscapes")}


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _buffers(model):
    return [b.clone() for b in model.buffers()]


# --------------------------------------------------------------------------- 1. the teacher

def test_teacher_normalises_with_the_statistics_of_its_batch(tmp_path):
    """S:sepico.py:244-248 (and D:dacs.py:264-268): before its passes the teacher's dropout and
    DropPath modules are switched off, nothing else; the runner's model.train() keeps its
    BatchNorm in training mode (M:iter_based_runner.py:53-54), so it normalises with the batch's
    statistics and its running statistics play no part."""
    trainer = Trainer(tiny_config("dist", model="daformer_mit_b0"), tmp_path, progress=False)
    teacher = trainer.teacher
    assert all(bn.training for bn in _batchnorms(teacher))
    assert not any(m.training for m in teacher.modules() if isinstance(m, STOCHASTIC_MODULES))
    images = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    labels, _ = trainer.task.pseudo_labels(images)
    with torch.no_grad():
        logits = teacher.predict_logits(normalize(images))
        for bn in _batchnorms(teacher):  # running statistics far off: no effect in training mode
            bn.running_mean.add_(3.0)
            bn.running_var.mul_(50.0)
        torch.testing.assert_close(teacher.predict_logits(normalize(images)), logits, rtol=0, atol=0)
    assert torch.equal(trainer.task.pseudo_labels(images)[0], labels)
    with torch.no_grad():
        assert not torch.allclose(teacher.eval().predict_logits(normalize(images)), logits, atol=1e-3)


def test_teacher_passes_update_only_the_teachers_statistics_under_no_grad(tmp_path):
    """BatchNorm in training mode under no_grad still updates its running statistics (the
    teacher's own, never used: S:sepico.py:295-297 runs a teacher pass for that side effect
    alone); the student's statistics are untouched by teacher passes."""
    trainer = Trainer(tiny_config("dist"), tmp_path, progress=False)
    student, teacher = _buffers(trainer.model), _buffers(trainer.teacher)
    images = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 19, (2, 64, 128), generator=torch.Generator().manual_seed(2))
    trainer.task.pseudo_labels(images)
    trainer.task.update_distribution(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(student, trainer.model.buffers()))
    changed = [not torch.equal(a, b) for a, b in zip(teacher, trainer.teacher.buffers())]
    assert any(changed)


def test_ema_averages_parameters_only(tmp_path):
    """S:sepico.py:122-144 (D:dacs.py:93-115): the EMA zips .parameters() only; the teacher's
    buffers are never set from the student's."""
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    with torch.no_grad():
        for bn in _batchnorms(trainer.model):
            bn.running_mean.add_(7.0)
        for p in trainer.model.parameters():
            p.add_(1.0)
    before = _buffers(trainer.teacher)
    trainer.iteration = 9
    trainer.task.update_teacher(trainer.iteration)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.teacher.buffers()))
    # The earlier loop, kept behind a switch, averaged them.
    cfg = tiny_config(teacher_statistics="running")
    running = Trainer(cfg, tmp_path / "running", progress=False)
    with torch.no_grad():
        for bn in _batchnorms(running.model):
            bn.running_mean.add_(7.0)
    running.iteration = 9
    running.task.update_teacher(running.iteration)
    assert not running.teacher.training
    assert torch.allclose(_batchnorms(running.teacher)[0].running_mean, torch.full_like(
        _batchnorms(running.teacher)[0].running_mean, 0.7))


def test_teacher_passes_are_separate_per_domain(tmp_path, monkeypatch):
    """S:sepico.py:251-256 (weak target, pseudo labels) and 302-320 (weak source, features for the
    estimator) are separate teacher calls: no source + target concatenation, which would mix the
    two domains' batch statistics."""
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    probe = Trainer(tiny_config(), tmp_path / "probe", progress=False)
    src, _ = probe.source.next()
    tgt, _ = probe.target.next()
    seen = []
    encode = trainer.teacher.encode
    monkeypatch.setattr(trainer.teacher, "encode", lambda x: (seen.append(x.clone()), encode(x))[1])
    trainer.step()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], normalize(tgt), rtol=0, atol=0)  # pseudo labels first
    torch.testing.assert_close(seen[1], normalize(src), rtol=0, atol=0)


# --------------------------------------------------------------------------- 2. heads per pass

class _Calls:
    def __init__(self, model):
        self.decode, self.project = [], []
        model.decode_head.register_forward_hook(lambda m, i, o: self.decode.append(o.shape[0]))
        model.projection_head.register_forward_hook(lambda m, i, o: self.project.append(o.shape[0]))


@pytest.mark.parametrize("target_pass,decode_calls", [("projection", 2), ("full", 3)])
def test_each_student_pass_runs_only_its_heads(tmp_path, target_pass, decode_calls):
    """S:sepico.py:323-330: the source pass runs the decode head only ('dec') before
    start_distribution_iter and decode + projection ('all') from it on; 332-341: the target pass
    runs backbone + projection head only ('aux'); 343-370: the mix pass the decode head only
    ('dec'). The decode head never sees a target-only batch."""
    cfg = tiny_config(start_distribution_iter=1, target_pass=target_pass)
    trainer = Trainer(cfg, tmp_path, progress=False)
    student, teacher = _Calls(trainer.model), _Calls(trainer.teacher)
    trainer.step()  # iteration 0 < start_distribution_iter
    assert student.decode == [2, 2] and student.project == []
    trainer.step()
    assert len(student.decode) == 2 + decode_calls and student.project == [2, 2]
    # The teacher: decode head for the pseudo labels, projection head for the estimator.
    assert teacher.decode == [2, 2] and teacher.project == [2, 2]


# --------------------------------------------------------------------------- 3. class-balanced crop

def test_crop_score_follows_the_official_rule():
    """S:ours_transforms.py:38-84 (RandomCrop, prod): score = sum of log counts of the classes with
    more than one pixel, when more than one class is present and the largest share is below
    0.75; else 0."""
    lab = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    assert augment.crop_score(lab, 19) == pytest.approx(np.log(6) + np.log(3))
    assert augment.crop_score(torch.tensor([0] * 8 + [1] * 2), 19) == 0.0  # 0.8 >= 0.75
    assert augment.crop_score(torch.tensor([4] * 10), 19) == 0.0           # one class


def test_class_balanced_crop_keeps_the_best_of_ten_and_the_first_when_none_scores():
    labels = torch.zeros(2, 8, 40, dtype=torch.long)
    labels[0, :, 25:] = torch.arange(15) % 3  # mixed classes on the right of image 0 only
    gen = torch.Generator().manual_seed(3)
    offsets = augment.class_balanced_crops(labels, (8, 8), 19, gen)
    replay = torch.Generator().manual_seed(3)
    for label, chosen in zip(labels, offsets):
        windows = [(int(torch.randint(0, 1, (1,), generator=replay)),
                    int(torch.randint(0, 33, (1,), generator=replay))) for _ in range(augment.CROP_TRIES)]
        scores = [augment.crop_score(label[y:y + 8, x:x + 8], 19) for y, x in windows]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # first of the best
        assert chosen == (windows[best] if max(scores) > 0 else windows[0])
    assert augment.crop_score(augment.cut(labels, offsets, (8, 8))[0], 19) > 0  # found the mixed part
    assert offsets[1][1] in range(33)


def test_pseudo_crop_cuts_whole_target_images_and_labels_the_crop_again(tmp_path, trees, monkeypatch):
    """S:sepico.py:251-269 with pseudo_random_crop and regen_pseudo (on in every published
    experiment, experiments.py:104-110): the target loader hands whole resized images (the
    `_no_crop` dataset config); the teacher labels the whole image, the image is cut to the
    best-scoring crop and the teacher labels the crop again."""
    cfg = real_config(tmp_path, "gta5", trees["gta5"], "cityscapes", trees["cityscapes"],
                      crop_size=[32, 32])
    cfg.method.pseudo_crop = True
    validate(cfg)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.data.target.crop is None  # whole 32 x 64 target images from the loader
    sizes = []
    predict = trainer.teacher.predict_logits
    monkeypatch.setattr(trainer.teacher, "predict_logits",
                        lambda x: (sizes.append(tuple(x.shape[-2:])), predict(x))[1])
    log = trainer.step()
    assert sizes == [(32, 64), (32, 32)] and "loss_mix" in log
    with pytest.raises(ConfigError, match="method.pseudo_crop"):
        cfg.data.target = "synthetic"
        validate(cfg)


# --------------------------------------------------------------------------- 4. strong augmentation

def test_color_jitter_and_blur_equal_kornia_058():
    """kornia 0.5.8 ColorJitter(0.2, 0.2, 0.2, 0.2) (K:augmentation/augmentation.py:234-264,
    random_generator.py:95-107, enhance/adjust.py, color/hsv.py) and GaussianBlur2d with DACS's
    kernel sizes (S:dacs_transforms.py:69-87), against outputs kornia itself computed
    (tests/data/make_kornia058_fixture.py); our generator seeded as kornia's global one draws the
    same factors and order."""
    data = np.load(ROOT / "tests" / "data" / "kornia058_strong.npz")
    for seed in range(6):
        x = torch.from_numpy(data[f"jitter_in_{seed}"])
        ours = augment.color_jitter(x, 0.2, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, torch.from_numpy(data[f"jitter_out_{seed}"]), rtol=0, atol=2e-6)
    for k in range(3):
        x = torch.from_numpy(data[f"blur_in_{k}"])
        ours = augment.gaussian_blur(x, float(data[f"blur_sigma_{k}"]))
        torch.testing.assert_close(ours, torch.from_numpy(data[f"blur_out_{k}"]), rtol=0, atol=2e-6)
    assert [augment.blur_kernel_size(n) for n in (640, 1280, 128, 64, 70)] == [63, 127, 13, 7, 7]


def test_one_gate_draw_per_iteration_for_every_strongly_augmented_image(tmp_path, monkeypatch):
    """S:sepico.py:231-240: the jitter and blur gates are drawn once per iteration and shared by
    the source, target and each mixed image (271-281, 343-370); each call draws its own factors."""
    calls = []
    jitter, blur = augment.color_jitter, augment.gaussian_blur
    monkeypatch.setattr(augment, "color_jitter", lambda x, s, g: (calls.append(("j", x.shape[0])), jitter(x, s, g))[1])
    monkeypatch.setattr(augment, "gaussian_blur", lambda x, s: (calls.append(("b", x.shape[0])), blur(x, s))[1])
    for gates in ((True, True), (False, False), (True, False)):
        monkeypatch.setattr(augment, "draw_strong", lambda gen, strength, jitter_p, blur_p, g=gates:
                            augment.Strong(g[0], g[1], strength))
        trainer = Trainer(tiny_config(start_distribution_iter=0), tmp_path / str(gates), progress=False)
        calls.clear()
        trainer.step()
        # source batch, target batch, then each of the two mixed images on its own
        expected = [(kind, n) for n in (2, 2, 1, 1) for kind, on in zip("jb", gates) if on]
        assert calls == expected


# --------------------------------------------------------------------------- 5. ClassMix

def test_class_mix_draws_from_the_classes_of_the_whole_batch():
    """S:dacs_transforms.py:90-99 (DACS get_class_masks): every image draws half (rounded up)
    of torch.unique of the whole batch's labels, 255 included."""
    labels = torch.zeros(2, 4, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    labels[1] = 2
    labels[1, 0] = 255
    for seed in range(20):
        masks = augment.class_mix_masks(labels, torch.Generator().manual_seed(seed))
        replay = torch.Generator().manual_seed(seed)
        pool = torch.tensor([0, 1, 2, 255])
        for label, mask in zip(labels, masks):
            chosen = pool[torch.randperm(4, generator=replay)[:2]]
            assert torch.equal(mask, torch.isin(label, chosen))
    covered = [bool(augment.class_mix_masks(labels, torch.Generator().manual_seed(s))[1][0].all())
               for s in range(20)]
    assert any(covered)  # the ignore row of image 1 is pasted when 255 is drawn


# --------------------------------------------------------------------------- 6, 7. loss and precision

def test_source_cross_entropy_is_the_mean_over_all_pixels(tmp_path):
    """mmseg 0.16 (S:mmseg/models/losses/cross_entropy_loss.py:11-34, utils.py:28-77):
    reduction none with ignore_index 255, then loss.mean() over all B*H*W pixels."""
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 16, generator=gen)
    label = torch.randint(0, 19, (2, 32, 64), generator=gen)
    label[:, :16] = 255
    valid = F.cross_entropy(F.interpolate(logits, (32, 64), mode="bilinear"), label, ignore_index=255)
    torch.testing.assert_close(trainer.task.source_ce(logits, label), valid / 2)
    trainer.cfg.method.ce_reduction = "valid"
    torch.testing.assert_close(trainer.task.source_ce(logits, label), valid)


@pytest.mark.parametrize("name", ["gta5_to_cityscapes_daformer_dist", "synthia_to_cityscapes_daformer_dist",
                                  "cityscapes_to_darkzurich_daformer_dist"])
def test_published_configs_run_the_official_loop(name):
    """Float32 (no fp16 key in any official config), keep-ratio resizing, the class-balanced
    target crop, official teacher, passes, ClassMix and reduction."""
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    assert cfg.train.amp is False and cfg.data.keep_ratio and cfg.method.pseudo_crop
    m = cfg.method
    assert (m.teacher_statistics, m.target_pass, m.mix_classes, m.ce_reduction) == ("batch", "projection", "batch", "all")
    assert cfg.model.proj_dim == 512 and m.color_jitter_p == 0.8 and m.blur_p == 0.5
    full = load_config(ROOT / "configs" / "gta5_to_cityscapes_fullres.toml")
    assert full.train.amp is True  # a named deviation (its comment)
    assert "deviation" in (ROOT / "configs" / "gta5_to_cityscapes_fullres.toml").read_text()


# --------------------------------------------------------------------------- 8. resizing

def test_keep_ratio_sizes_are_mmcvs():
    """M:mmcv/image/geometric.py:15-26, 117-151: factor = min(long / max(h, w), short / min(h, w)),
    sizes int(x * factor + 0.5)."""
    assert rescaled_size(1052, 1914, (720, 1280)) == (704, 1280)  # GTA5
    assert rescaled_size(1024, 2048, (640, 1280)) == (640, 1280)  # Cityscapes
    assert rescaled_size(1055, 1914, (720, 1280)) == (706, 1280)


def test_views_resize_with_cv2_keeping_the_ratio(tmp_path):
    """mmseg Resize(img_scale, keep_ratio=True) -> mmcv.imrescale with cv2 INTER_LINEAR on the
    uint8 image, INTER_NEAREST on the label (M:mmcv/image/geometric.py:29-35, 85-86)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (105, 191, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (105, 191), dtype=np.uint8)
    write_png(tmp_path / "gta" / "images" / "00000.png", image)
    write_png(tmp_path / "gta" / "labels" / "00000.png", np.array([7, 8, 11, 26], np.uint8)[label % 4])
    folder = SegmentationFolder("gta5", tmp_path / "gta")
    view = train_data.TrainingView(folder, (72, 128), None, keep_ratio=True, flip=False)
    img, lbl = view[train_data.Draw(0, 0, 0)]
    assert img.shape == (3, 70, 128) and view.output_size() == (70, 128)
    expected = cv2.resize(image, (128, 70), interpolation=cv2.INTER_LINEAR)
    assert torch.equal((img * 255).round().to(torch.uint8), torch.from_numpy(expected).permute(2, 0, 1))
    expected_lbl = cv2.resize(np.array([0, 1, 2, 13], np.uint8)[label % 4], (128, 70),
                              interpolation=cv2.INTER_NEAREST)
    assert torch.equal(lbl, torch.from_numpy(expected_lbl).long())
    test_img, test_lbl = train_data.TestView(folder, (72, 128), keep_ratio=True)[0]
    assert torch.equal(test_img, img) and test_lbl.shape == (105, 191)


# --------------------------------------------------------------------------- 10. random init

def test_a_real_dataset_run_without_pretrained_weights_warns_once(tmp_path, trees, capsys):
    cfg = real_config(tmp_path, "gta5", trees["gta5"], "cityscapes", trees["cityscapes"])
    Trainer(cfg, tmp_path / "run", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "random weights" in err[0] and "model.pretrained" in err[0]
    Trainer(tiny_config(), tmp_path / "synthetic", progress=False)  # the synthetic demo: no warning
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- 11. evaluation

class _Coarse(torch.nn.Module):
    """Fixed logits at stride 4 of the input, whatever the image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def predict_logits(self, x):
        return self.logits


def test_whole_image_inference_resizes_twice_as_the_official_test_path():
    """S:encoder_decoder_projector.py:73-83 (encode_decode: logits to the network input) and
    247-264 (whole_inference: then to the label's original size)."""
    logits = torch.randn(1, 5, 8, 16, generator=torch.Generator().manual_seed(0))
    images = torch.rand(1, 3, 32, 64)
    out = predict_logits(_Coarse(logits), images, (51, 102), num_classes=5)
    twice = F.interpolate(F.interpolate(logits, (32, 64), mode="bilinear"), (51, 102), mode="bilinear")
    once = F.interpolate(logits, (51, 102), mode="bilinear")
    torch.testing.assert_close(out, twice, rtol=0, atol=0)
    assert not torch.equal(out.argmax(1), once.argmax(1))


def test_evaluation_imports_first():
    proc = subprocess.run([sys.executable, "-c", "import sepico.evaluation"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
