"""One SePiCo training step, pass by pass as the official ``mmseg/models/uda/sepico.py``
``forward_train`` runs them (docs/training.md), as a task of its own (timm's ``TrainingTask``):
``SelfTrainingStep`` owns the student, the EMA teacher and the SePiCo method; ``step(batch,
iteration)`` runs every pass, backpropagates each loss as soon as it is formed (one student graph
alive at a time) and returns the step's log entries (device tensors). The loop around it (the
optimiser update, gradient averaging, checkpoints, signals, metrics) is ``sepico.train.Trainer``.

One iteration: EMA update of the teacher's parameters; teacher passes (training-mode BatchNorm on
the batch in front of it, dropout off, no autograd), each on one domain: the weak target image
gives pseudo labels (optionally a class-balanced crop of it, labelled again), the weak source image
gives the embeddings that update the class distribution; then the student: strongly augmented
source (decode head + cross-entropy, + projection head + contrastive loss from
``start_distribution_iter``), strongly augmented target (encoder + projection head: contrastive loss
with pseudo labels), ClassMix image (encoder + decode head: pseudo-weighted cross-entropy).

Names: ``feats`` are the encoder's stage features, ``emb`` the projection head's pixel embeddings.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sepico.data.cityscapes import IGNORE_INDEX
from sepico.data.night import fuse_day_night
from sepico.data.transforms import normalize
from sepico.method import CONTRASTIVE_VARIANTS
from sepico.models.heads import resize_to
from sepico.train import augment


class PseudoLabels(NamedTuple):
    labels: torch.Tensor   # int64 [B, H, W]: the teacher's argmax
    weights: torch.Tensor  # float [B, H, W]: the pseudo weight of each pixel (0: not used)


class Batch(NamedTuple):
    source: torch.Tensor         # weak source images [B, 3, H, W] in [0, 1]
    source_labels: torch.Tensor  # int64 [B, H, W]
    target: torch.Tensor         # weak target images [B, 3, H, W] in [0, 1]
    days: torch.Tensor | None    # the day image of each night image (method.day_night), else None


class SelfTrainingStep:
    """The passes of one iteration.

    Args:
        student, teacher: the segmentor and its EMA copy (``teacher`` in the mode the method wants:
            training-mode BatchNorm, dropout off, for the official loop).
        method: the ``sepico.method.SePiCo`` object of a contrastive variant, else None.
        method_cfg: ``MethodConfig``; num_classes, crop_size: the model's classes and the
            class-balanced crop of ``method.pseudo_crop``.
        class_prior: class weights of the cross-entropies and the day-night fusion, or None.
        generator: every random draw of the step (crops, jitter, blur, ClassMix).
        amp: bfloat16 autocast of the forward passes on a GPU.
        group: the process group the class statistics are reduced over (torchrun), or None.
    """

    def __init__(self, student, teacher, method, method_cfg, *, num_classes: int, crop_size=(0, 0),
                 class_prior=None, generator: torch.Generator, amp: bool = False, group=None):
        self.student, self.teacher, self.method, self.method_cfg = student, teacher, method, method_cfg
        self.num_classes, self.crop_size = num_classes, tuple(int(v) for v in crop_size)
        self.class_prior, self.gen, self.amp, self.group = class_prior, generator, amp, group

    def autocast(self):
        device = next(self.student.parameters()).device
        if device.type == "cuda" and self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ the step

    def step(self, batch: Batch, iteration: int) -> dict:
        """One iteration of the official ``forward_train``: the teacher's passes, then the student's
        source, target and mix passes, each backpropagated at once. Returns the log entries (device
        tensors: the caller fetches them in one transfer)."""
        cfg = self.method_cfg
        self.update_teacher(iteration)
        contrastive = cfg.variant in CONTRASTIVE_VARIANTS
        self_training = cfg.variant != "source_only" and iteration >= cfg.start_self_training_iter
        contrast_now = contrastive and iteration >= cfg.start_distribution_iter
        # One gate draw per iteration for the jitter and one for the blur, shared by every
        # strongly augmented image of the iteration (DACS strong_parameters).
        strong = augment.draw_strong(self.gen, strength=cfg.color_jitter_strength,
                                     jitter_p=cfg.color_jitter_p, blur_p=cfg.blur_p)
        log = {}
        target, pseudo, source_small = batch.target, None, None
        if self_training:  # teacher, one pass per domain
            target, pseudo = self.target_pseudo_labels(batch.target, batch.days)
            log["pseudo_weight"] = pseudo.weights.mean()
        if contrastive:  # every iteration, also before start_distribution_iter
            source_small = self.update_distribution(batch.source, batch.source_labels)
        log |= self.source_pass(batch.source, batch.source_labels, strong, source_small if contrast_now else None,
                                iteration)
        if contrast_now and self_training:
            log |= self.target_pass(target, pseudo, strong, iteration)
        if self_training and cfg.mix:
            log |= self.mix_pass(batch.source, batch.source_labels, target, pseudo, strong)
        return log

    @torch.no_grad()
    def update_teacher(self, iteration: int) -> None:
        """EMA of the parameters with alpha = min(1 - 1 / (t + 1), ema_alpha), so the teacher
        starts as a copy. Buffers are not averaged (official); with ``teacher_statistics =
        "running"`` the BatchNorm statistics are averaged too (this project's earlier loop)."""
        alpha = min(1.0 - 1.0 / (iteration + 1), self.method_cfg.ema_alpha)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        if self.method_cfg.teacher_statistics == "running":
            for t, s in zip(self.teacher.buffers(), self.student.buffers()):
                if t.is_floating_point():
                    t.mul_(alpha).add_(s, alpha=1.0 - alpha)
                else:
                    t.copy_(s)

    # ------------------------------------------------------------------ teacher passes

    @contextlib.contextmanager
    def teacher_pass(self):
        """No autograd (the teacher learns by EMA only); BatchNorm keeps the teacher's mode."""
        with torch.no_grad(), self.autocast():
            yield

    def pseudo_labels(self, images, days=None) -> PseudoLabels:
        """Teacher pseudo labels and weights for a weak target batch. With ``days`` (the day image
        of each night image, official ``SePiCoDark``) from the fused day-night probabilities,
        weighted by the class prior."""
        cfg = self.method_cfg
        weights = dict(threshold=cfg.pseudo_threshold, mode=cfg.pseudo_weight, ignore_top=cfg.ignore_top,
                       ignore_bottom=cfg.ignore_bottom)
        if days is None:
            with self.teacher_pass():
                logits = self.teacher.predict_logits(normalize(images))
            return PseudoLabels(*augment.pseudo_labels(logits, images.shape[-2:], **weights))
        fused = fuse_day_night(self.teacher_probabilities(days), self.teacher_probabilities(images),
                               day_ratio=cfg.day_ratio, weights=self.class_prior)
        return PseudoLabels(*augment.confident_labels(fused, **weights))

    def teacher_probabilities(self, images):
        """The teacher's softmax at image size (logits resized first, as ``encode_decode``)."""
        with self.teacher_pass():
            logits = self.teacher.predict_logits(normalize(images))
        return torch.softmax(resize_to(logits.float(), images.shape[-2:]), dim=1)

    def target_pseudo_labels(self, images, days=None) -> tuple[torch.Tensor, PseudoLabels]:
        """(target images, pseudo labels). With ``pseudo_crop`` the whole images (and their day
        images) are cut to their class-balanced crop, which the teacher then labels again (official
        ``pseudo_random_crop`` + ``regen_pseudo``): the crop's images and labels reach the later passes."""
        pseudo = self.pseudo_labels(images, days)
        if self.method_cfg.pseudo_crop:
            offsets = augment.class_balanced_crops(pseudo.labels, self.crop_size, self.num_classes, self.gen)
            images = augment.cut(images, offsets, self.crop_size)
            days = None if days is None else augment.cut(days, offsets, self.crop_size)
            pseudo = self.pseudo_labels(images, days)
        return images, pseudo

    def update_distribution(self, images, labels) -> torch.Tensor:
        """Teacher embeddings of the weak source batch (encoder + projection head) update the
        class distribution with the ground-truth source labels; target features never enter it.
        Returns the source labels at feature resolution, which the source pass's contrastive
        loss reuses."""
        with self.teacher_pass():
            emb = self.teacher.project(self.teacher.encode(normalize(images)))
        small = self.method.labels(labels, emb.shape[-2:])
        self.method.update(emb, small, group=self.group)
        return small

    # ------------------------------------------------------------------ student passes

    def source_ce(self, logits, labels):
        """mmseg 0.16's decode-head loss: the mean over all pixels, ignored ones counting 0
        (``ce_reduction = "all"``), or over the labelled pixels only (``"valid"``)."""
        up = resize_to(logits.float(), labels.shape[-2:])
        loss = F.cross_entropy(up, labels, weight=self.class_prior, ignore_index=IGNORE_INDEX, reduction="none")
        if self.method_cfg.ce_reduction == "valid":
            return loss.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
        return loss.mean()

    def source_pass(self, images, labels, strong, contrast_labels, iteration: int) -> dict:
        """Student, strongly augmented source: decode head + cross-entropy; from
        start_distribution_iter on (``contrast_labels``: the labels at feature resolution) also
        the projection head + contrastive loss."""
        with self.autocast():
            feats = self.student.encode(normalize(augment.strong_augment(images, strong, self.gen)))
            loss = self.source_ce(self.student.decode(feats), labels)
        log = {"loss_ce": loss.detach()}
        if contrast_labels is not None:
            with self.autocast():
                emb = self.student.project(feats)
            cl = self.method.loss(emb, contrast_labels, iteration)
            log["loss_cl_src"] = cl.detach()
            loss = loss + cl
        loss.backward()
        return log

    def target_pass(self, images, pseudo: PseudoLabels, strong, iteration: int) -> dict:
        """Student, strongly augmented target: encoder + projection head (the decode head never
        sees a target-only batch), contrastive loss with the pseudo labels (the argmax at every
        pixel), ignored only where the pseudo weight is 0."""
        with self.autocast():
            feats = self.student.encode(normalize(augment.strong_augment(images, strong, self.gen)))
            emb = self.student.project(feats)
            if self.method_cfg.target_pass == "full":  # the earlier loop: the decode head ran here too
                self.student.decode(feats)
        small = self.method.labels(torch.where(pseudo.weights > 0, pseudo.labels, IGNORE_INDEX), emb.shape[-2:])
        cl = self.method.loss(emb, small, iteration)
        cl.backward()
        return {"loss_cl_tgt": cl.detach()}

    def mix_pass(self, src_img, src_lbl, tgt_img, pseudo: PseudoLabels, strong) -> dict:
        """ClassMix, encoder + decode head: source classes pasted from the weak source onto the
        weak target, then strong augmentation per mixed image; the cross-entropy weighted by 1 on
        pasted pixels and the pseudo weight elsewhere, its mean over all pixels."""
        masks = augment.class_mix_masks(src_lbl, self.gen, per=self.method_cfg.mix_classes)
        mixed = augment.mix(masks, src_img, tgt_img)
        mixed = torch.cat([augment.strong_augment(mixed[i:i + 1], strong, self.gen) for i in range(mixed.shape[0])])
        mixed_lbl = augment.mix(masks, src_lbl, pseudo.labels)
        mixed_w = torch.where(masks, torch.ones_like(pseudo.weights), pseudo.weights)
        with self.autocast():
            logits = self.student.predict_logits(normalize(mixed))
            ce = F.cross_entropy(resize_to(logits.float(), mixed_lbl.shape[-2:]), mixed_lbl, weight=self.class_prior,
                                 ignore_index=IGNORE_INDEX, reduction="none")
        loss = (ce * mixed_w).mean()
        loss.backward()
        return {"loss_mix": loss.detach()}


__all__ = ["Batch", "PseudoLabels", "SelfTrainingStep"]
