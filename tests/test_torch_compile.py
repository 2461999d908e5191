"""The ops inside a ``torch.compile``'d function: a graph break each (``torch.compiler.disable``),
the same values and gradients as eagerly.

Before the ops were marked so, Dynamo traced into the Triton launch descriptions and failed with
``InternalTorchDynamoError: AttributeError: 'Launch' object has no attribute 'kernel'``
(tests/test_cuda.py on an H200, torch 2.11; here, on the CPU, with the Triton backend in the
interpreter). ``backend="eager"``: Dynamo's tracing, where that failure was, without Inductor's
code generation.
"""
import pytest
import torch

import kernels
from tests.parity import make_labels, make_stats


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_compiled_step_with_every_op_inside_matches_eager(backend):
    gen = torch.Generator().manual_seed(5)
    n, d, c = 301, 16, 7
    x = torch.rand(n, 3, generator=gen)
    labels = make_labels(n, c, gen, ignore_frac=0.2, absent=(2,))
    mean, cov = make_stats(c, d, gen)
    bank = torch.nn.functional.normalize(torch.randn(c, 5, d, generator=gen), dim=2)
    lengths = torch.full((c,), 5)

    def step(lin, x):
        feats = torch.nn.functional.normalize(lin(x), dim=1)
        count, total, _ = kernels.class_moments(feats.detach(), labels, c)
        running = kernels.update_class_distribution(torch.ones(c), mean, cov, feats.detach(), labels)
        loss = (kernels.dist_contrastive_loss(feats, labels, mean, cov, temperature=0.5)
                + kernels.bank_contrastive_loss(feats, labels, kernels.MemoryBank(bank, lengths), temperature=0.5))
        return loss + lin.weight.square().mean(), total.sum() + count.sum(), running[1].sum()

    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        lin = torch.nn.Linear(3, d)
        fn = torch.compile(step, backend="eager") if compiled else step
        with kernels.backend(backend):
            loss, moments, running = fn(lin, x)
            loss.backward()
        results.append((loss.detach(), moments, running, lin.weight.grad.clone()))
    for eager, compiled in zip(*results):
        assert torch.isfinite(compiled).all()
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
