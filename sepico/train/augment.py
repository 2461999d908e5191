"""Self-training pieces that are not the network: pseudo labels, the class-balanced target crop,
ClassMix and strong augmentation, computed as the official code computes them.

Every random choice draws from an explicit ``torch.Generator`` that the trainer checkpoints, so a
resumed run makes the same choices as an uninterrupted one. Images are float [B, 3, H, W] in [0, 1].

Strong augmentation (DACS ``strong_transform``): colour jitter as kornia 0.5.8's
``ColorJitter(s, s, s, s)`` computes it, then a Gaussian blur as kornia's ``GaussianBlur2d``; whether
each of the two runs is decided once per iteration (``draw_strong``) and shared by every image
the iteration augments; each call draws its own jitter factors and blur sigma.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepico.data.cityscapes import IGNORE_INDEX


# --------------------------------------------------------------------------- pseudo labels

def pseudo_labels(logits: torch.Tensor, size, *, threshold: float, mode: str, ignore_top: int = 0,
                  ignore_bottom: int = 0):
    """Teacher logits [B, C, h, w] -> (labels [B, H, W], weights [B, H, W]) at image size.

    mode "dacs": every pixel weighs the batch's share of pixels whose top probability reaches the
    threshold (one scalar, as DACS and SePiCo); "pixel": 1 where confident, 0 elsewhere. The top
    and bottom rows given get weight 0 (the GTA5 -> Cityscapes setting blanks 15 and 120)."""
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return confident_labels(torch.softmax(logits, dim=1), threshold=threshold, mode=mode, ignore_top=ignore_top,
                            ignore_bottom=ignore_bottom)


def confident_labels(scores: torch.Tensor, *, threshold: float, mode: str, ignore_top: int = 0,
                     ignore_bottom: int = 0):
    """(labels, weights) [B, H, W] from class scores [B, C, H, W] at image size (softmax
    probabilities, or the fused day-night scores): the argmax, and the weights of
    ``pseudo_labels`` from the top score."""
    conf, labels = scores.max(dim=1)
    confident = (conf >= threshold).float()
    # dacs: the share as a tensor (no host sync), the same float32 value at every pixel.
    weights = confident if mode == "pixel" else confident.mean().expand_as(conf).clone()
    if ignore_top:
        weights[:, :ignore_top] = 0
    if ignore_bottom:
        weights[:, weights.shape[1] - ignore_bottom:] = 0
    return labels, weights


CROP_TRIES = 10        # candidate crops per target image (official pseudo_random_crop)
CROP_MAX_SHARE = 0.75  # a crop scores only while its largest class covers less than this


def crop_score(labels: torch.Tensor, num_classes: int) -> float:
    """Score of a crop's pseudo labels: the sum of log pixel counts over the classes with more
    than one pixel, where more than one class is present and the largest class's share is below
    ``CROP_MAX_SHARE``; 0 otherwise."""
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).double()
    present = counts[counts > 0]
    if len(present) < 2 or present.max() / present.sum() >= CROP_MAX_SHARE:
        return 0.0
    return float(torch.log(counts[counts > 1]).sum())


def class_balanced_crops(labels: torch.Tensor, crop, num_classes: int, gen: torch.Generator) -> list:
    """Per image of pseudo labels [B, H, W]: the (top, left) of the best of ``CROP_TRIES`` random
    ``crop`` (h, w) windows by ``crop_score``; the first window when none scores above 0."""
    height, width = labels.shape[-2:]
    ch, cw = crop
    if ch > height or cw > width:
        raise ValueError(f"crop {ch} x {cw} is larger than the target image {height} x {width}")
    offsets = []
    for label in labels:
        best, best_score = None, 0.0
        for _ in range(CROP_TRIES):
            y = int(torch.randint(0, height - ch + 1, (1,), generator=gen))
            x = int(torch.randint(0, width - cw + 1, (1,), generator=gen))
            score = crop_score(label[y:y + ch, x:x + cw], num_classes)
            if best is None or score > best_score:
                best, best_score = (y, x), score
        offsets.append(best)
    return offsets


def cut(images: torch.Tensor, offsets, crop) -> torch.Tensor:
    """The ``crop`` (h, w) windows at ``offsets`` of a batch [B, ..., H, W], stacked."""
    ch, cw = crop
    return torch.stack([img[..., y:y + ch, x:x + cw] for img, (y, x) in zip(images, offsets)])


# --------------------------------------------------------------------------- ClassMix

def class_mix_masks(labels: torch.Tensor, gen: torch.Generator, *, per: str = "batch") -> torch.Tensor:
    """ClassMix (DACS ``get_class_masks``): per image, a random half (rounded up) of the classes;
    the mask [B, H, W] is True on their pixels.

    ``per="batch"`` (DACS): the classes are those of the whole batch's labels, ignore (255)
    included, so an image may draw a class it does not hold, and ignored source pixels can be
    pasted. ``per="image"``: those of the image's own label, ignore excluded."""
    masks = []
    batch_classes = torch.unique(labels)
    for label in labels:
        if per == "batch":
            classes = batch_classes
        else:
            classes = torch.unique(label)
            classes = classes[classes != IGNORE_INDEX]
        pick = torch.randperm(len(classes), generator=gen)[: (len(classes) + 1) // 2]
        masks.append(torch.isin(label, classes[pick.to(classes.device)]))
    return torch.stack(masks)


def mix(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """foreground where mask, background elsewhere; mask [B, H, W] broadcasts over channels."""
    m = mask.unsqueeze(1) if foreground.dim() == 4 else mask
    return torch.where(m, foreground, background)


# --------------------------------------------------------------------------- strong augmentation

@dataclass(frozen=True)
class Strong:
    """One iteration's strong-augmentation gates and settings (DACS draws the two gates once per
    iteration: ``random.uniform(0, 1) > p`` for the jitter and ``> 0.5`` for the blur)."""
    jitter: bool
    blur: bool
    strength: float


def draw_strong(gen: torch.Generator, *, strength: float, jitter_p: float, blur_p: float) -> Strong:
    u = torch.rand(2, generator=gen)
    return Strong(jitter=bool(u[0] < jitter_p), blur=bool(u[1] < blur_p), strength=strength)


def strong_augment(images: torch.Tensor, params: Strong, gen: torch.Generator) -> torch.Tensor:
    """Colour jitter, then blur, each where the iteration's gate says so (one call: one set of
    jitter factors per image, one order and one sigma)."""
    if params.jitter:
        images = color_jitter(images, params.strength, gen)
    if params.blur:
        images = gaussian_blur(images, float(0.15 + torch.rand(1, generator=gen)))
    return images


def color_jitter(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """kornia 0.5.8 ``ColorJitter(s, s, s, s)`` (p = 1).

    Per image: brightness, contrast and saturation factors in [max(0, 1 - s), 1 + s] and a hue
    factor in [-s, s], drawn in that order but hue before saturation (kornia's order); then one
    random order of the four operations for the call. Brightness adds (factor - 1) and clamps to
    [0, 1]; contrast multiplies and clamps; saturation scales S in HSV (clamped to [0, 1]); hue adds
    factor * 2 pi to H (mod 2 pi). No final clamp."""
    b = images.shape[0]
    low = max(0.0, 1.0 - strength)

    def uniform(lo, hi):
        return (lo + torch.rand(b, generator=gen) * (hi - lo)).to(images).view(b, 1, 1, 1)

    brightness, contrast = uniform(low, 1.0 + strength), uniform(low, 1.0 + strength)
    hue = uniform(max(-0.5, -strength), min(0.5, strength))
    saturation = uniform(low, 1.0 + strength)
    order = torch.randperm(4, generator=gen).tolist()
    out = images
    for op in order:
        if op == 0:
            out = (out + (brightness - 1.0)).clamp(0.0, 1.0)
        elif op == 1:
            out = (out * contrast).clamp(0.0, 1.0)
        elif op == 2:
            h, s, v = rgb_to_hsv(out)
            out = hsv_to_rgb(h, (s * saturation).clamp(0.0, 1.0), v)
        else:
            h, s, v = rgb_to_hsv(out)
            out = hsv_to_rgb(torch.fmod(h + hue * 2 * math.pi, 2 * math.pi), s, v)
    return out


def rgb_to_hsv(images: torch.Tensor, eps: float = 1e-6):
    """kornia 0.5.8 ``rgb_to_hsv``: (H in [0, 2 pi], S, V), each [B, 1, H, W]."""
    maxc, max_idx = images.max(dim=1, keepdim=True)  # first channel at the max: ties go R, G, B
    minc = images.min(dim=1, keepdim=True).values
    v = maxc
    delta = maxc - minc
    s = delta / (v + eps)
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - images).unbind(dim=1)
    rc, gc, bc = rc.unsqueeze(1), gc.unsqueeze(1), bc.unsqueeze(1)
    candidates = torch.cat([bc - gc, 2.0 * delta + rc - bc, 4.0 * delta + gc - rc], dim=1)
    h = torch.gather(candidates, 1, max_idx) / delta
    h = 2 * math.pi * torch.remainder(h / 6.0, 1.0)
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """kornia 0.5.8 ``hsv_to_rgb`` of [B, 1, H, W] channels (H in radians)."""
    h = h / (2 * math.pi)
    hi = torch.remainder(torch.floor(h * 6), 6)
    f = torch.remainder(h * 6, 6) - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long()
    r = torch.stack([v, q, p, p, t, v], dim=0)
    g = torch.stack([t, v, v, q, p, p], dim=0)
    bl = torch.stack([p, p, t, v, v, q], dim=0)
    pick = hi.unsqueeze(0)
    return torch.cat([x.gather(0, pick).squeeze(0) for x in (r, g, bl)], dim=1)


def blur_kernel_size(n: int) -> int:
    """DACS's kernel size along an axis of n pixels: floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) % 2),
    always odd (63 for 640, 13 for 128)."""
    k = math.ceil(0.1 * n)
    return int(math.floor(k - 0.5 + k % 2))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """kornia ``GaussianBlur2d((ky, kx), (sigma, sigma))`` with DACS's kernel sizes per axis and
    reflect padding (computed separably: the 2D kernel is the outer product of the two)."""
    _, c, height, width = images.shape
    out = images
    for axis, n in ((2, height), (3, width)):
        size = blur_kernel_size(n)
        x = torch.arange(size, dtype=images.dtype, device=images.device) - size // 2
        k = torch.exp(-x.pow(2) / (2 * sigma ** 2))
        k = k / k.sum()
        pad = (0, 0, size // 2, size // 2) if axis == 2 else (size // 2, size // 2, 0, 0)
        shape = (1, 1, size, 1) if axis == 2 else (1, 1, 1, size)
        out = F.conv2d(F.pad(out, pad, mode="reflect"), k.view(shape).expand(c, -1, -1, -1), groups=c)
    return out
