"""What several test modules share: the command run in this process, a training step without a
Trainer, dataset or run folder, small inputs."""
from __future__ import annotations

import contextlib
import copy
import io
from typing import NamedTuple

import torch

from sepico.method import CONTRASTIVE_VARIANTS, SePiCo
from sepico.models import build_model
from sepico.train.config import MethodConfig
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
