"""Two processes on loopback (gloo): synchronised class statistics and the trainer under DDP."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sepico.estimator import ClassDistributionEstimator
from tests.parity import make_feats, make_labels

C, D, STEPS = 7, 12, 3
pytestmark = pytest.mark.system  # two processes on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _shards(step, kind):
    gen = torch.Generator().manual_seed(100 + step)
    feats = make_feats(900, D, gen) + 0.2
    labels = make_labels(900, C, gen, absent=(step,))
    return feats, labels


def _estimator_worker(rank, world, port, kind, momentum, out):
    _join(rank, world, port)
    dist.init_process_group("gloo")
    sizes = []
    real = dist.all_reduce

    def counting(tensor, *a, **k):
        sizes.append(tensor.numel())
        return real(tensor, *a, **k)

    dist.all_reduce = counting
    est = ClassDistributionEstimator(C, D, covariance=kind, memory_length=2, momentum=momentum)
    for step in range(STEPS):
        feats, labels = _shards(step, kind)
        part = slice(0, 400) if rank == 0 else slice(400, None)  # unequal shards
        est.update(feats[part], labels[part], group=dist.group.WORLD)
    torch.save({"state": est.state_dict(), "sizes": sizes}, out.format(rank=rank))
    dist.destroy_process_group()


@pytest.mark.parametrize("kind,momentum", [("diag", None), ("full", None), ("diag", 0.9)])
def test_synchronised_estimator_equals_one_process_over_the_union(tmp_path, kind, momentum):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(_estimator_worker, args=(2, _free_port(), kind, momentum, out), nprocs=2)
    r0, r1 = (torch.load(out.format(rank=r)) for r in range(2))
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), f"ranks differ in {key}"
    single = ClassDistributionEstimator(C, D, covariance=kind, memory_length=2, momentum=momentum)
    for step in range(STEPS):
        single.update(*_shards(step, kind))
    for key, value in single.state_dict().items():
        torch.testing.assert_close(r0["state"][key], value, rtol=2e-5, atol=1e-6, msg=key)
    per_step = C * (1 + D + (D * D if kind == "full" else D))
    assert r0["sizes"] == [per_step] * STEPS  # moments, never pixels


def _trainer_worker(rank, world, port, run_dir, max_iters, resume, out):
    _join(rank, world, port)
    from sepico.train import Trainer
    from tests.helpers import trainer_state, tiny_config

    cfg = tiny_config("dist")
    cfg.train.max_iters = max_iters
    trainer = Trainer(cfg, run_dir, resume=resume, progress=False)
    calls = {"decode": 0, "project": 0}  # training passes (autograd on), not the evaluation

    def count(key):
        return lambda *_: calls.__setitem__(key, calls[key] + torch.is_grad_enabled())

    trainer.model.decode_head.register_forward_hook(count("decode"))
    trainer.model.projection_head.register_forward_hook(count("project"))
    trainer.train()
    torch.save({"state": trainer_state(trainer), "calls": calls}, out.format(rank=rank))
    dist.destroy_process_group()


def _run(tmp_path, name, max_iters, resume=False, run=None):
    out = str(tmp_path / f"{name}-rank{{rank}}.pt")
    mp.spawn(_trainer_worker, args=(2, _free_port(), str(run or tmp_path / name), max_iters, resume, out),
             nprocs=2)
    return [torch.load(out.format(rank=r)) for r in range(2)]


def _states(results):
    return [r["state"] for r in results]


def test_two_process_training_keeps_ranks_identical_and_resumes(tmp_path):
    from tests.helpers import assert_same

    run = tmp_path / "run"
    results = _run(tmp_path, "straight", 3, run=run)
    # The official heads per pass under torchrun too (decode head: source + mix passes, no target
    # pass; projection head: source + target passes from start_distribution_iter = 1 on), with
    # the gradients averaged over the ranks (the student's outputs stay identical).
    assert [r["calls"] for r in results] == [{"decode": 6, "project": 4}] * 2
    straight = _states(results)
    assert_same(straight[0], straight[1])  # model, teacher, estimator, optimizer state
    # The run wrote checkpoints at 2 and 3 (rank 0, with every rank's RNG state). Drop the
    # last: resuming from iteration 2 must end exactly where the uninterrupted run ended.
    (run / "ckpt_00000003.pt").unlink()
    resumed = _states(_run(tmp_path, "resumed", 3, resume=True, run=run))
    assert_same(resumed[0], resumed[1])
    assert_same(resumed[0], straight[0])


def _global_batch_worker(rank, world, port, run_dir, out):
    _join(rank, world, port)
    from sepico.train import Trainer
    from tests.helpers import tiny_config

    cfg = tiny_config("dist")
    cfg.train.global_batch_size = 2
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.step()
    with torch.no_grad():  # the feature grid the estimator's labels have
        grid = trainer.model.project(trainer.model.encode(torch.zeros(1, 3, *cfg.data.size))).shape[-2:]
    torch.save({"batch": trainer.batch_size, "count": trainer.sepico.estimator.count.sum().item(),
                "grid": list(grid)}, out.format(rank=rank))
    dist.destroy_process_group()


def test_the_global_batch_is_shared_by_the_processes(tmp_path):
    """train.global_batch_size = 2 under two processes: one image each, so the synchronised class
    statistics count the labelled pixels of two images per step, as one process at batch 2 does."""
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(_global_batch_worker, args=(2, _free_port(), str(tmp_path / "run"), out), nprocs=2)
    results = [torch.load(out.format(rank=r)) for r in range(2)]
    assert [r["batch"] for r in results] == [1, 1]
    h, w = results[0]["grid"]
    assert results[0]["count"] == results[1]["count"]  # synchronised
    assert h * w < results[0]["count"] <= 2 * h * w  # two images' pixels, not four
