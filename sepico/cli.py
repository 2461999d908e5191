"""The ``sepico`` command: ``train``, ``eval`` and ``info``.

Configuration mistakes end in one line naming the field (exit status 2), not a traceback.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from sepico.train.config import ConfigError


def _train(args) -> int:
    from sepico.train import Trainer, load_config

    cfg = load_config(args.config, args.set)
    run_dir = args.resume or cfg.train.run_dir or None
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    result = trainer.train()
    print(json.dumps({"run_dir": str(trainer.run_dir), "iteration": trainer.iteration,
                      "miou": result.get("miou")}))
    return 0


def _eval(args) -> int:
    import torch

    from sepico.train import Trainer
    from sepico.train.config import from_dict

    path = Path(args.checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = from_dict(state["config"])
    if args.data:
        cfg.data.target = args.data
    if args.root:
        cfg.data.target_root = args.root
    cfg.train.device = args.device
    trainer = Trainer(cfg, path.parent, progress=False)
    trainer.model.load_state_dict(state["model"])
    trainer.teacher.load_state_dict(state["teacher"])
    result = trainer.evaluate(trainer.teacher if args.teacher else trainer.model)
    result.pop("confusion")
    text = json.dumps({"checkpoint": str(path), "iteration": state["iteration"], **result}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _info(args) -> int:
    import torch
    import triton

    import kernels

    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cuda_available": cuda,
        "kernel_backend_requested": kernels.requested_backend(),
        "kernel_backend_cuda": "triton" if kernels.requested_backend() in ("auto", "triton") else "torch",
        "kernel_backend_cpu": ("triton (interpreter)" if kernels.requested_backend() == "triton"
                               and kernels.interpreting() else "torch"),
    }
    for key, value in info.items():
        print(f"{key:<26} {value}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sepico", description="SePiCo domain-adaptive segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a TOML config")
    t.add_argument("config", help="TOML file (sections data, model, optim, method, train)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set optim.lr=1e-4 (repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="evaluate a checkpoint (mIoU)")
    e.add_argument("checkpoint")
    e.add_argument("--data", help="target dataset name (default: the run's target)")
    e.add_argument("--root", help="dataset folder for a real dataset")
    e.add_argument("--device", default="auto")
    e.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher, not the student")
    e.add_argument("--out", help="also write the result JSON here")
    sub.add_parser("info", help="versions, device and the active kernel backend")
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "info": _info}[args.command](args)
    except ConfigError as err:
        print(f"sepico: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"sepico: interrupted: {err}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
