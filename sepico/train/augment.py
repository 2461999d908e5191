"""Self-training pieces that are not the network: pseudo labels, ClassMix and strong augmentation.

Every random choice draws from an explicit ``torch.Generator`` that the trainer checkpoints, so a
resumed run makes the same choices as an uninterrupted one. Images are float [B, 3, H, W] in [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the ImageNet statistics the encoders expect."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def pseudo_labels(logits: torch.Tensor, size, *, threshold: float, mode: str, ignore_top: int = 0,
                  ignore_bottom: int = 0):
    """Teacher logits [B, C, h, w] -> (labels [B, H, W], weights [B, H, W]) at image size.

    mode "dacs": every pixel weighs the batch's share of pixels whose top probability reaches the
    threshold (one scalar, as DACS and SePiCo); "pixel": 1 where confident, 0 elsewhere. The top
    and bottom rows given get weight 0 (the GTA5 -> Cityscapes setting blanks 15 and 120)."""
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    conf, labels = torch.softmax(logits, dim=1).max(dim=1)
    confident = (conf >= threshold).float()
    weights = confident if mode == "pixel" else torch.full_like(conf, confident.mean().item())
    if ignore_top:
        weights[:, :ignore_top] = 0
    if ignore_bottom:
        weights[:, weights.shape[1] - ignore_bottom:] = 0
    return labels, weights


def class_mix_masks(labels: torch.Tensor, gen: torch.Generator, ignore_index: int = 255) -> torch.Tensor:
    """ClassMix (DACS): per image, a random half (rounded up) of the classes present in its
    source label; the mask [B, H, W] is True on their pixels."""
    masks = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        pick = torch.randperm(len(classes), generator=gen)[: (len(classes) + 1) // 2]
        masks.append(torch.isin(label, classes[pick.to(classes.device)]))
    return torch.stack(masks)


def mix(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """foreground where mask, background elsewhere; mask [B, H, W] broadcasts over channels."""
    m = mask.unsqueeze(1) if foreground.dim() == 4 else mask
    return torch.where(m, foreground, background)


def _uniform(gen, low, high, n):
    return low + (high - low) * torch.rand(n, generator=gen)


def color_jitter(images: torch.Tensor, strength: float, p: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in [1 - s, 1 + s]) and hue (a rotation of up to
    s * 180 degrees in YIQ space), each image with probability p."""
    b = images.shape[0]
    apply = (torch.rand(b, generator=gen) < p).to(images.device)
    factors = [_uniform(gen, 1 - strength, 1 + strength, b).to(images) for _ in range(3)]
    hue = _uniform(gen, -strength, strength, b).to(images) * math.pi
    out = images * factors[0].view(b, 1, 1, 1)
    gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
    out = (out - gray.mean(dim=(2, 3), keepdim=True)) * factors[1].view(b, 1, 1, 1) + gray.mean(dim=(2, 3), keepdim=True)
    gray = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
    out = (out - gray) * factors[2].view(b, 1, 1, 1) + gray
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = torch.cos(hue), torch.sin(hue)
    rot = torch.zeros(b, 3, 3, dtype=images.dtype, device=images.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    transform = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    out = torch.einsum("bij,bjhw->bihw", transform, out).clamp(0, 1)
    return torch.where(apply.view(b, 1, 1, 1), out, images)


def gaussian_blur(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur with sigma in [0.15, 1.15] and a kernel about a tenth of the image height
    (odd), each image with probability p (as DACS)."""
    b, c, h, _ = images.shape
    apply = torch.rand(b, generator=gen) < p
    sigmas = _uniform(gen, 0.15, 1.15, b)
    size = max(3, int(math.ceil(0.1 * h)) | 1)
    out = images.clone()
    x = torch.arange(size, dtype=images.dtype, device=images.device) - size // 2
    for i in torch.nonzero(apply).flatten().tolist():
        k = torch.exp(-0.5 * (x / float(sigmas[i])) ** 2)
        k = k / k.sum()
        img = F.pad(images[i:i + 1], (size // 2,) * 4, mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
        out[i:i + 1] = F.conv2d(img, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
    return out


def strong_augment(images: torch.Tensor, *, strength: float, jitter_p: float, blur_p: float,
                   gen: torch.Generator) -> torch.Tensor:
    return gaussian_blur(color_jitter(images, strength, jitter_p, gen), blur_p, gen)
