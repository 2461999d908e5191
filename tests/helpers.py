"""What several test modules share: the command run in this process, a training step without a
Trainer, dataset or run folder, tiny configurations and weight files, fixture trees in the
published dataset layouts, small inputs."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from sepico.data.label_maps import CITYSCAPES_ID_TO_TRAIN_ID, lookup_table, to_train_ids
from sepico.method import CONTRASTIVE_VARIANTS, SePiCo
from sepico.models import build_model
from sepico.train.checkpoint import MARKER, atomic_save
from sepico.train.config import Config, MethodConfig, from_dict, validate
from sepico.train.step import SelfTrainingStep

NUM_CLASSES, PROJ_DIM = 19, 8


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli(*args) -> Ran:
    """``sepico ARGS`` run in this process: (exit status, stdout, stderr), named as
    ``subprocess.run``'s result names them."""
    from sepico.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return Ran(code, out.getvalue(), err.getvalue())


def tiny_step(variant: str = "dist", *, crop_size=(0, 0), class_prior=None, seed: int = 0,
              **method) -> SelfTrainingStep:
    """The official step around the small CPU model (random weights, seeded), with ``method``
    fields of ``MethodConfig`` (from iteration 0 on unless given)."""
    cfg = MethodConfig(variant=variant, **({"start_distribution_iter": 0} | method))
    torch.manual_seed(seed)
    student = build_model("convnet_small", num_classes=NUM_CLASSES, proj_dim=PROJ_DIM)
    teacher = copy.deepcopy(student)
    teacher.set_dropout(False).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    sepico = (SePiCo.from_config(cfg, num_classes=NUM_CLASSES, dim=PROJ_DIM, max_iters=100)
              if variant in CONTRASTIVE_VARIANTS else None)
    return SelfTrainingStep(student, teacher, sepico, cfg, num_classes=NUM_CLASSES, crop_size=crop_size,
                            class_prior=class_prior, generator=torch.Generator().manual_seed(seed))


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def labels(batch: int, height: int, width: int, seed: int = 0, classes=(0, 1, 2, 8, 10, 13)) -> torch.Tensor:
    """Blocky source labels of a few classes, some pixels ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    choice = torch.tensor(classes)[torch.randint(0, len(classes), (batch, height // 4, width // 4), generator=g)]
    out = choice.repeat_interleave(4, 1).repeat_interleave(4, 2)
    out[:, :2, :3] = 255
    return out


def real_config(tmp_path, source, source_root, target, target_root, **data) -> Config:
    cfg = from_dict({
        "name": "real",
        "data": {"source": source, "source_root": str(source_root), "target": target,
                 "target_root": str(target_root), "crop_size": [32, 64], "source_size": [36, 64], **data},
        "model": {"name": "deeplabv2_r18", "proj_dim": 16, "head_channels": 32},
        "optim": {"lr": 1e-3, "warmup_iters": 1},
        "method": {"variant": "dist", "start_distribution_iter": 0, "temperature": 0.1},
        "train": {"max_iters": 2, "batch_size": 1, "log_interval": 1, "checkpoint_interval": 2,
                  "run_dir": str(tmp_path / "run")},
    })
    validate(cfg)
    return cfg


def make_dark_zurich(root: Path, size=(32, 64)):
    for j in range(3):
        stem = f"GOPR0351_frame_{j:06d}"
        lab = scene_ids(*size, CS_IDS, j)
        write_png(root / "rgb_anon" / "train" / "night" / "GOPR0351" / f"{stem}_rgb_anon.png", scene_image(lab, j))
    for j in range(2):
        stem = f"GOPR0356_frame_{j:06d}"
        train_ids = to_train_ids(scene_ids(*size, CS_IDS, j), lookup_table(CITYSCAPES_ID_TO_TRAIN_ID), where="")
        write_png(root / "rgb_anon" / "val" / "night" / "GOPR0356" / f"{stem}_rgb_anon.png", scene_image(train_ids, j))
        write_png(root / "gt" / "val" / "night" / "GOPR0356" / f"{stem}_gt_labelTrainIds.png", train_ids)
    return root


def make_cityscapes(root: Path, size=(32, 64), splits=(("train", ("aachen", "bochum"), 2),
                                                       ("val", ("frankfurt",), 2))):
    for split, cities, per_city in splits:
        for city in cities:
            for j in range(per_city):
                stem = f"{city}_{j:06d}_000019"
                lab = scene_ids(*size, CS_IDS, hash(stem) % 1000)
                write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", scene_image(lab, j))
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab.astype(np.uint8))
    return root


def make_synthia(root: Path, n=3, size=(24, 40)):
    for i in range(n):
        lab = scene_ids(*size, SYN_IDS, i)
        gt = np.stack([lab, (lab * 997 + 300).astype(np.uint16), np.zeros_like(lab)], -1)
        write_png(root / "RGB" / f"{i:07d}.png", scene_image(lab, i))
        write_png16_rgb(root / "GT" / "LABELS" / f"{i:07d}.png", gt)
    return root


def make_gta5(root: Path, n=4, size=(40, 72)):
    for i in range(n):
        lab = scene_ids(*size, CS_IDS, i)
        if i == n - 1:
            lab[-6:, :10] = 33  # a rare class (bicycle) in one image only
        write_png(root / "images" / f"{i:05d}.png", scene_image(lab, i))
        write_png(root / "labels" / f"{i:05d}.png", lab.astype(np.uint8))
    return root


SYN_IDS = {"sky": 1, "building": 2, "road": 3, "car": 8, "void": 0}


CS_IDS = {"sky": 23, "building": 11, "road": 7, "car": 26, "void": 0}


def write_png16_rgb(path: Path, array):
    """A 16-bit RGB PNG (Pillow cannot write one), rows filtered with all five PNG filters."""
    def paeth(a, b, c):
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

    h, w, _ = array.shape
    raw, stride, bpp = array.astype(">u2").tobytes(), w * 6, 6
    out, prev = bytearray(), bytes(stride)
    for y in range(h):
        row, kind, enc = raw[y * stride:(y + 1) * stride], y % 5, bytearray(stride)
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            c = prev[i - bpp] if i >= bpp else 0
            enc[i] = (row[i] - [0, a, prev[i], (a + prev[i]) // 2, paeth(a, prev[i], c)][kind]) & 255
        out += bytes([kind]) + enc
        prev = row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def write_png(path: Path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def scene_image(label, seed):
    rng = np.random.default_rng(seed)
    base = (label.astype(np.int64) * 37 % 256).astype(np.uint8)
    return np.stack([base, 255 - base, rng.integers(0, 256, base.shape, dtype=np.uint8)], -1)


def scene_ids(h, w, ids, seed):
    """A label map of horizontal bands (sky, building, road) with a block of `ids['car']`."""
    rng = np.random.default_rng(seed)
    lab = np.empty((h, w), dtype=np.uint16)
    a, b = h // 3, 2 * h // 3
    lab[:a], lab[a:b], lab[b:] = ids["sky"], ids["building"], ids["road"]
    y, x = rng.integers(a, b - 4), rng.integers(0, w - 8)
    lab[y:y + 6, x:x + 8] = ids["car"]
    lab[0, 0] = ids["void"]
    return lab


def assert_same(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    else:
        assert a == b, path


def trainer_state(trainer):
    return {"model": trainer.model.state_dict(), "teacher": trainer.teacher.state_dict(),
            "estimator": None if trainer.sepico is None else trainer.sepico.state_dict(),
            "optim": trainer.optimizer.state_dict()["state"]}


def tiny_config(variant="dist", model="deeplabv2_r18", **method) -> Config:
    cfg = from_dict({
        "name": "tiny",
        "data": {"size": [64, 128], "train_length": 12, "test_length": 4},
        "model": {"name": model, "proj_dim": 16, "head_channels": 32},
        "optim": {"lr": 1e-3, "warmup_iters": 2},
        "method": {"variant": variant, "start_distribution_iter": 1, "temperature": 0.1,
                   "memory_length": 3, **method},
        "train": {"max_iters": 3, "batch_size": 2, "log_interval": 1, "checkpoint_interval": 2},
    })
    validate(cfg)
    return cfg


def image_file(path, h, w, seed, fmt=None):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return np.array(Image.open(path).convert("RGB"))


def weight_file(tmp_path, model):
    cfg = Config()
    cfg.model.name, cfg.model.num_classes, cfg.model.proj_dim = "deeplabv2_r18", 19, 8
    path = tmp_path / "weights.pt"
    atomic_save({"config": cfg.to_dict(), "model": model.state_dict()}, path)
    return path


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model("deeplabv2_r18", num_classes=19, proj_dim=8).eval()


def tiny_toml(folder: Path, name="tiny", **train) -> Path:
    lines = [f'name = "{name}"', "[data]", "size = [32, 64]", "train_length = 8", "test_length = 2",
             "[model]", 'name = "convnet_small"', "proj_dim = 8", "[method]", 'variant = "dist"',
             "start_distribution_iter = 1", "[train]",
             *(f"{k} = {json.dumps(v)}" for k, v in {"batch_size": 2, "log_interval": 1, "max_iters": 2,
                                                      "checkpoint_interval": 2, **train}.items())]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_image(path: Path, h=20, w=30, seed=0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (links as links) with its bytes or link target; the run marker
    aside (it holds the process id of whoever holds the folder)."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.name == MARKER:
            continue
        if p.is_symlink():
            found[str(p.relative_to(folder))] = ("link", os.readlink(p))
        elif p.is_file():
            found[str(p.relative_to(folder))] = p.read_bytes()
    return found


def independent_miou(model, dataset, classes, *, num_classes: int = NUM_CLASSES, prior=None) -> float:
    """The mIoU of ``model`` on ``dataset`` (image in [0, 1], label) computed here, apart from
    ``sepico.evaluation``: logits bilinearly to the image, then to the label (the official test
    path; with ``prior`` the softmax at the image's size times the class prior), argmax, a numpy
    confusion matrix, the IoU of each class of ``classes`` that is labelled or predicted."""
    import torch.nn.functional as F

    from sepico.data.transforms import normalize

    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for image, label in dataset:
            x = normalize(image[None])
            scores = F.interpolate(model.predict_logits(x).float(), size=x.shape[-2:], mode="bilinear",
                                   align_corners=False)
            if prior is not None:
                scores = scores.softmax(1) * prior.view(1, -1, 1, 1)
            scores = F.interpolate(scores, size=label.shape[-2:], mode="bilinear", align_corners=False)
            pred, gt = scores.argmax(1)[0].numpy().ravel(), label.numpy().ravel()
            keep = gt != 255
            conf += np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(
                num_classes, num_classes)
    model.train(was_training)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    ious = [100.0 * inter[c] / union[c] for c in classes if union[c] > 0]
    return float(np.mean(ious)) if ious else float("nan")


def make_label(batch, height, width, gen, *, classes=(0, 2, 3, 5), noise=0.05, ignore_index=255):
    """Blocky labels (3 x 5 blocks that straddle every cell size) with salt noise and an ignored
    top-left box: majority votes, ties, low-share cells and ignored cells all occur."""
    pick = torch.tensor(classes)
    base = pick[torch.randint(0, len(classes), (batch, height // 3 + 1, width // 5 + 1), generator=gen)]
    label = base.repeat_interleave(3, 1).repeat_interleave(5, 2)[:, :height, :width].clone()
    flip = torch.rand(batch, height, width, generator=gen) < noise
    label[flip] = pick[torch.randint(0, len(classes), (int(flip.sum()),), generator=gen)]
    label[:, : height // 4, : width // 3] = ignore_index
    return label.unsqueeze(1)
