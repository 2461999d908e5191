"""Facts of the official iteration that a plausible wrong change would break, each checked on the
step itself (``SelfTrainingStep``: no Trainer, dataset or run folder), and the published Dark
Zurich settings. Each names the official file and line (BIT-DA/SePiCo at bce38edd).
"""
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sepico.data.cityscapes import IGNORE_INDEX
from sepico.data.night import class_prior_weights
from sepico.data.transforms import normalize
from sepico.train import augment
from tests.helpers import images, labels, tiny_step

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Spy:
    """Wraps the step's SePiCo object: records what each call is given, in order."""

    def __init__(self, method):
        self.method, self.calls = method, []

    def labels(self, label, size):
        self.calls.append(("labels", label.clone()))
        return self.method.labels(label, size)

    def update(self, emb, small, group=None):
        self.calls.append(("update", small.tensor.clone()))
        return self.method.update(emb, small, group=group)

    def loss(self, emb, small, iteration=0):
        self.calls.append(("loss", small.tensor.clone()))
        return self.method.loss(emb, small, iteration)


def test_the_target_contrast_takes_the_argmax_at_every_pixel_and_ignores_only_zero_weights():
    # sepico.py l. 253: pseudo_label is the argmax of the EMA softmax at every pixel; l. 256 and
    # l. 283: one scalar weight (the share of confident pixels) at every pixel; l. 286-292: the
    # ignored rows weigh 0; l. 335: pseudo_lbl[pseudo_weight == 0.] = ignore_index, nothing else.
    step = tiny_step(pseudo_weight="dacs", ignore_top=3)
    target = images(2, 32, 48, seed=1)
    with torch.no_grad():
        probs = torch.softmax(F.interpolate(step.teacher.predict_logits(normalize(target)), size=(32, 48),
                                            mode="bilinear", align_corners=False), dim=1)
    step.method_cfg.pseudo_threshold = float(probs.max(1).values.median())  # half the pixels confident
    pseudo = step.pseudo_labels(target)
    confident = probs.max(1).values >= step.method_cfg.pseudo_threshold
    assert 0 < confident.float().mean() < 1  # some pixels below the threshold: they must stay in
    spy = step.method = Spy(step.method)
    strong = augment.draw_strong(step.gen, strength=0.2, jitter_p=0.8, blur_p=0.5)
    step.target_pass(target, pseudo, strong, iteration=1)
    given = spy.calls[0][1]
    expected = probs.argmax(1)
    expected[:, :3] = IGNORE_INDEX
    assert torch.equal(given, expected)
    assert (given[:, 3:] != IGNORE_INDEX).all()  # not the confidence mask


def test_the_mix_loss_weighs_pasted_pixels_1_and_the_rest_by_the_pseudo_weight_over_all_pixels():
    # sepico.py l. 351-361: ClassMix masks of the source labels; the label mixes gt and pseudo label,
    # the weight mixes gt_pixel_weight (ones, l. 293) and pseudo_weight; l. 366: the decode head's
    # loss with seg_weight, mmseg's cross_entropy (reduction mean, avg_factor None: the mean over all
    # pixels, an ignored one counting 0) with the decode head's class_weight (experiments.py l. 135-138:
    # the Dark Zurich class weights).
    prior = class_prior_weights(0.05)
    step = tiny_step(pseudo_weight="pixel", class_prior=prior)
    src, src_lbl, tgt = images(2, 32, 48, 2), labels(2, 32, 48, 3), images(2, 32, 48, 4)
    pseudo = step.pseudo_labels(tgt)
    pseudo = pseudo._replace(weights=torch.rand(pseudo.weights.shape, generator=torch.Generator().manual_seed(5)))
    strong = augment.draw_strong(torch.Generator().manual_seed(6), strength=0.2, jitter_p=0.0, blur_p=0.0)
    gen_state = step.gen.get_state()
    log = step.mix_pass(src, src_lbl, tgt, pseudo, strong)
    step.gen.set_state(gen_state)  # the same masks by hand
    masks = augment.class_mix_masks(src_lbl, step.gen, per="batch")
    mixed = augment.mix(masks, src, tgt)
    mixed = torch.cat([augment.strong_augment(mixed[i:i + 1], strong, step.gen) for i in range(2)])
    mixed_lbl = torch.where(masks, src_lbl, pseudo.labels)
    weight = torch.where(masks, torch.ones_like(pseudo.weights), pseudo.weights)
    with torch.no_grad():
        logits = F.interpolate(step.student.predict_logits(normalize(mixed)), size=(32, 48), mode="bilinear",
                               align_corners=False)
    ce = F.cross_entropy(logits, mixed_lbl, weight=prior, ignore_index=IGNORE_INDEX, reduction="none")
    assert (mixed_lbl == IGNORE_INDEX).any() and masks.any() and (~masks).any()
    torch.testing.assert_close(log["loss_mix"], (ce * weight).sum() / ce.numel())  # over all pixels
    valid = (mixed_lbl != IGNORE_INDEX).sum()
    assert not torch.isclose(log["loss_mix"], (ce * weight).sum() / valid)


def test_the_regenerated_crop_labels_and_weights_reach_the_later_passes():
    # sepico.py l. 259-269: the crop of the weak target image is labelled again (regen_pseudo) and
    # its pseudo_weight (l. 268) is the one of the crop; l. 269 target_img is the crop; l. 283 the
    # weight map has the crop's shape.
    step = tiny_step(pseudo_weight="dacs", pseudo_threshold=0.9, pseudo_crop=True, crop_size=(16, 24))
    whole = images(2, 32, 48, 7)
    first = step.pseudo_labels(whole)
    gen_state = step.gen.get_state()
    cropped, pseudo = step.target_pseudo_labels(whole)
    step.gen.set_state(gen_state)
    offsets = augment.class_balanced_crops(first.labels, (16, 24), 19, step.gen)
    assert torch.equal(cropped, augment.cut(whole, offsets, (16, 24)))
    again = step.pseudo_labels(cropped)
    assert torch.equal(pseudo.labels, again.labels) and torch.equal(pseudo.weights, again.weights)
    # the crop's own labels, not a cut of the whole image's
    assert not torch.equal(pseudo.labels, augment.cut(first.labels, offsets, (16, 24)))


def test_day_night_the_day_image_takes_the_night_crop_and_the_night_crop_goes_on():
    # sepico_dark.py l. 316: the day image of each night image; l. 326-335: both softmaxes fused;
    # l. 343-344: one random_crop cuts the night and the day image at the same offsets (l. 246-271);
    # l. 347-359: both crops labelled again; l. 362-363: the night crop is the weak target from then on.
    step = tiny_step(pseudo_weight="dacs", pseudo_threshold=0.9, pseudo_crop=True, crop_size=(16, 24),
                     class_prior=class_prior_weights(0.05), day_ratio=0.8)
    night, day = images(2, 32, 48, 8), images(2, 32, 48, 9)
    seen = []
    real = step.teacher_probabilities
    step.teacher_probabilities = lambda x: (seen.append(x.clone()), real(x))[1]
    gen_state = step.gen.get_state()
    out, _ = step.target_pseudo_labels(night, day)
    assert len(seen) == 4  # day, night; then the two crops
    torch.testing.assert_close(seen[0], day)
    torch.testing.assert_close(seen[1], night)
    step.gen.set_state(gen_state)
    labels_whole = augment.confident_labels(_fused(real, day, night, step), threshold=0.9, mode="dacs")[0]
    offsets = augment.class_balanced_crops(labels_whole, (16, 24), 19, step.gen)
    torch.testing.assert_close(seen[2], augment.cut(day, offsets, (16, 24)))
    torch.testing.assert_close(seen[3], augment.cut(night, offsets, (16, 24)))
    torch.testing.assert_close(out, augment.cut(night, offsets, (16, 24)))  # the night crop goes on


def _fused(probabilities, day, night, step):
    from sepico.data.night import fuse_day_night

    return fuse_day_night(probabilities(day), probabilities(night), day_ratio=step.method_cfg.day_ratio,
                          weights=step.class_prior)


def test_the_distribution_update_takes_the_ground_truth_before_the_steps_contrastive_loss():
    # sepico.py l. 299: weak_gt_semantic_seg is the ground truth of the source batch; l. 314-317:
    # update_proto on it (the EMA model's source features) before l. 325-330, the source pass whose
    # contrastive loss uses the updated mean and covariance.
    from sepico.train.step import Batch

    step = tiny_step(start_self_training_iter=0)
    spy = step.method = Spy(step.method)
    src_lbl = labels(2, 32, 48, 10)
    step.step(Batch(images(2, 32, 48, 11), src_lbl, images(2, 32, 48, 12), None), iteration=1)
    kinds = [kind for kind, _ in spy.calls]
    assert kinds.index("update") < kinds.index("loss")
    assert torch.equal(spy.calls[kinds.index("labels")][1], src_lbl)  # the ground truth, not a prediction
    first_loss = spy.calls[kinds.index("loss")][1]
    assert torch.equal(first_loss, spy.calls[kinds.index("update")][1])  # the same labels reach the loss


def _toml(name):
    return tomllib.loads((ROOT / "configs" / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", ["cityscapes_to_darkzurich_deeplabv2_dist", "cityscapes_to_darkzurich_daformer_dist"])
def test_the_published_dark_zurich_settings(name):
    cfg = _toml(name)
    # experiments.py l. 457 / 502: seeds = [42]; l. 467 / 512: iters = 60000.
    assert cfg["train"]["seed"] == 42 and cfg["train"]["max_iters"] == 60000
    # l. 491 / 537: std = 0.05 (0.16 for test); l. 259: day_ratio = 0.8 (not changed by ids 7, 8).
    assert cfg["method"]["class_prior"] == 0.05 and cfg["data"]["dark_zurich_test_prior"] == 0.16
    assert cfg["method"]["day_night"] is True and cfg["method"]["day_ratio"] == 0.8
    # l. 465 / 510: plcrop = False, so no pseudo_weight_ignore_top / bottom (l. 89-91).
    assert cfg["method"]["ignore_top"] == 0 and cfg["method"]["ignore_bottom"] == 0
    # configs/_base_/datasets/uda_cityscapes_to_dark_zurich_640x640_no_crop.py l. 15, 27, 40:
    # Cityscapes at (1280, 640), Dark Zurich at (1280, 720) for training and test, keep ratio.
    assert cfg["data"]["source_size"] == [640, 1280] and cfg["data"]["target_size"] == [720, 1280]
    assert cfg["data"]["test_size"] == [720, 1280] and cfg["data"]["keep_ratio"] is True
    # no fp16 anywhere in experiments.py or configs/: float32 training
    assert cfg["train"]["amp"] is False
