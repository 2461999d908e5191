"""The ``sepico`` command: ``train``, ``eval``, ``predict``, ``convert``, ``plot``, ``ablate``, ``check-data``,
``card`` and ``info``.

Configuration mistakes end in one line naming the field (exit status 2), not a traceback.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

from sepico.errors import ConfigError, SepicoError


def _train(args) -> int:
    from sepico.plot import plot_run
    from sepico.train import Trainer, load_config

    if args.resume:
        cfg = _resume_config(args)
    elif args.config is None:
        raise ConfigError("sepico train needs a CONFIG file (or --resume RUN_DIR)")
    else:
        cfg = load_config(args.config, args.set)
    run_dir = args.resume or cfg.train.run_dir or None
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                      progress=not args.no_progress, draw_curves=functools.partial(plot_run, force=True))
    result = trainer.train()
    if trainer.rank == 0:  # under torchrun one line for the run, not one per process
        print(json.dumps({"run_dir": str(trainer.run_dir), "iteration": trainer.iteration,
                          "miou": result.get("miou")}))
    return 0


def _resume_config(args):
    """The configuration stored in the run; a CONFIG given beside it, and --set, may change only
    the fields that cannot change what the run already computed (``RESUMABLE_FIELDS``). The run
    stays in RUN_DIR: a train.run_dir naming another folder is refused."""
    from sepico.train import load_config
    from sepico.train.config import apply_overrides, from_dict, validate
    from sepico.train.checkpoint import RESUMABLE_FIELDS, changed_fields

    if args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    run = Path(args.resume)
    stored_file = run / "config.json"
    if not stored_file.is_file():
        raise ConfigError(f"--resume: {args.resume} holds no run (no config.json)")
    try:
        stored = json.loads(stored_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"--resume: {stored_file} is not valid JSON ({err})") from None
    if not isinstance(stored, dict) or not all(isinstance(v, dict) for k, v in stored.items() if k != "name"):
        raise ConfigError(f"--resume: {stored_file} is not a sepico run configuration (sections of fields)")
    cfg = from_dict(stored)
    if args.config is not None:
        given = load_config(args.config, args.set)
        differing = changed_fields(stored, given.to_dict())
        if differing:
            raise ConfigError(f"--resume: {args.config} differs from the configuration stored in "
                              f"{args.resume} in {', '.join(differing)} (a resumed run may change only "
                              f"{', '.join(RESUMABLE_FIELDS)})")
        for key in RESUMABLE_FIELDS:  # take the given values of what may change
            section, field = key.split(".")
            setattr(getattr(cfg, section), field, getattr(getattr(given, section), field))
    else:
        for item in args.set:
            key = item.split("=", 1)[0].strip()
            if key not in RESUMABLE_FIELDS:
                raise ConfigError(f"--resume: --set {key} would change what the run already computed; a "
                                  f"resumed run may change only {', '.join(RESUMABLE_FIELDS)}")
        apply_overrides(cfg, args.set)
    named = cfg.train.run_dir
    if named and named != stored["train"].get("run_dir") and Path(named).resolve() != run.resolve():
        raise ConfigError(f"--resume: train.run_dir = {named} is not the run folder {args.resume}; a resumed run "
                          "continues where its checkpoints are (copy the folder first to continue elsewhere)")
    if named and Path(named).resolve() != run.resolve():
        cfg.train.run_dir = str(run)  # the run was moved: record where it is now
    validate(cfg)
    return cfg


def _eval(args) -> int:
    """Evaluate a checkpoint's student (or EMA teacher), or a converted file, on its run's target
    val split, or on the dataset named by --data/--root; prints the per-class table and the result
    JSON. With --export, write the split's predictions as the dataset's benchmark server takes them."""
    from sepico.card import eval_card_path, write_eval_card
    from sepico.convert import load_model
    from sepico.data.names import TARGETS
    from sepico.data.transforms import AUG_SCALES
    from sepico.files import atomic_write, check_output
    from sepico.train.config import apply_overrides, validate
    from sepico.train.data import check_run_data
    from sepico.train.trainer import evaluation_prior, resolve_device

    started = time.perf_counter()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.data is not None and args.data not in TARGETS:
        raise ConfigError(f"--data: unknown dataset {args.data!r}; choose one of {', '.join(TARGETS)}")
    if args.export and args.out:
        raise ConfigError("--export writes the benchmark files, not an evaluation: --out does not apply")
    if args.split == "test" and not args.export:
        raise ConfigError("--split test: test labels are not public, so there is nothing to score; --export DIR "
                          "writes the predictions the benchmark server scores")
    path = Path(args.checkpoint)
    if args.out:
        check_output(args.out, what="--out", ours=_is_eval_result, force=args.force, inputs=[path])
    card = eval_card_path(args)  # the run card's file, checked as --out is
    device = resolve_device(args.device, field="--device")
    model, cfg, weights, iteration = load_model(path, teacher=args.teacher)
    overrides = [f"data.{key}={value}" for key, value in (
        ("target", args.data), ("target_root", args.root), ("eval_mode", args.mode),
        ("eval_window", args.window), ("eval_stride", args.stride), ("test_size", args.size),
        ("eval_protocol", args.protocol)) if value is not None]
    apply_overrides(cfg, overrides + list(args.set))
    if cfg.data.target != "synthetic" and not cfg.data.target_root:
        raise ConfigError(f"{path} names no {cfg.data.target} folder: give it with --root")
    # What only training uses cannot make an evaluation's configuration invalid.
    cfg.method.day_night = cfg.method.pseudo_crop = False
    validate(cfg)
    model.to(device)
    prior = None if args.aug_test else evaluation_prior(cfg)
    scales = AUG_SCALES if args.aug_test else None
    header = {"command": EVAL_RESULT, "checkpoint": str(path), "iteration": iteration, "weights": weights,
              "dataset": cfg.data.target}
    if args.export:
        return _export(args, model, cfg, header, device, prior, scales)
    data_check = check_run_data(cfg, ("target_test",))
    report = header | _evaluate_target(args, model, cfg, device, prior, scales)
    text = json.dumps(_nan_to_none(report), indent=2)
    if args.out:
        atomic_write(args.out, text + "\n")
    if card:
        write_eval_card(card, args, cfg, report, started=started, check=data_check, device=device)
    print(text)
    return 0


def _evaluate_target(args, model, cfg, device, prior, scales) -> dict:
    """The result of ``_eval`` after its header; prints the per-class table. ACDC is scored
    condition by condition, and over all of them from the sum of their confusion matrices."""
    import dataclasses

    import torch

    from sepico.data.cityscapes import CLASS_NAMES
    from sepico.evaluation import confusion_scores, evaluate, format_table
    from sepico.train.data import build_test_dataset

    d, m = cfg.data, cfg.model
    parts = [(c, dataclasses.replace(cfg, data=dataclasses.replace(d, acdc_conditions=(c,))))
             for c in d.acdc_conditions] if d.target == "acdc" else [(None, cfg)]
    results, images = {}, 0
    for condition, part in parts:
        test, classes = build_test_dataset(part, scales)
        results[condition] = evaluate(
            model, test, num_classes=m.num_classes, classes=classes, device=device, batch_size=args.batch_size,
            mode=d.eval_mode, window=tuple(d.eval_window), stride=tuple(d.eval_stride), autocast=args.amp,
            flip=args.aug_test, prior=prior, progress=not args.no_progress)
        results[condition]["images"] = len(test)
        images += len(test)
    result = (results[None] if d.target != "acdc"
              else confusion_scores(sum(torch.tensor(r["confusion"]) for r in results.values()), classes))
    names = [CLASS_NAMES[c] if c < len(CLASS_NAMES) and m.num_classes == len(CLASS_NAMES) else str(c)
             for c in result["iou"]]

    def named(r: dict) -> dict:
        r.pop("confusion")
        return r | {"iou": dict(zip(names, r["iou"].values()))}

    table = format_table(result)
    report = {"images": images, "mode": d.eval_mode, "aug_test": bool(args.aug_test),
              "test_prior": d.dark_zurich_test_prior if prior is not None else 0.0,
              **named(result), "class_ids": dict(zip(names, result["iou"]))}
    if d.target == "acdc":
        report["conditions"] = {c: named(r) for c, r in results.items()}
        table += "".join(f"\n{'mIoU ' + c:<16}{r['miou']:>8.2f}   ({r['images']} images)"
                         for c, r in report["conditions"].items())
    if d.eval_mode == "slide":
        report |= {"window": list(d.eval_window), "stride": list(d.eval_stride)}
    print(table)
    return report


def _export(args, model, cfg, header, device, prior, scales) -> int:
    """--export: the split's images predicted into the benchmark server's folders and zip
    (``sepico.predict.BENCHMARKS``); exit 1 if an image was skipped."""
    from sepico.data.real import DatasetError, SegmentationFolder
    from sepico.predict import BENCHMARKS, predict_files, submission_outputs

    d = cfg.data
    if d.target not in BENCHMARKS:
        raise ConfigError(f"--export: {d.target} has no benchmark server here; --export writes "
                          f"{', '.join(BENCHMARKS)}")
    try:
        folder = SegmentationFolder(d.target, d.target_root, args.split, labelled=False,
                                    conditions=d.acdc_conditions)
    except DatasetError as err:
        raise ConfigError(f"--root: {err}") from None
    out, benchmark = Path(args.export), BENCHMARKS[d.target]
    plan = submission_outputs(folder.images, out, benchmark)
    size = tuple(d.test_size) if 0 not in tuple(d.test_size) else None
    written, skipped = predict_files(
        model, plan, out, num_classes=cfg.model.num_classes, archive=out / benchmark.archive, force=args.force,
        prior=prior, prior_suffix="", software=EXPORT_RESULT, what="--export", progress=not args.no_progress,
        size=size, keep_ratio=d.keep_ratio, mode=d.eval_mode, window=tuple(d.eval_window),
        stride=tuple(d.eval_stride), scales=scales, flip=bool(scales), device=device, autocast=args.amp)
    print(json.dumps(header | {
        "split": args.split, "images": len(plan), "predicted": len(plan) - len(skipped),
        "files": len(written), "archive": str(out / benchmark.archive), "aug_test": bool(args.aug_test),
        "test_prior": d.dark_zurich_test_prior if prior is not None else 0.0,
        "skipped": [str(p) for p in skipped]}))
    return 1 if skipped else 0


def _nan_to_none(value):
    """Strict JSON: a class neither labelled nor predicted has IoU null."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and value != value else value


EVAL_RESULT = "sepico eval"  # the "command" of a result file: what `eval --out` may replace
EXPORT_RESULT = "sepico eval --export"  # the PNG text and zip comment of exported files: what --export may replace


def _is_eval_result(path: Path) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("command") == EVAL_RESULT


def _pair(text, flag: str, zero: bool = False):
    """'H,W' -> (H, W), two positive integers (with ``zero`` also 0,0); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < (0 if zero and values == (0, 0) else 1):
        raise ConfigError(f"{flag} takes H,W (two positive integers{', or 0,0' if zero else ''}), got {text!r}")
    return values


def _predict(args) -> int:
    """Segmentation maps of image files and folders (sepico.predict); exit 1 if any image was skipped."""
    from sepico.convert import load_model
    from sepico.data.transforms import AUG_SCALES
    from sepico.data.night import dark_zurich_prior
    from sepico.predict import list_images, planned_outputs, predict_files, read_palette
    from sepico.train.trainer import resolve_device

    size = _pair(args.size, "--size", zero=True)
    window, stride = _pair(args.window, "--window"), _pair(args.stride, "--stride")
    if args.keep_ratio and size in (None, (0, 0)):
        raise ConfigError("--keep-ratio applies to --size H,W (the scale to rescale the images into)")
    if not 0 < args.opacity <= 1:
        raise ConfigError(f"--opacity must be in (0, 1], got {args.opacity:g}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    images = list_images(args.inputs, out=out)
    device = resolve_device(args.device, field="--device")
    model, cfg, weights, _ = load_model(args.checkpoint, teacher=args.teacher)
    palette = read_palette(args.palette, cfg.model.num_classes)
    if size is None:  # the file's test size, as eval (and mmseg's image demo) take it
        size, keep_ratio = tuple(cfg.data.test_size), cfg.data.keep_ratio
    else:
        keep_ratio = args.keep_ratio
    if size == (0, 0):  # the image's own size
        size, keep_ratio = None, False
    model.to(device)
    prior = dark_zurich_prior(cfg.data.dark_zurich_test_prior, cfg.model.num_classes)  # for *_rgb_anon.png images
    plan = planned_outputs(images, out, trainids=args.trainids, labelids=args.labelids, overlay=args.overlay)
    written, skipped = predict_files(
        model, plan, out, num_classes=cfg.model.num_classes, palette=palette, opacity=args.opacity,
        force=args.force, prior=prior,
        progress=not args.no_progress, size=size, keep_ratio=keep_ratio, mode=args.mode,
        window=window or tuple(cfg.data.eval_window), stride=stride or tuple(cfg.data.eval_stride),
        scales=AUG_SCALES if args.aug_test else None, flip=args.aug_test, device=device, autocast=args.amp)
    print(json.dumps({"checkpoint": str(args.checkpoint), "weights": weights, "images": len(images),
                      "predicted": len(images) - len(skipped), "files": len(written),
                      "size": list(size) if size else "as stored", "keep_ratio": keep_ratio,
                      "skipped": [str(p) for p in skipped], "out": str(out)}))
    return 1 if skipped else 0


def _convert(args) -> int:
    from sepico.convert import convert

    summary = convert(args.src, args.dst, model=args.model, teacher=args.teacher, config=args.config,
                      force=args.force)
    for note in summary.pop("notes"):
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _plot(args) -> int:
    from sepico.plot import plot_run

    print(plot_run(args.run_dir, force=args.force))
    return 0


def _ablate(args) -> int:
    from sepico.ablation import run_from_args

    return run_from_args(args)


def _check_data(args) -> int:
    from sepico.data.check import run_from_args

    return run_from_args(args)


def _card(args) -> int:
    from sepico.card import run_from_args

    return run_from_args(args)


def _info(args) -> int:
    """Versions, device and kernel backend; with --weights, what an ImageNet weights source holds instead."""
    if args.weights:
        from sepico.models import inspect_weights

        try:
            report = inspect_weights(args.weights)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
        for key, value in report.items():
            print(f"{key:<26} {value}")
        return 0
    import torch
    import triton

    import kernels

    import sepico

    cuda = torch.cuda.is_available()
    info = {
        "sepico": sepico.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cuda_available": cuda,
        "kernel_backend_requested": kernels.requested_backend(),
        "kernel_backend_cuda": "triton" if kernels.requested_backend() in ("auto", "triton") else "torch",
        "kernel_backend_cpu": "triton (interpreter)" if kernels.requested_backend() == "triton" else "torch",
    }
    for key, value in info.items():
        print(f"{key:<26} {value}")
    return 0


def _check_kernel_backend() -> None:
    """KERNELS_BACKEND, checked once, before any work: a known name, and triton only where it runs."""
    import torch

    import kernels

    try:
        name = kernels.requested_backend()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if name == "triton" and not torch.cuda.is_available() and not kernels.interpreting():
        raise ConfigError("KERNELS_BACKEND=triton needs a CUDA device, or TRITON_INTERPRET=1 (the Triton "
                          "interpreter) to run the kernels on the CPU; use auto or torch here")


DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda or cuda:N"


def build_parser() -> argparse.ArgumentParser:
    import sepico

    parser = argparse.ArgumentParser(prog="sepico", description="SePiCo domain-adaptive segmentation")
    parser.add_argument("--version", action="version", version=f"sepico {sepico.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a TOML config")
    t.add_argument("config", nargs="?", help="TOML file (sections data, model, optim, method, train); "
                   "with --resume optional (the run's stored configuration is used)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set optim.lr=1e-4 (repeatable)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint "
                   "that loads, with the configuration stored there (a finished run says so and exits 0)")
    t.add_argument("--overwrite", action="store_true", help="replace the sepico run in the run folder (its config, "
                   "metrics, log, result, curves and checkpoints are removed, and named; other files stay)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (the log lines stay)")
    e = sub.add_parser("eval", help="evaluate a checkpoint (mIoU)")
    e.add_argument("checkpoint", help="a training checkpoint or a `sepico convert` file")
    e.add_argument("--data", help="target dataset name (default: the run's target): synthetic, "
                   "cityscapes, dark_zurich, acdc, nighttime_driving, bdd100k_night")
    e.add_argument("--root", help="dataset folder for a real dataset")
    e.add_argument("--split", choices=("val", "test"), default="val", help="the split to read (cityscapes, "
                   "dark_zurich, acdc; default val, the labelled one); test needs --export")
    e.add_argument("--export", metavar="DIR", help="instead of scoring, write the split's predictions as the "
                   "dataset's benchmark server takes them (cityscapes: label ids; dark_zurich, acdc: train ids; "
                   "each at the image's size) and the zip to upload, into DIR")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher, not the student")
    e.add_argument("--mode", choices=("whole", "slide"), help="whole-image or sliding-window inference "
                   "(default: the run's data.eval_mode)")
    e.add_argument("--window", metavar="H,W", help="sliding-window size (default: data.eval_window)")
    e.add_argument("--stride", metavar="H,W", help="sliding-window stride (default: data.eval_stride)")
    e.add_argument("--size", metavar="H,W", help="resize images to H,W before inference (0,0: as "
                   "stored; logits are resized to the label either way)")
    e.add_argument("--protocol", choices=("19", "16", "13"), help="classes the mIoU averages over "
                   "(default: 16 after a SYNTHIA source, else 19); all three are reported")
    e.add_argument("--batch-size", type=int, default=1, help="images per forward in whole mode")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override another field of the run's config, e.g. data.strict_labels=false")
    e.add_argument("--amp", action="store_true", help="bfloat16 autocast on a GPU (default: float32)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--aug-test", action="store_true", help="test-time augmentation: scales 0.5 to 1.75 (step "
                   "0.25) of the test size and horizontal flips, softmax-averaged (the official --aug-test)")
    e.add_argument("--out", metavar="FILE", help="also write the result JSON here (replaces only an earlier "
                   "`sepico eval` result, never the checkpoint or another file without --force)")
    e.add_argument("--card", metavar="FILE.json", help="write the run card here (and FILE.md beside it): what "
                   "produced the result (default: <--out stem>.card.json beside --out; none without --out)")
    e.add_argument("--force", action="store_true", help="let --out, --card or --export replace a file that is not "
                   "an earlier result (never an input or a checkpoint)")
    p = sub.add_parser("predict", help="segmentation maps of images (png, jpg, bmp, webp, tif files and folders)")
    p.add_argument("checkpoint", help="a training checkpoint or a `sepico convert` file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (walked in sorted order)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for <stem>_color.png (and the others); it "
                   "may hold no input")
    p.add_argument("--trainids", action="store_true", help="also <stem>_labelTrainIds.png (uint8 train ids 0-18; "
                   "a benchmark server's files: eval --split test --export)")
    p.add_argument("--labelids", action="store_true", help="also <stem>_labelIds.png (uint8 Cityscapes label ids "
                   "0-33, the ids the Cityscapes server and scripts read)")
    p.add_argument("--overlay", action="store_true", help="also <stem>_overlay.png (image and colours blended)")
    p.add_argument("--palette", default="cityscapes", metavar="NAME_OR_JSON", help="colours of the maps: "
                   "cityscapes, or a JSON file with one [R, G, B] per class")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colours in the overlay, in (0, 1] "
                   "(mmseg's show_result; default 0.5)")
    p.add_argument("--size", metavar="H,W", help="resize each image to H,W for inference (default: the file's "
                   "test size and keep-ratio, as eval; 0,0: the image's own size); the maps are written at the "
                   "image's size either way")
    p.add_argument("--keep-ratio", action="store_true", help="--size is a scale the image is rescaled into "
                   "keeping its aspect ratio (mmseg's keep_ratio)")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole", help="whole-image or sliding-window")
    p.add_argument("--window", metavar="H,W", help="sliding-window size (default: the file's data.eval_window)")
    p.add_argument("--stride", metavar="H,W", help="sliding-window stride (default: the file's data.eval_stride)")
    p.add_argument("--aug-test", action="store_true", help="test-time augmentation as in `sepico eval --aug-test`")
    p.add_argument("--teacher", action="store_true", help="the EMA teacher of a training checkpoint")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on a GPU (default: float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace existing files in --out that are not earlier "
                   "maps of sepico predict (never an input)")
    c = sub.add_parser("convert", help="convert an official SePiCo / DAFormer checkpoint into a sepico file")
    c.add_argument("src", help="official checkpoint (mmcv: meta / state_dict / optimizer; or a state dict)")
    c.add_argument("dst", help="sepico weight file to write (read by eval, predict, model.init_checkpoint); "
                   "never the source, an existing file only with --force")
    c.add_argument("--model", help="architecture, one of sepico.models.MODEL_NAMES (default: daformer_mit_b5, "
                   "or the --config file's model.name); widths come from the tensor shapes")
    c.add_argument("--teacher", action="store_true", help="convert the EMA teacher (ema_model.*), not the student")
    c.add_argument("--config", help="TOML run configuration whose data and evaluation settings the file keeps "
                   "(default: the published Cityscapes evaluation)")
    c.add_argument("--force", action="store_true", help="replace an existing dst (never the source itself)")
    g = sub.add_parser("plot", help="draw a run's curves (metrics.jsonl) to RUN_DIR/curves.png")
    g.add_argument("run_dir", help="a run folder (holding metrics.jsonl)")
    g.add_argument("--force", action="store_true", help="replace a curves.png that is not an earlier plot")
    i = sub.add_parser("info", help="sepico's version, the versions beneath it, the device and the kernel backend")
    i.add_argument("--weights", metavar="FILE_OR_HUB_ID", help="instead: the layout, the models it fits, the tensor "
                   "count and the SHA-256 of ImageNet weights (a file, a folder from `hf download`, or "
                   "hf:owner/name as model.pretrained takes them)")
    k = sub.add_parser("check-data", help="whether a dataset folder holds what the published dataset holds "
                       "(counts, missing labels, sizes, label ids, unreadable files); exit 1 when it does not")
    from sepico.data.check import add_arguments as add_check_arguments

    add_check_arguments(k)
    r = sub.add_parser("card", help="what differs between two run cards (run folders or card files): settings, "
                       "then results")
    from sepico.card import add_arguments as add_card_arguments

    add_card_arguments(r)
    a = sub.add_parser("ablate", help="ablation on the synthetic benchmark (sepico.ablation)")
    from sepico.ablation import add_arguments

    add_arguments(a)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_kernel_backend()
        return {"train": _train, "eval": _eval, "predict": _predict, "convert": _convert, "plot": _plot,
                "info": _info, "ablate": _ablate, "check-data": _check_data, "card": _card}[args.command](args)
    except SepicoError as err:
        print(f"sepico: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"sepico: interrupted: {err}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
