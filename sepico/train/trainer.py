"""The SePiCo self-training loop in plain PyTorch around the official iteration.

``Trainer`` builds everything from a ``Config`` (datasets, student, EMA teacher, optimiser,
schedule, the SePiCo method and the step's passes, ``sepico.train.step.SelfTrainingStep``), runs
the loop, and does what lies around each step: the optimiser update (under torchrun the gradients
of all passes averaged over the ranks once, before the step; a non-finite loss skips or stops the
step; BatchNorm statistics broadcast from rank 0), evaluation, metrics and log lines, checkpoints
(``sepico.train.checkpoint``: the run folder, resume rules, pruning) and signals. A step reads the
device three times (the two label range checks and the logged values, fetched together;
``tests/test_method.py``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sepico.card import start_run_card, write_run_card
from sepico.data.night import class_prior_weights, dark_zurich_prior
from sepico.errors import ConfigError, DatasetError, NonFiniteLoss
from sepico.evaluation import evaluate, format_table
from sepico.files import atomic_write, open_append
from sepico.method import CONTRASTIVE_VARIANTS, SePiCo
from sepico.models import build_run_model, format_provenance, load_pretrained_encoder, weight_problems
from sepico.train.checkpoint import (MARKER, RESUMABLE_FIELDS, CheckpointError, RunFolder, atomic_save, changed_fields,
                                     checkpoint_path, newest_readable_checkpoint, prune_checkpoints, read_checkpoint,
                                     remove_stale_temporaries, run_files)
from sepico.train.config import Config
from sepico.train.data import BatchStream, build_datasets
from sepico.train.distributed import any_rank, average_gradients, broadcast_from_first, init_distributed
from sepico.train.step import Batch, SelfTrainingStep

def resolve_device(name: str, local_rank: int = 0, *, field: str = "config field 'train.device'") -> torch.device:
    """The device ``name`` names (``auto``: a GPU if there is one); ``field`` is how errors name
    where the value came from (``--device`` on the command line)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field} is not a device: {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{field} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} asks for cuda but no GPU is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)  # one GPU per process under torchrun
    return device


def process_batch_size(train_cfg, world: int) -> int:
    """Source (and target) images per step of one of ``world`` processes: ``train.batch_size``, or
    with ``train.global_batch_size`` its share, so the step over all processes has that many."""
    total = train_cfg.global_batch_size
    if not total:
        return train_cfg.batch_size
    if total % world:
        raise ConfigError(f"config field 'train.global_batch_size' ({total}) must be a multiple of the {world} "
                          "processes")
    return total // world


def set_deterministic() -> None:
    """Deterministic algorithms for bitwise-repeatable runs at a fixed seed: cuDNN without
    autotuning and with deterministic kernels, PyTorch's deterministic implementations (an op
    without one warns instead of failing), cuBLAS with a fixed workspace. The Triton kernels are
    deterministic already (no atomics)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def lr_factor(it: int, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """Polynomial decay with a linear warm-up (mmcv's poly + linear warm-up)."""
    factor = (1.0 - min(it, max_iters) / max_iters) ** power
    if it < warmup_iters:
        factor *= 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
    return factor


class Trainer:
    """Builds everything from a `Config`; `train()` runs to `train.max_iters`, resumable."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, log_lines: bool = True, draw_curves=None):
        """``resume``: continue from the newest checkpoint that loads (the configuration must be the
        stored one but for ``RESUMABLE_FIELDS``). Otherwise a run folder that already holds a run
        is refused, unless ``overwrite`` (its run files are then removed, and named).
        ``log_lines``: print a line every ``train.log_interval`` iterations and the per-class table
        at each evaluation (stderr; the files hold them either way). ``draw_curves(run_dir)``:
        called after each evaluation, once metrics.jsonl holds it (the command passes
        ``sepico.plot``'s; None: no curves)."""
        self.cfg = cfg
        self.log_lines = log_lines
        self.draw_curves = draw_curves
        self.run_dir = Path(run_dir or cfg.train.run_dir or Path("runs") / cfg.name)
        self.rank, self.world, local_rank = init_distributed()
        self.group = dist.group.WORLD if self.world > 1 else None
        self.device = resolve_device(cfg.train.device, local_rank)
        self.batch_size = process_batch_size(cfg.train, self.world)
        # The folder is claimed before anything is written into it (the class-statistics cache
        # included): a second run into it is refused here, in one line.
        self.folder = RunFolder(self.run_dir)
        if self.rank == 0:
            self.folder.claim()
        try:
            self._check_run_dir(resume, overwrite)
            self._build(progress, local_rank)
            if self.rank == 0:
                for stale in remove_stale_temporaries(self.run_dir):
                    print(f"warning: removed {stale}, left by a write that was cut short",
                          file=sys.stderr, flush=True)
            self._unreadable: list[Path] = []  # checkpoints a resume could not load: never pruned
            self._named: list[Path] = []  # ... of which the warning has named these
            if resume:
                path, state, self._unreadable = newest_readable_checkpoint(self.run_dir, self.device)
                self.load_checkpoint(path, state)
            elif overwrite and self.rank == 0:
                self._remove_previous_run()
        except BaseException:
            self.close(started=False)
            raise
        shard = 1_000_003 * self.rank  # distinct data order per rank
        self.source = BatchStream(self.data.source, self.batch_size, seed=cfg.train.seed + shard,
                                  start=self.iteration, num_workers=cfg.data.num_workers)
        self.target = BatchStream(self.data.target, self.batch_size, seed=cfg.train.seed + 7 + shard,
                                  start=self.iteration, num_workers=cfg.data.num_workers)

    def _build(self, progress: bool, local_rank: int) -> None:
        """Datasets, model (with its initial weights), teacher, optimiser, schedule and the SePiCo method."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0
        if cfg.train.deterministic:
            set_deterministic()
        method_cfg, optim_cfg = cfg.method, cfg.optim
        # The same seed everywhere gives every rank the same initial weights; data and
        # augmentation draw from per-rank seeds.
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed + self.rank)
        np.random.seed(cfg.train.seed + self.rank)
        self.gen = torch.Generator().manual_seed(cfg.train.seed + 1 + 7919 * self.rank)
        self.data = build_datasets(cfg, self.run_dir)  # the rare-class cache sits beside the run
        self.model = build_run_model(cfg.model).to(self.device)
        self.pretrained = None  # where the ImageNet weights came from (written to pretrained.json)
        if cfg.model.pretrained:
            self.pretrained = self._load_pretrained(cfg.model.pretrained)
        elif cfg.model.init_checkpoint:
            self._load_init_checkpoint(cfg.model.init_checkpoint)
        elif self.rank == 0 and "synthetic" not in (cfg.data.source, cfg.data.target):
            print(f"warning: model.pretrained is empty: the {cfg.model.name} encoder starts from random "
                  "weights (the published runs start from ImageNet weights)", file=sys.stderr, flush=True)
        self.model.activation_checkpointing = cfg.model.activation_checkpointing
        if self.world > 1:  # one set of initial weights (the same seed gives it already; make sure)
            broadcast_from_first(self.model.state_dict().values())
        # The EMA teacher: official, training mode with dropout and drop-path off (BatchNorm on
        # the batch in front of it); "running", this project's earlier eval-mode teacher.
        self.teacher = copy.deepcopy(self.model)
        if method_cfg.teacher_statistics == "batch":
            self.teacher.set_dropout(False).train()
        else:
            self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.head_lr_mult),
            lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, cfg.train.max_iters, optim_cfg.warmup_iters,
                                                 optim_cfg.warmup_ratio, optim_cfg.power))
        # The SePiCo part (estimator + contrastive loss); None for the variants without one.
        self.sepico = (SePiCo.from_config(method_cfg, num_classes=cfg.model.num_classes, dim=cfg.model.proj_dim,
                                          max_iters=cfg.train.max_iters, device=self.device)
                       if method_cfg.variant in CONTRASTIVE_VARIANTS else None)
        # Class weights of the decode-head cross-entropy and the day-night pseudo labels (official
        # class_weight: Dark Zurich's class prior at scale method.class_prior); None = unweighted.
        class_prior = (class_prior_weights(method_cfg.class_prior).to(self.device)
                       if method_cfg.class_prior else None)
        self.task = SelfTrainingStep(self.model, self.teacher, self.sepico, method_cfg,
                                     num_classes=cfg.model.num_classes, crop_size=cfg.data.crop_size,
                                     class_prior=class_prior, generator=self.gen, amp=cfg.train.amp,
                                     group=self.group)
        self.iteration = 0
        self._stop_signal = None

    def _load_pretrained(self, source) -> dict:
        """The ImageNet encoder weights of ``model.pretrained``; returns their provenance (source,
        revision, file, layout, SHA-256), printed here in one line."""
        try:
            loaded = load_pretrained_encoder(self.model, source)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"config field 'model.pretrained': {err}") from None
        if self.rank == 0:
            print(f"model.pretrained: {format_provenance(loaded.provenance)}", file=sys.stderr, flush=True)
        return loaded.provenance

    def _load_init_checkpoint(self, path) -> None:
        """Start every weight of the model from a sepico weight file (``sepico convert`` output, or
        another run's checkpoint: its student). The class statistics start empty either way."""
        state = read_checkpoint(path)
        if "model" not in state:
            raise ConfigError(f"config field 'model.init_checkpoint': {path} holds no model weights")
        problems = weight_problems(self.model.state_dict(), state["model"])
        if problems:
            model_cfg = self.cfg.model
            raise ConfigError(f"config field 'model.init_checkpoint': {path} does not match model "
                              f"{model_cfg.name} (num_classes {model_cfg.num_classes}, proj_dim "
                              f"{model_cfg.proj_dim}): {problems}")
        self.model.load_state_dict(state["model"])
        if self.rank == 0:
            print(f"model.init_checkpoint: starting from the {state.get('weights', 'student')} weights in {path}; "
                  "the class statistics (feature means / covariances) are not in it and are estimated afresh",
                  file=sys.stderr, flush=True)

    def _check_run_dir(self, resume: bool, overwrite: bool) -> None:
        """A fresh run never mixes with an earlier one in the same folder (its metrics, config and
        checkpoints would be cut, overwritten or pruned), and never writes over files of the run
        layout's names that are not a sepico run's."""
        if self.rank != 0:
            return
        if resume:  # the checkpoints say whether it is a run (newest_readable_checkpoint)
            return
        foreign = self.folder.foreign_files()
        if foreign:
            raise ConfigError(f"{self.run_dir} holds {', '.join(foreign)}, which are not a sepico run's (no "
                              f"{MARKER}, no sepico config.json); a run there would write over them: choose "
                              "another train.run_dir")
        found = run_files(self.run_dir)
        if found and not overwrite:
            names = ", ".join(sorted(p.name for p in found))
            raise ConfigError(f"{self.run_dir} already holds a run ({names}); use --resume {self.run_dir} "
                              "to continue it, --overwrite to replace it, or another train.run_dir")

    def _remove_previous_run(self) -> None:
        """--overwrite: the earlier run's files (the run layout's names only), named."""
        found = run_files(self.run_dir)
        if found:
            names = ", ".join(sorted(p.name for p in found))
            print(f"--overwrite: removing {names} from {self.run_dir}", file=sys.stderr, flush=True)
        for p in found:
            p.unlink()

    def close(self, *, started: bool = True) -> None:
        """Release the run folder (``started`` false: the run never began, so the marker this claim
        created goes with it: a refused folder is not made a run)."""
        if self.rank == 0:
            self.folder.release(remove_marker=not started)

    # ------------------------------------------------------------------ one iteration

    def step(self) -> dict:
        """One iteration: the next batches through the step's passes (``SelfTrainingStep``), then
        the optimiser update."""
        src_img, src_lbl = (t.to(self.device) for t in self.source.next())
        tgt_img, _, *days = (t.to(self.device) for t in self.target.next())
        batch = Batch(src_img, src_lbl, tgt_img, days[0] if days else None)
        return self._update(self.task.step(batch, self.iteration))

    def _update(self, log: dict) -> dict:
        """The optimiser step (gradients averaged over the ranks), or none when a loss is not
        finite on any rank; the schedule; the ranks' BatchNorm statistics made equal. The step's
        logged values come to the host here, in one transfer."""
        log = dict(zip(log, torch.stack([v.float() for v in log.values()]).tolist())) if log else {}
        bad = {k: v for k, v in log.items() if k.startswith("loss") and not math.isfinite(v)}
        skip = any_rank(bool(bad), self.device) if self.world > 1 else bool(bad)  # every rank alike
        if skip:  # no update from this step: the model stays at its last finite state
            self.optimizer.zero_grad(set_to_none=True)
            if self.cfg.train.on_nonfinite == "stop":
                what = ", ".join(f"{k} = {v}" for k, v in bad.items()) or "on another rank"
                raise NonFiniteLoss(f"non-finite loss at iteration {self.iteration + 1} ({what}); stopped with the "
                                    "model of the last finite step (train.on_nonfinite = \"skip\" skips such steps)")
            log["skipped"] = 1
        else:
            if self.world > 1:
                average_gradients(self.model.parameters(), self.world)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.world > 1:  # rank 0's statistics (student and teacher) everywhere
            broadcast_from_first(list(self.model.buffers()) + list(self.teacher.buffers()))
        self.iteration += 1
        log["lr"] = self.optimizer.param_groups[0]["lr"]
        return log

    # ------------------------------------------------------------------ checkpoints

    def _rng_state(self) -> dict:
        """Every RNG state as tensors and plain values (what ``weights_only`` loading reads)."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"generator": self.gen.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                "python": random.getstate()}

    @staticmethod
    def _set_rng_numpy(state: dict) -> None:
        np.random.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"],
                             state["has_gauss"], state["cached_gaussian"]))

    def state_dict(self) -> dict:
        """Everything a resumed run needs; ``rng`` holds one entry per rank (a collective call
        when distributed: every rank must call it)."""
        rng = [self._rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, self._rng_state())
        return {
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "estimator": None if self.sepico is None else self.sepico.state_dict(),
            "rng": rng,
            "world_size": self.world,
        }

    def save_checkpoint(self) -> Path:
        """Rank 0 writes (atomically); every rank takes part (RNG states are gathered)."""
        state = self.state_dict()
        path = checkpoint_path(self.run_dir, self.iteration)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_save(state, path)
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints, newest=path, unreadable=self._unreadable)
            self._unreadable = [bad for bad in self._unreadable if bad != path]  # replaced by a good one
            for bad in self._unreadable[len(self._named):]:  # each named once; they stay as they were found
                print(f"warning: leaving {bad}, which does not load; it is not counted among the "
                      f"{self.cfg.train.keep_checkpoints} kept checkpoints", file=sys.stderr, flush=True)
            self._named = list(self._unreadable)
        if self.world > 1:
            dist.barrier()
        return path

    def load_checkpoint(self, path: Path, state: dict | None = None) -> None:
        """Restore a checkpoint (``state``: its contents, when already read)."""
        state = read_checkpoint(path, self.device) if state is None else state
        stored = state.get("config")
        differing = changed_fields(stored, self.cfg.to_dict()) if isinstance(stored, dict) else ["config"]
        if differing:
            raise ConfigError(f"--resume: {path} was written with another configuration; differing "
                              f"fields: {', '.join(differing)} (only {', '.join(RESUMABLE_FIELDS)} may change)")
        if state.get("world_size", 1) != self.world:
            raise ConfigError(f"--resume: {path} was written by {state.get('world_size', 1)} "
                              f"process(es); resume with the same number (now {self.world})")
        try:
            self.model.load_state_dict(state["model"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.sepico is not None:
                self.sepico.load_state_dict(state["estimator"])
            rng = state["rng"][self.rank]
            self.gen.set_state(rng["generator"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._set_rng_numpy(rng["numpy"])
            random.setstate(rng["python"])
            self.iteration = int(state["iteration"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            detail = f"no {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:200]
            raise CheckpointError(f"--resume: {path} is not a complete checkpoint of this run ({detail}); "
                                  "it is left as it is") from None

    # ------------------------------------------------------------------ the run

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        """A signal seen by any rank stops every rank at the same iteration."""
        stop = 0 if self._stop_signal is None else self._stop_signal
        if self.world > 1:
            stop = any_rank(stop, self.device)
            if self._stop_signal is None and stop:
                self._stop_signal = stop
        return bool(stop)

    def _metrics_file(self):
        """metrics.jsonl, without lines from beyond the checkpoint a resumed run starts from and
        without a last line that a kill cut short (rank 0 only; other ranks write nowhere)."""
        if self.rank != 0:
            return open(os.devnull, "a")
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            keep = []
            lines = path.read_text(errors="replace").splitlines()
            for k, line in enumerate(lines):
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    if k != len(lines) - 1:
                        raise ConfigError(f"{path}: line {k + 1} is not JSON; the run's metrics are damaged") from None
                    print(f"warning: {path}: dropping a partial last line (a write that was cut short)",
                          file=sys.stderr, flush=True)
                    continue
                if not isinstance(record, dict) or not isinstance(record.get("iteration", 0), int):
                    raise ConfigError(f"{path}: line {k + 1} is not a metrics record (an object with an integer "
                                      "iteration); the run's metrics are damaged")
                if record.get("iteration", 0) <= self.iteration:
                    keep.append(line)
            atomic_write(path, "".join(line + "\n" for line in keep))
        return open_append(path)

    def _finished_result(self) -> dict | None:
        """The stored result of a resumed run that had already reached max_iters and been evaluated."""
        path = self.run_dir / "eval.json"
        if self.iteration < self.cfg.train.max_iters or not path.is_file():
            return None
        try:
            result = json.loads(path.read_text())
        except ValueError:
            return None  # a result cut short: evaluate again
        return result if isinstance(result, dict) and "miou" in result else None

    def train(self) -> dict:
        """Run to max_iters; checkpoint every K iterations, at the end and on SIGINT / SIGTERM. A
        resumed run that had finished returns its stored result (nothing is run or written)."""
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict:
        cfg = self.cfg
        finished = self._finished_result()
        if finished is not None:
            if self.rank == 0:
                print(f"{self.run_dir} finished at iteration {self.iteration} of {cfg.train.max_iters} (mIoU "
                      f"{finished['miou']:.2f}); raise train.max_iters to train on", file=sys.stderr, flush=True)
            return finished
        metrics = self._metrics_file()  # checked (and cut back to the checkpoint) before anything is written
        if self.rank == 0:
            atomic_write(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str))
            if self.pretrained and self.iteration == 0:  # the weights this run started from; a resume keeps them
                atomic_write(self.run_dir / "pretrained.json", json.dumps(self.pretrained, indent=2))
            print(f"sepico train: run folder {self.run_dir} (config.json, metrics.jsonl, train.log, checkpoints), "
                  f"iteration {self.iteration} of {cfg.train.max_iters} on {self.device}", file=sys.stderr, flush=True)
            card = start_run_card(self)  # the quick data check, the weights' hashes, the data manifest
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = _progress(cfg.train.max_iters, self.iteration, self.progress)
        say = bar.write if self.progress else (lambda text: print(text, file=sys.stderr, flush=True))
        if self.rank != 0 or not self.log_lines:
            say = lambda text: None  # noqa: E731 - rank 0 speaks for the run
        result = {}
        try:
            logf = open_append(self.run_dir / "train.log") if self.rank == 0 else open(os.devnull, "a")
            with metrics, logf:
                logf.write(f"start at iteration {self.iteration} on {self.device}\n")
                start, first = time.perf_counter(), self.iteration
                evaluated = (None, None)  # (iteration, result) of the last evaluation
                while self.iteration < cfg.train.max_iters:
                    try:
                        log = self.step()
                    except NonFiniteLoss as err:
                        path = self.save_checkpoint()
                        logf.write(f"{err}; checkpoint {path.name}\n")
                        raise NonFiniteLoss(f"{err}; checkpoint {path}") from None
                    except DatasetError as err:  # a damaged image or label: keep the work done so far
                        cause = [line for line in str(err).strip().splitlines() if line.strip()][-1]
                        path = checkpoint_path(self.run_dir, self.iteration)
                        if self.iteration == 0:  # nothing trained: nothing to keep
                            logf.write(f"stopped at iteration 0: {cause}\n")
                            raise ConfigError(f"{cause} (stopped before the first iteration, no checkpoint "
                                              "written; fix or remove the file, then train again)") from None
                        if not path.exists():  # else the checkpoint of this iteration is there already
                            path = self.save_checkpoint()
                        logf.write(f"stopped at iteration {self.iteration}: {cause}; checkpoint {path.name}\n")
                        raise ConfigError(f"{cause} (stopped at iteration {self.iteration}; checkpoint {path}; "
                                          "fix or remove the file, then --resume)") from None
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    speed = (self.iteration - first) / elapsed
                    bar.update(1)
                    memory = _memory(self.device)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in log.items()} | {"mem": memory}, refresh=False)
                    if self.iteration % cfg.train.log_interval == 0 or self.iteration == cfg.train.max_iters:
                        record = {"iteration": self.iteration, "it_per_s": speed, **log}
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                        logf.write(json.dumps(record) + "\n")
                        logf.flush()
                        say(_log_line(self.iteration, cfg.train.max_iters, log, 1.0 / max(speed, 1e-9), memory))
                    if cfg.train.eval_interval and self.iteration % cfg.train.eval_interval == 0 and self.rank == 0:
                        ev = self.evaluate()
                        evaluated = (self.iteration, ev)
                        say(f"evaluation at iteration {self.iteration}:\n{format_table(ev)}")
                        metrics.write(json.dumps({"iteration": self.iteration, "miou": ev["miou"]}) + "\n")
                        self._plot_curves(metrics, logf)
                    if self.iteration % cfg.train.checkpoint_interval == 0:
                        self.save_checkpoint()
                    if self._stop_requested():
                        path = self.save_checkpoint()
                        logf.write(f"signal {self._stop_signal}: checkpoint {path.name}, exiting\n")
                        raise KeyboardInterrupt(f"stopped by signal {self._stop_signal} at iteration "
                                                f"{self.iteration}; checkpoint {path}")
                self.save_checkpoint()
                if self.rank == 0:
                    if evaluated[0] == self.iteration:  # evaluated at this iteration already
                        result = evaluated[1]
                    else:
                        result = self.evaluate()
                        say(f"evaluation at iteration {self.iteration} (final):\n{format_table(result)}")
                        metrics.write(json.dumps({"iteration": self.iteration, "miou": result["miou"]}) + "\n")
                    atomic_write(self.run_dir / "eval.json", json.dumps(result, indent=2))
                    write_run_card(self, card, result)
                    logf.write(f"done: mIoU {result['miou']:.2f}\n")
                    self._plot_curves(metrics, logf)
                if self.world > 1:
                    dist.barrier()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return result

    def _plot_curves(self, metrics, logf) -> None:
        """``draw_curves`` once metrics.jsonl is flushed (rank 0). A plot that fails is a warning
        line: the curves are a view of the run, never a reason to stop it."""
        if self.draw_curves is None:
            return
        metrics.flush()
        try:
            self.draw_curves(self.run_dir)
        except Exception as err:  # noqa: BLE001 - any failure of the plot, the run goes on
            message = f"warning: curves.png not drawn: {' '.join(str(err).split()) or type(err).__name__}"
            print(message, file=sys.stderr, flush=True)
            logf.write(message + "\n")
            logf.flush()

    def evaluate(self, model=None) -> dict:
        return evaluate(model or self.model, self.data.target_test, num_classes=self.cfg.model.num_classes,
                        classes=self.data.eval_classes, device=self.device,
                        batch_size=max(1, self.cfg.train.batch_size), mode=self.cfg.data.eval_mode,
                        window=tuple(self.cfg.data.eval_window), stride=tuple(self.cfg.data.eval_stride),
                        prior=evaluation_prior(self.cfg))


def evaluation_prior(cfg: Config) -> torch.Tensor | None:
    """The class weights the official test applies to Dark Zurich images (their softmax times the
    prior at scale ``data.dark_zurich_test_prior``, 0.16); None for every other dataset."""
    if cfg.data.target != "dark_zurich":
        return None
    return dark_zurich_prior(cfg.data.dark_zurich_test_prior, cfg.model.num_classes)


def _progress(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def _log_line(iteration: int, total: int, log: dict, seconds_per_iter: float, memory: str) -> str:
    """One progress line: iteration, losses, lr, time per iteration, memory, time left."""
    values = "  ".join(f"{k} {v:.4g}" for k, v in log.items())
    left = int(seconds_per_iter * (total - iteration))
    eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    return f"iter {iteration}/{total}  {values}  {seconds_per_iter:.3g} s/it  mem {memory}  eta {eta}"


def _memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"
    with open("/proc/self/status") as f:
        rss = next((line.split()[1] for line in f if line.startswith("VmRSS:")), "0")
    return f"{int(rss) / 2**20:.1f}G"


__all__ = ["Trainer", "lr_factor", "resolve_device"]
